//! Links every mixer crate under `mixers/` that the facade depends on, so
//! that adding a built-in mixer is its crate plus its dependency line: this
//! writes `builtin_mixers()` (whose `link()` calls keep each crate's
//! registrations) and the `mixers` re-export module into `OUT_DIR`.

use std::fmt::Write as _;
use std::path::Path;

/// `name = "..."` of a crate manifest's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("name") {
                let v = v.trim_start().strip_prefix('=')?.trim().trim_matches('"');
                return Some(v.to_string());
            }
        }
    }
    None
}

/// The keys of the `[dependencies]` table of a manifest.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            let key = line.split(['=', '.', ' ']).next().unwrap_or("");
            out.push(key.to_string());
        }
    }
    out
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&root);
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=mixers");
    let facade = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let deps = dependencies(&facade);

    let mut crates: Vec<(String, String)> = Vec::new(); // (crate ident, dir name)
    let dirs = std::fs::read_dir(root.join("mixers")).expect("read mixers/");
    for dir in dirs.flatten() {
        let manifest = dir.path().join("Cargo.toml");
        println!("cargo:rerun-if-changed={}", manifest.display());
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let Some(name) = package_name(&text) else {
            continue;
        };
        if deps.contains(&name) {
            let dir_name = dir.file_name().to_string_lossy().replace('-', "_");
            crates.push((name.replace('-', "_"), dir_name));
        }
    }
    crates.sort();

    let mut code = String::from("/// The built-in mixer crates.\npub mod mixers {\n");
    for (krate, dir) in &crates {
        writeln!(code, "    pub use {krate} as {dir};").ok();
    }
    code.push_str(
        "}\n\n/// Names of the built-in mixers; calling it also guarantees that the linker\n\
         /// keeps every built-in crate (and so its `inventory` registrations).\n\
         pub fn builtin_mixers() -> Vec<&'static str> {\n    [\n",
    );
    for (krate, _) in &crates {
        writeln!(code, "        {krate}::link(),").ok();
    }
    code.push_str("    ]\n    .concat()\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin.rs");
    std::fs::write(out, code).expect("write builtin.rs");
}
