//! Captures what a run-time plugin must share with the host into the ABI
//! fingerprint (`LRNNX_ABI_FINGERPRINT`, read by `src/plugin.rs`): the
//! framework version, the exact `rustc -V`, the candle version in use, the
//! target, the panic strategy, whether debug assertions are on and the
//! framework's features.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());

    let candle = candle_version();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        .collect();
    features.sort();
    let debug_assertions = std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some();

    let fingerprint = format!(
        "lrnnx-plugin-abi v2; lrnnx-framework {}; {}; candle-core {}; target {}; panic {}; \
         debug-assertions {}; features [{}]",
        env("CARGO_PKG_VERSION"),
        rustc_version,
        candle,
        env("TARGET"),
        env("CARGO_CFG_PANIC"),
        if debug_assertions { "on" } else { "off" },
        features.join(",")
    );
    println!("cargo:rustc-env=LRNNX_ABI_FINGERPRINT={fingerprint}");
    println!("cargo:rustc-env=LRNNX_RUSTC_VERSION={rustc_version}");
}

/// The candle-core version(s) of the enclosing workspace's `Cargo.lock`
/// (looked for above this package and above the build directory), or the
/// version requirement when no lock file is found.
fn candle_version() -> String {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("CARGO_MANIFEST_DIR") {
        starts.push(d.into());
    }
    if let Ok(d) = std::env::var("OUT_DIR") {
        starts.push(d.into());
    }
    for start in &starts {
        for dir in start.ancestors() {
            let lock = dir.join("Cargo.lock");
            if let Some(v) = versions_in_lock(&lock, "candle-core") {
                println!("cargo:rerun-if-changed={}", lock.display());
                return v;
            }
        }
    }
    "0.11 (no Cargo.lock found)".into()
}

fn versions_in_lock(lock: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
            {
                found.push(v.trim_matches('"').to_string());
            }
        }
    }
    (!found.is_empty()).then(|| found.join("+"))
}
