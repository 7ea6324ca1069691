//! The portable path (candle's ops, what CUDA runs) of S4 and S4D against
//! the fused CPU path in f64: forward, every gradient, prefill + steps; and
//! bf16 activations on f32 master weights.

use candle_core::{DType, Device};
use lrnnx_framework::{Lti, Mixer, ParamBuilder, ParamStore};
use lrnnx_s4::s4d::{S4d, S4dConfig, S4dDisc};
use lrnnx_s4::{S4Config, S4};
use lrnnx_testing::parity::{sweep, Candidate, Tolerance, BF16_SHAPES, SHAPES};
use lrnnx_testing::{max_rel, vec1};

type Build = Box<dyn Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>>>;

/// S4 at `(d_model, d_state, channels, forward_mode, gate)`.
fn s4(h: usize, d_state: usize, channels: usize, mode: &str, gate: Option<usize>) -> Build {
    let cfg = S4Config {
        d_state,
        channels,
        gate,
        forward_mode: mode.into(),
        ..S4Config::default()
    };
    Box::new(move |pb| Ok(Box::new(S4::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>))
}

/// S4D at `(d_model, d_state, channels, forward_mode, disc)`.
fn s4d(h: usize, d_state: usize, channels: usize, mode: &str, disc: &str) -> Build {
    let cfg = S4dConfig {
        d_state,
        channels,
        forward_mode: mode.into(),
        disc: S4dDisc(disc.into()),
        ..S4dConfig::default()
    };
    Box::new(move |pb| Ok(Box::new(S4d::new(h, cfg.clone(), pb)?) as Box<dyn Mixer>))
}

/// `(what, d_model, build)`: odd widths, one mode, several channels, gates,
/// both forward modes, both S4D discretizations, a larger state.
fn layers() -> Vec<(String, usize, Build)> {
    vec![
        ("S4 N=2 conv".into(), 3, s4(3, 2, 1, "conv", None)),
        ("S4 N=8 auto".into(), 5, s4(5, 8, 1, "auto", None)),
        ("S4 N=6 C=2 scan".into(), 3, s4(3, 6, 2, "scan", None)),
        ("S4 N=16 gate".into(), 4, s4(4, 16, 1, "conv", Some(2))),
        ("S4D zoh N=2".into(), 3, s4d(3, 2, 1, "conv", "zoh")),
        ("S4D zoh N=10 auto".into(), 5, s4d(5, 10, 1, "auto", "zoh")),
        (
            "S4D bilinear C=2".into(),
            3,
            s4d(3, 6, 2, "conv", "bilinear"),
        ),
        (
            "S4D bilinear scan".into(),
            4,
            s4d(4, 16, 1, "scan", "bilinear"),
        ),
    ]
}

#[test]
fn portable_path_matches_the_fused_path() {
    for (name, h, build) in layers() {
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
/// relative rounding error of at most 2^-8 per rounding. The kernel, the
/// states and the recurrences are computed in f32 (nothing of that order);
/// on the way to the output a value is rounded where the compute dtype is
/// bf16: the input, the kernel cast for the convolution (or the scan's
/// readout), the convolution's output, `D x` and the sum, the first GELU,
/// the output linear's product, the final GELU: about six roundings in
/// series (a gate adds its linear, its product and one GELU). GELU and the
/// linears are contractions of order one at these scales, so forward and
/// decoding are held to 8 * 2^-8 = 2^-5 of the output's scale; backward
/// rounds the same chain again in reverse (plus the cotangent), so
/// gradients get twice that, 2^-4.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 32.0,
    grad: 1.0 / 16.0,
};

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    let cand = Candidate::on(&Device::Cpu, DType::F32, DType::BF16);
    for (name, h, build) in layers() {
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

#[test]
fn portable_kernels_match_the_fused_kernels() {
    let store = ParamStore::init(5, DType::F64, &Device::Cpu);
    let s4 = S4::new(
        5,
        S4Config {
            d_state: 12,
            channels: 2,
            ..S4Config::default()
        },
        &store.builder(),
    )
    .expect("S4 builds");
    let s4d = S4d::new(
        5,
        S4dConfig {
            d_state: 12,
            disc: S4dDisc("bilinear".into()),
            ..S4dConfig::default()
        },
        &store.builder().pp("d"),
    )
    .expect("S4D builds");
    let layers: [(&str, &dyn Lti); 2] = [("S4", &s4), ("S4D", &s4d)];
    for (name, m) in layers {
        for len in [1, 2, 31, 64, 100] {
            let want = m.kernel(len).expect("fused kernel");
            let got =
                lrnnx_kernels::portable::with_portable(|| m.kernel(len)).expect("portable kernel");
            assert_eq!(got.dims(), want.dims(), "{name} len {len}");
            let err = max_rel(&got, &want);
            assert!(err < 1e-12, "{name} len {len}: {err:e}");
            assert!(vec1(&got).iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn chunked_prefill_on_the_portable_path_continues_the_state() {
    // Prefill in two chunks (the second starts from a non-zero state), then
    // steps, all on the portable path in f64: they reproduce one forward.
    use lrnnx_framework::{ForwardOpts, StepOpts};
    use lrnnx_testing::randn;
    let (b, l, h) = (2, 15, 3);
    let builds: [(&str, Build); 2] = [
        ("S4", s4(h, 8, 2, "conv", None)),
        ("S4D", s4d(h, 8, 2, "conv", "zoh")),
    ];
    for (name, build) in builds {
        let store = ParamStore::init(9, DType::F64, &Device::Cpu);
        let m = build(&store.builder()).expect("builds");
        let x = randn(&[b, l, h], 10, DType::F64);
        let opts = ForwardOpts::default();
        let want = m.forward(&x, &opts).expect("forward");
        let got = lrnnx_kernels::portable::with_portable(|| {
            let mut st = m.init_state(b, l, DType::F64, &Device::Cpu).expect("state");
            let mut parts = vec![
                m.prefill(&x.narrow(1, 0, 5).expect("head"), &mut st, &opts)
                    .expect("prefill 1"),
                m.prefill(&x.narrow(1, 5, 7).expect("middle"), &mut st, &opts)
                    .expect("prefill 2"),
            ];
            for t in 12..l {
                let yt = m
                    .step(
                        &x.narrow(1, t, 1).expect("position"),
                        &mut st,
                        &StepOpts::default(),
                    )
                    .expect("step");
                parts.push(yt.reshape((b, 1, ())).expect("rank"));
            }
            candle_core::Tensor::cat(&parts, 1).expect("cat")
        });
        let err = max_rel(&got, &want);
        assert!(err < 1e-12, "{name}: chunked prefill vs forward: {err:e}");
    }
}
