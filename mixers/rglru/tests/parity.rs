//! The portable path (candle's ops, what CUDA runs) against the fused CPU
//! path in f64: forward, every gradient, prefill + steps; and bf16
//! activations on f32 master weights.

use candle_core::{DType, Device};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore, StepOpts};
use lrnnx_rglru::{RgLru, RgLruConfig};
use lrnnx_testing::parity::{sweep, Candidate, Tolerance, BF16_SHAPES, SHAPES};
use lrnnx_testing::{max_rel, randn};

/// `(d_model, config)`: the default block, a one-tap convolution with biases
/// everywhere and an odd inner width, a wide block without a conv bias.
fn configs() -> Vec<(usize, RgLruConfig)> {
    vec![
        (4, RgLruConfig::default()),
        (
            5,
            RgLruConfig {
                d_conv: 1,
                expand: 1.5,
                bias: true,
                ..RgLruConfig::default()
            },
        ),
        (
            3,
            RgLruConfig {
                d_conv: 3,
                expand: 2.0,
                conv_bias: false,
                c: 4.0,
                a_init_range: [0.5, 0.99],
                ..RgLruConfig::default()
            },
        ),
    ]
}

fn builder(
    h: usize,
    cfg: RgLruConfig,
) -> impl Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>> {
    move |pb| Ok(Box::new(RgLru::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>)
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
            &format!("RG-LRU {cfg:?}"),
        );
    }
}

/// bf16 activations on f32 master weights. bf16 keeps 8 significant bits, a
/// relative rounding error of at most 2^-8 per rounding. On the longest way
/// to the output a value is rounded six times where the compute dtype is
/// bf16: the input, `in_proj`'s output, the convolution's (its taps are
/// summed in f32 and rounded once), the gate projections' (the gates,
/// `a_bar` and the scan then run in f32 and add nothing of that order), the
/// gated product cast back for `out_proj`, and `out_proj`'s output. So
/// forward and decoding are held to 6 * 2^-8 of the output's scale;
/// backward rounds the chain again in reverse (plus the cotangent), so
/// gradients get twice that. (Measured: about 2^-9 and 2^-7.)
const BF16: Tolerance = Tolerance {
    output: 6.0 / 256.0,
    grad: 12.0 / 256.0,
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
            &format!("bf16 RG-LRU {cfg:?}"),
        );
    }
}

#[test]
fn bf16_on_the_cpu_keeps_f32_states_and_bf16_outputs() {
    // Outside `with_portable` bf16 still takes the portable ops (the fused
    // ones are f32/f64 only): the states are f32, the outputs bf16, and both
    // agree with the f32 forward.
    let (h, cfg) = configs().swap_remove(1);
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    let m = RgLru::new(h, cfg, &store.builder()).expect("builds");
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
    println!("bf16 vs f32 forward: {err:e}");
    assert!(err <= BF16.output, "bf16 vs f32 forward: {err:e}");
    let mut st = m
        .init_state(b, l, DType::BF16, &Device::Cpu)
        .expect("state");
    for name in ["conv_state", "lrnn_state"] {
        assert_eq!(st.get(name).expect("state").dtype(), DType::F32, "{name}");
    }
    let head = x.narrow(1, 0, l - 1).expect("head");
    let yp = m
        .prefill(&head, &mut st, &ForwardOpts::default())
        .expect("prefill");
    assert_eq!(yp.dtype(), DType::BF16);
    let xt = x.narrow(1, l - 1, 1).expect("position");
    let yt = m.step(&xt, &mut st, &StepOpts::default()).expect("step");
    assert_eq!(yt.dtype(), DType::BF16);
    for name in ["conv_state", "lrnn_state"] {
        assert_eq!(st.get(name).expect("state").dtype(), DType::F32, "{name}");
    }
    let err = max_rel(&yt, &want.narrow(1, l - 1, 1).expect("last"));
    assert!(err <= BF16.output, "bf16 step vs f32 forward: {err:e}");
}

#[test]
fn a_wrong_state_is_named() {
    let (h, cfg) = configs().swap_remove(0);
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    let m = RgLru::new(h, cfg, &store.builder()).expect("builds");
    let st = m.init_state(3, 4, DType::F32, &Device::Cpu).expect("state");
    let x = randn(&[2, 1, h], 4, DType::F32);
    for portable in [false, true] {
        let run = || m.step(&x, &mut st.clone(), &StepOpts::default());
        let err = if portable {
            lrnnx_kernels::portable::with_portable(run)
        } else {
            run()
        };
        let msg = format!("{}", err.expect_err("batch 2 on a state of batch 3"));
        assert!(msg.contains("conv_state (2, 4, 4)"), "{msg}");
    }
}
