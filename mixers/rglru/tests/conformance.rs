//! The lrnnx reference case of RGLRU (exported from lrnnx) and a stress case
//! with larger activations (made by the float64 numpy reference of the spec),
//! through the framework's conformance runner.

use std::path::{Path, PathBuf};

use lrnnx_testing::{assert_case_passes, checks_step, golden_case};

fn check(path: &Path) {
    lrnnx_rglru::link();
    // Far inside the runner's 1e-4: f32 arithmetic against f32 / f64 references.
    let r = assert_case_passes(path, 2e-6);
    assert!(checks_step(&r), "the case checks the step too");
}

#[test]
fn golden_rglru() {
    check(&golden_case("rglru"));
}

#[test]
fn stress_rglru() {
    check(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stress_rglru.safetensors"));
}
