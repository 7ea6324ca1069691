// Included (not depended on) by the build.rs of every crate with CUDA kernels:
// compiles `kernels/*.cu` to PTX with nvcc when the `cuda` feature is on.
//
//     include!("../../kernels/build_support.rs");
//     fn main() { compile_kernels("kernels"); }
//
// `dir` is relative to the crate; every `*.cu` in it becomes `$OUT_DIR/<stem>.ptx`.

#[allow(dead_code)]
fn compile_kernels(dir: &str) {
    compile_each(dir, "ptx", &["--ptx"], false);
}

// Like `compile_kernels`, but to `$OUT_DIR/<stem>.fatbin` holding SASS for
// the target GPU and PTX for later ones: no JIT compilation when the module
// loads, which matters for files with many template instantiations.
#[allow(dead_code)]
fn compile_kernels_fatbin(dir: &str) {
    compile_each(dir, "fatbin", &["--fatbin"], true);
}

#[allow(dead_code)]
fn compile_each(dir: &str, ext: &str, mode: &[&str], sass: bool) {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={dir}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("../../kernels/cuda");
    let include = if include.exists() { include } else { manifest.join("cuda") };
    println!("cargo:rerun-if-changed={}", include.display());
    let nvcc = std::env::var("CUDA_ROOT")
        .map(|r| std::path::PathBuf::from(r).join("bin/nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("nvcc"));
    let arch = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let target = if sass {
        format!("-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]")
    } else {
        format!("-arch=compute_{arch}")
    };
    let dir = manifest.join(dir);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cu") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("kernel file name is UTF-8");
        let output = out.join(format!("{stem}.{ext}"));
        let status = std::process::Command::new(&nvcc)
            .args(mode)
            .args(["-O3", "--use_fast_math", "-std=c++17"])
            .arg(&target)
            .arg("-I")
            .arg(&include)
            .arg("-o")
            .arg(&output)
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {} (is the CUDA toolchain set up?): {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", path.display());
    }
}
