//! Conformance cases through the framework's runner.

use std::path::{Path, PathBuf};

use lrnnx_framework::conformance::{run_case, CaseResult, Outcome};

/// The path of lrnnx's reference case `name` (`tests/data/lrnnx/{name}.safetensors`
/// of the workspace).
pub fn golden_case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/lrnnx")
        .join(format!("{name}.safetensors"))
}

/// Runs the case at `path` (its mixer must be linked), prints its errors,
/// and asserts that it passes with every output's relative error below
/// `max_rel`. Returns the runner's result for further checks.
pub fn assert_case_passes(path: &Path, max_rel: f64) -> CaseResult {
    let r = run_case(path);
    println!("{}", r.line());
    for (out, abs, rel) in &r.outputs {
        println!("    {out:<10} abs {abs:.3e}  rel {rel:.3e}");
    }
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    for (out, _, rel) in &r.outputs {
        assert!(*rel < max_rel, "{} {out}: {rel:e}", r.name);
    }
    assert!(r.max_rel < max_rel, "{}", r.line());
    r
}

/// Whether the case compared the output of decoding step by step.
pub fn checks_step(r: &CaseResult) -> bool {
    r.outputs.iter().any(|(out, _, _)| out == "step_y")
}
