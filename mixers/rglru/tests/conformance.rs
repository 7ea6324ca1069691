//! The lrnnx reference case of RGLRU (exported from lrnnx) and a stress case
//! with larger activations (made by the float64 numpy reference of the spec),
//! through the framework's conformance runner.

use std::path::PathBuf;

use lrnnx_framework::conformance::{run_case, Outcome};

fn check(path: PathBuf) {
    lrnnx_rglru::link();
    let r = run_case(&path);
    println!("{}", r.line());
    for (out, abs, rel) in &r.outputs {
        println!("    {out:<10} abs {abs:.3e}  rel {rel:.3e}");
    }
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    // Far inside the runner's 1e-4: f32 arithmetic against f32 / f64 references.
    assert!(r.max_rel < 2e-6, "{}", r.line());
    assert!(
        r.outputs.iter().any(|(o, _, _)| o == "step_y"),
        "the case checks the step too"
    );
}

#[test]
fn golden_rglru() {
    check(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/lrnnx/rglru.safetensors"),
    );
}

#[test]
fn stress_rglru() {
    check(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stress_rglru.safetensors"));
}
