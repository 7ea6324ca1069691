//! lrnnx's golden S5 cases (LTI and LTV / event) through the framework's conformance runner.

use lrnnx_testing::{assert_case_passes, golden_case};

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
        // Stricter than the runner's 1e-4: the f64 references agree with lrnnx to < 1e-6.
        let r = assert_case_passes(&golden_case(name), 2e-6);
        worst = worst.max(r.max_rel);
    }
    println!("worst relative error {worst:.3e}");
}
