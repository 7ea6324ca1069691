//! The lrnnx reference cases of S7 (exported from lrnnx) and a stress case
//! with larger activations (made by the float64 numpy reference of the spec),
//! through the framework's conformance runner.

use std::path::PathBuf;

use lrnnx_framework::conformance::{run_case, Outcome};

fn check(path: PathBuf, with_step: bool) {
    lrnnx_s7::link();
    let r = run_case(&path);
    println!("{}", r.line());
    for (out, abs, rel) in &r.outputs {
        println!("    {out:<10} abs {abs:.3e}  rel {rel:.3e}");
    }
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    // Far inside the runner's 1e-4: f32 arithmetic against f32 / f64 references.
    assert!(r.max_rel < 2e-6, "{}", r.line());
    assert_eq!(
        r.outputs.iter().any(|(o, _, _)| o == "step_y"),
        with_step,
        "{:?}",
        r.outputs
    );
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/lrnnx")
        .join(name)
}

#[test]
fn golden_s7() {
    check(golden("s7.safetensors"), true);
}

/// `lengths` is ignored by lrnnx's S7: the reference equals the no-lengths one.
#[test]
fn golden_s7_lengths() {
    check(golden("s7_lengths.safetensors"), false);
}

#[test]
fn stress_s7() {
    check(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stress_s7.safetensors"),
        true,
    );
}
