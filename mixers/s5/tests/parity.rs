//! The portable path (candle's ops, what CUDA runs) against the fused CPU
//! path in f64, for both S5 classes: forward, every gradient, prefill +
//! steps; and bf16 activations on f32 master weights. Event timesteps are in
//! `parity_events.rs`.

use lrnnx_framework::{Mixer, ParamBuilder};
use lrnnx_s5::{
    ForwardMode, LtiDiscretization, LtvDiscretization, S5Lti, S5LtiConfig, S5Ltv, S5LtvConfig,
};
use lrnnx_testing::parity::{sweep, Candidate, Tolerance, BF16_SHAPES, SHAPES};

type Builder = Box<dyn Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>>>;

fn lti(h: usize, d_state: usize, discretization: LtiDiscretization, mode: ForwardMode) -> Builder {
    let cfg = S5LtiConfig {
        d_state,
        discretization,
        conj_sym: false,
        forward_mode: mode,
    };
    Box::new(move |pb| Ok(Box::new(S5Lti::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>))
}

fn ltv(h: usize, d_state: usize, discretization: LtvDiscretization, conj_sym: bool) -> Builder {
    let cfg = S5LtvConfig {
        d_state,
        discretization,
        conj_sym,
        ..S5LtvConfig::default()
    };
    Box::new(move |pb| Ok(Box::new(S5Ltv::new(h, cfg.clone(), pb, false)?) as Box<dyn Mixer>))
}

/// `(name, d_model, builder)`: every discretization of each class, the LTI
/// class by scan and by convolution, the LTV class with and without
/// `conj_sym`; odd widths and state sizes.
fn variants() -> Vec<(String, usize, Builder)> {
    use LtiDiscretization as Lt;
    use LtvDiscretization as Lv;
    let mut v: Vec<(String, usize, Builder)> = Vec::new();
    for (i, d) in [Lt::Zoh, Lt::Bilinear, Lt::Dirac, Lt::NoDiscretization]
        .into_iter()
        .enumerate()
    {
        for mode in [ForwardMode::Scan, ForwardMode::Conv] {
            let (h, n) = [(3, 1), (5, 7), (4, 9), (6, 3)][i];
            v.push((
                format!("S5 LTI {d:?} {mode:?} (h {h}, n {n})"),
                h,
                lti(h, n, d, mode),
            ));
        }
    }
    for (i, d) in [Lv::Zoh, Lv::Bilinear, Lv::Dirac].into_iter().enumerate() {
        for conj_sym in [false, true] {
            let (h, p) = [(3, 2), (5, 7), (4, 5)][i];
            let name = format!("S5 LTV {d:?} conj_sym {conj_sym} (h {h}, p {p})");
            v.push((name, h, ltv(h, p, d, conj_sym)));
        }
    }
    v
}

#[test]
fn portable_path_matches_the_fused_path() {
    for (name, h, build) in variants() {
        sweep(
            &build,
            h,
            &SHAPES,
            &Candidate::portable(),
            Tolerance::F32,
            3,
            &name,
        );
    }
}

/// bf16 activations on f32 master weights. bf16 keeps 8 significant bits, a
/// relative rounding error of at most 2^-8. On the way to the output a value
/// is rounded about four times where the compute dtype is bf16 (the input,
/// the cast `B_bar` and its product, the f32 states cast for the readout, the
/// readout with the cast `C` and the skip `D`); the scan or convolution runs
/// in f32 and adds nothing of that order. So forward and decoding are held to
/// 4 * 2^-8 = 2^-6 of the output's scale; backward rounds the chain again in
/// reverse (plus the cotangent), so gradients get twice that, 2^-5.
pub const BF16: Tolerance = Tolerance {
    output: 1.0 / 64.0,
    grad: 1.0 / 32.0,
};

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    let cand = Candidate::portable_bf16();
    for (name, h, build) in variants() {
        sweep(
            &build,
            h,
            &BF16_SHAPES,
            &cand,
            BF16,
            3,
            &format!("bf16 {name}"),
        );
    }
}
