//! The lrnnx reference cases of S7 (exported from lrnnx) and a stress case
//! with larger activations (made by the float64 numpy reference of the spec),
//! through the framework's conformance runner.

use std::path::{Path, PathBuf};

use lrnnx_testing::{assert_case_passes, checks_step, golden_case};

fn check(path: &Path, with_step: bool) {
    lrnnx_s7::link();
    // Far inside the runner's 1e-4: f32 arithmetic against f32 / f64 references.
    let r = assert_case_passes(path, 2e-6);
    assert_eq!(checks_step(&r), with_step, "{:?}", r.outputs);
}

#[test]
fn golden_s7() {
    check(&golden_case("s7"), true);
}

/// `lengths` is ignored by lrnnx's S7: the reference equals the no-lengths one.
#[test]
fn golden_s7_lengths() {
    check(&golden_case("s7_lengths"), false);
}

#[test]
fn stress_s7() {
    check(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stress_s7.safetensors"),
        true,
    );
}
