//! The portable path (candle's ops, what CUDA runs) against the fused CPU
//! path in f64, in every channel mode and forward mode: forward, every
//! gradient, prefill + steps; and bf16 activations on f32 master weights.

use candle_core::{DType, Device};
use lrnnx_centaurus::{Centaurus, CentaurusConfig, ForwardMode, Mode, CONV_MIN_LEN};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore};
use lrnnx_kernels::portable::with_portable;
use lrnnx_testing::parity::{assert_parity, Candidate, Tolerance};
use lrnnx_testing::{max_rel, randn};

/// `(mode, d_model, d_state, sub_state_dim)`: odd sizes that each mode allows
/// (dws: `d_state == d_model`; full: `d_state >= d_model²`, one inert state).
const SHAPES: &[(Mode, usize, usize, usize)] = &[
    (Mode::Neck, 5, 3, 2),
    (Mode::Pw, 3, 4, 3),
    (Mode::Dws, 4, 4, 1),
    (Mode::Full, 2, 5, 3),
];

fn config(mode: Mode, d_state: usize, m: usize, forward_mode: ForwardMode) -> CentaurusConfig {
    CentaurusConfig {
        d_state,
        sub_state_dim: m,
        mode,
        forward_mode,
        ..CentaurusConfig::default()
    }
}

fn builder(
    h: usize,
    cfg: CentaurusConfig,
) -> impl Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>> {
    move |pb| Ok(Box::new(Centaurus::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>)
}

const FORWARD_MODES: [ForwardMode; 3] = [ForwardMode::Scan, ForwardMode::Conv, ForwardMode::Auto];

#[test]
fn portable_path_matches_the_fused_path() {
    for &(mode, h, n, m) in SHAPES {
        for how in FORWARD_MODES {
            // L = 1, odd lengths, and one past CONV_MIN_LEN so that `auto`
            // convolves in the reference and scans in the candidate.
            for (b, l) in [(1, 1), (2, 7), (3, 13), (2, CONV_MIN_LEN + 3)] {
                let what =
                    format!("Centaurus {mode:?} {how:?} (b {b}, l {l}, h {h}, n {n}, m {m})");
                let r = assert_parity(
                    &builder(h, config(mode, n, m, how)),
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
}

/// bf16 activations on f32 master weights. bf16 keeps 8 significant bits, a
/// relative rounding error of at most 2^-8. On the way to the output a value
/// is rounded about four times where the compute dtype is bf16 (the input,
/// the cast `δB` and its product, the f32 mixed states cast for the readout,
/// the readout with the cast `C`); the scan or convolution and the `E`
/// mixing run in f32 and add nothing of that order. So forward and decoding
/// are held to 4 * 2^-8 = 2^-6 of the output's scale; backward rounds the
/// chain again in reverse (plus the cotangent), so gradients get twice that, 2^-5.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 64.0,
    grad: 1.0 / 32.0,
};

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    let cand = Candidate::portable_bf16();
    for &(mode, h, n, m) in SHAPES {
        for how in [ForwardMode::Scan, ForwardMode::Conv] {
            for (b, l) in [(1, 1), (2, 9), (1, 21)] {
                let what =
                    format!("bf16 Centaurus {mode:?} {how:?} (b {b}, l {l}, h {h}, n {n}, m {m})");
                let r = assert_parity(
                    &builder(h, config(mode, n, m, how)),
                    (b, l, h),
                    &cand,
                    BF16,
                    3,
                    &what,
                );
                println!("{what}: {r:?}");
            }
        }
    }
}

#[test]
fn auto_scans_under_with_portable_and_convolves_on_the_fused_cpu() {
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    let c = Centaurus::new(
        5,
        config(Mode::Neck, 3, 2, ForwardMode::Auto),
        &store.builder(),
    )
    .expect("builds");
    let (b, l) = (2, CONV_MIN_LEN);
    assert_eq!(
        c.resolve_forward_mode(b, l, &Device::Cpu),
        ForwardMode::Conv
    );
    assert_eq!(
        with_portable(|| c.resolve_forward_mode(b, l, &Device::Cpu)),
        ForwardMode::Scan
    );
}

#[test]
fn bf16_on_the_fused_cpu_conv_matches_f32() {
    // Outside `with_portable` a bf16 input widened to f32 takes the fused FFT
    // convolution; the output is bf16 and within the bf16 budget of f32's.
    let store = ParamStore::init(4, DType::F32, &Device::Cpu);
    let c = Centaurus::new(
        5,
        config(Mode::Neck, 3, 2, ForwardMode::Conv),
        &store.builder(),
    )
    .expect("builds");
    let x = randn(&[2, 19, 5], 5, DType::BF16);
    let y = c
        .forward(&x, &ForwardOpts::default())
        .expect("bf16 forward");
    assert_eq!(y.dtype(), DType::BF16);
    let want = c
        .forward(
            &x.to_dtype(DType::F32).expect("widen"),
            &ForwardOpts::default(),
        )
        .expect("f32 forward");
    let err = max_rel(&y, &want);
    assert!(err <= BF16.output, "bf16 vs f32: {err:e}");
}
