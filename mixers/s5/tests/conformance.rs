//! lrnnx's golden S5 cases (LTI and LTV / event) through the framework's conformance runner.

use std::path::PathBuf;

use lrnnx_framework::conformance::{run_case, Outcome};

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/lrnnx")
        .join(format!("{name}.safetensors"))
}

#[test]
fn golden_cases_pass() {
    let _ = lrnnx_s5::link();
    let mut worst = 0.0f64;
    for name in [
        "s5_lti_zoh",
        "s5_lti_bilinear",
        "s5_lti_dirac",
        "s5_ltv_zoh",
        "s5_ltv_bilinear",
        "s5_ltv_dirac",
        "s5_ltv_event",
    ] {
        let r = run_case(&case(name));
        println!("{}", r.line());
        for (out, abs, rel) in &r.outputs {
            println!("    {out:<10} abs {abs:.3e} rel {rel:.3e}");
        }
        assert_eq!(r.outcome, Outcome::Pass, "{name}");
        // Stricter than the runner's 1e-4: the f64 references agree with lrnnx to < 1e-6.
        for (out, _, rel) in &r.outputs {
            assert!(*rel < 2e-6, "{name} {out}: {rel:e}");
        }
        worst = worst.max(r.max_rel);
    }
    println!("worst relative error {worst:.3e}");
}
