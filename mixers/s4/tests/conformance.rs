//! The lrnnx reference cases of S4 and S4D (forward and step), through the framework's runner.

use lrnnx_framework::conformance::{run_case, Outcome};

/// Runs `tests/data/lrnnx/{name}.safetensors`, prints its errors and asserts that it passes.
fn golden_case_passes(name: &str) {
    // Keep this crate's registration in the test binary.
    assert_eq!(lrnnx_s4::link(), ["S4", "S4D"]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../tests/data/lrnnx/{name}.safetensors"));
    let r = run_case(&path);
    for (what, abs, rel) in &r.outputs {
        println!("{name} {what}: abs {abs:.3e} rel {rel:.3e}");
    }
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
}

#[test]
fn lrnnx_golden_case_passes() {
    golden_case_passes("s4");
}

#[test]
fn lrnnx_s4d_golden_case_passes() {
    golden_case_passes("s4d");
}
