//! The lrnnx reference case of S4 (forward and step), through the framework's runner.

use lrnnx_framework::conformance::{run_case, Outcome};

#[test]
fn lrnnx_golden_case_passes() {
    // Keep this crate's registration in the test binary.
    assert_eq!(lrnnx_s4::link(), ["S4", "S4D"]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/lrnnx/s4.safetensors");
    let r = run_case(&path);
    for (what, abs, rel) in &r.outputs {
        println!("s4 {what}: abs {abs:.3e} rel {rel:.3e}");
    }
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
}
