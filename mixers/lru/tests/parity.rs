//! The portable path (candle's ops, what CUDA runs) against the fused CPU
//! path in f64: forward, every gradient, prefill + steps; and bf16
//! activations on f32 master weights.

use candle_core::{DType, Device};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore, StepOpts};
use lrnnx_lru::{Lru, LruConfig};
use lrnnx_testing::parity::{sweep, Candidate, Tolerance, BF16_SHAPES, SHAPES};
use lrnnx_testing::{max_rel, randn};

/// `(d_model, config)`: a single state, odd sizes, more states than channels,
/// eigenvalues near the unit circle.
fn configs() -> Vec<(usize, LruConfig)> {
    let cfg = |d_state, r_min, r_max, max_phase| LruConfig {
        d_state,
        r_min,
        r_max,
        max_phase,
    };
    vec![
        (3, cfg(1, 0.4, 0.95, 3.0)),
        (5, cfg(7, 0.0, 1.0, std::f64::consts::TAU)),
        (4, cfg(19, 0.9, 0.999, 0.314)),
    ]
}

fn builder(
    h: usize,
    cfg: LruConfig,
) -> impl Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>> {
    move |pb| Ok(Box::new(Lru::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>)
}

#[test]
fn portable_path_matches_the_fused_path() {
    for (h, cfg) in configs() {
        sweep(
            &builder(h, cfg.clone()),
            h,
            &SHAPES,
            &Candidate::portable(),
            Tolerance::F32,
            3,
            &format!("LRU {cfg:?}"),
        );
    }
}

/// bf16 activations on f32 master weights. bf16 keeps 8 significant bits, a
/// relative rounding error of at most 2^-8. On the way to the output a value
/// is rounded four times where the compute dtype is bf16 (the input, the
/// cast `gamma B` and its product, the f32 states cast for the readout, the
/// readout with the cast `C` and `D x`); the scan runs in f32 and adds
/// nothing of that order. So forward and decoding are held to 4 * 2^-8 =
/// 2^-6 of the output's scale; backward rounds the chain again in reverse
/// (plus the cotangent), so gradients get twice that, 2^-5.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 64.0,
    grad: 1.0 / 32.0,
};

fn bf16_candidate() -> Candidate {
    Candidate::portable_bf16()
}

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    for (h, cfg) in configs() {
        sweep(
            &builder(h, cfg.clone()),
            h,
            &BF16_SHAPES,
            &bf16_candidate(),
            BF16,
            3,
            &format!("bf16 LRU {cfg:?}"),
        );
    }
}

#[test]
fn bf16_runs_on_the_fused_cpu_scan_too_with_f32_states() {
    // Outside `with_portable` the CPU scan takes bf16 (it widens to f32): the
    // states are f32, the outputs bf16, and both agree with the f32 forward.
    let (h, cfg) = configs().swap_remove(1);
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    let m = Lru::new(h, cfg, &store.builder()).expect("builds");
    let (b, l) = (2, 11);
    let x = randn(&[b, l, h], 4, DType::BF16);
    let y = m.forward(&x, &ForwardOpts::default()).expect("forward");
    assert_eq!(y.dtype(), DType::BF16);
    let want = m
        .forward(
            &x.to_dtype(DType::F32).expect("widen"),
            &ForwardOpts::default(),
        )
        .expect("f32 forward");
    let err = max_rel(&y, &want);
    assert!(err <= BF16.output, "bf16 vs f32 forward: {err:e}");
    let mut st = m
        .init_state(b, l, DType::BF16, &Device::Cpu)
        .expect("state");
    assert_eq!(st.get("h").expect("h").dtype(), DType::F32);
    let xt = x.narrow(1, 0, 1).expect("position");
    let yt = m.step(&xt, &mut st, &StepOpts::default()).expect("step");
    assert_eq!(yt.dtype(), DType::BF16);
    assert_eq!(st.get("h").expect("h").dtype(), DType::F32);
}
