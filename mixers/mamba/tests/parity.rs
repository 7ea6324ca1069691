//! The candle-ops path (what CUDA runs, with the differentiable portable scan
//! when training) against the fused CPU path in f64: forward, every gradient,
//! prefill + steps, for every discretization; and bf16 activations.

use lrnnx_framework::{Discretization, Mixer, ParamBuilder};
use lrnnx_mamba::{Mamba, MambaConfig};
use lrnnx_testing::parity::{assert_parity, Candidate, Tolerance};

fn builder(
    h: usize,
    n: usize,
    rule: Discretization,
) -> impl Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>> {
    move |pb| {
        let mut cfg = MambaConfig::new(n);
        cfg.discretization = rule;
        Ok(Box::new(Mamba::new(h, cfg, pb)?) as Box<dyn Mixer>)
    }
}

const RULES: [Discretization; 4] = [
    Discretization::Mamba,
    Discretization::Zoh,
    Discretization::Bilinear,
    Discretization::Dirac,
];

#[test]
fn portable_path_matches_the_fused_path() {
    for rule in RULES {
        // Channels not a multiple of 16, one state, L = 1, odd lengths.
        for (h, n, b, l) in [(6, 5, 1, 1), (10, 1, 2, 7), (5, 16, 3, 13), (12, 3, 1, 33)] {
            let what = format!("Mamba {rule:?} (b {b}, l {l}, h {h}, n {n})");
            let r = assert_parity(
                &builder(h, n, rule),
                (b, l, h),
                &Candidate::portable(),
                Tolerance::F32,
                3,
                &what,
            );
            println!("{what}: {r:?}");
        }
    }
}

/// bf16 inputs on f32 weights: the candle-ops path widens them and computes
/// in f32, so the only bf16 roundings are the input's and the output's (plus
/// the cotangent's on the way back): 2 * 2^-8 forward, twice that backward.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 128.0,
    grad: 1.0 / 64.0,
};

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    for (h, n, b, l) in [(6, 4, 1, 1), (10, 16, 2, 9)] {
        let what = format!("bf16 Mamba (b {b}, l {l}, h {h}, n {n})");
        let cand = Candidate::portable_bf16();
        let r = assert_parity(
            &builder(h, n, Discretization::Mamba),
            (b, l, h),
            &cand,
            BF16,
            3,
            &what,
        );
        println!("{what}: {r:?}");
    }
}
