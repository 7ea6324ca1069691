//! S5 on the CPU at B=8, L=2048, d_model=256, d_state=64: LTI forward by scan
//! and by convolution, step, forward+backward; LTV forward with event timesteps.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_s5::{ForwardMode, LtiDiscretization, S5Lti, S5LtiConfig, S5Ltv, S5LtvConfig};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};
const N: usize = 64;

fn lti(mode: ForwardMode) -> S5Lti {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg = S5LtiConfig {
        d_state: N,
        discretization: LtiDiscretization::Zoh,
        conj_sym: false,
        forward_mode: mode,
    };
    S5Lti::new(H, cfg, &store.builder()).expect("valid config")
}

fn ltv() -> S5Ltv {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg: S5LtvConfig =
        serde_json::from_value(serde_json::json!({"d_state": N})).expect("valid config");
    S5Ltv::new(H, cfg, &store.builder(), false).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let scan = lti(ForwardMode::Scan);
    let conv = lti(ForwardMode::Conv);
    let events = ltv();
    let x = bench::input(&[B, L, H]);
    let tau = Tensor::rand(0f32, 2.0, (B, L), &Device::Cpu).expect("timesteps");
    let mut g = bench::group(c, "s5");
    let plain = ForwardOpts::default();
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward scan B8 L2048 H256 N64", |bench| {
        bench.iter(|| scan.forward(&x, &plain).expect("forward"))
    });
    g.bench_function("forward conv B8 L2048 H256 N64", |bench| {
        bench.iter(|| conv.forward(&x, &plain).expect("forward"))
    });
    g.bench_function("forward+backward scan B8 L2048 H256 N64", |bench| {
        bench.iter(|| bench::backward_of_square_sum(&scan.forward(&x, &plain).expect("forward")))
    });
    let opts = ForwardOpts {
        integration_timesteps: Some(tau.clone()),
        lengths: None,
    };
    let names = ("LTV events ", " B8 L2048 H256 N64");
    bench::bench_forward_backward(&mut g, &events, &x, &opts, names);
    bench::bench_step(&mut g, "step B8 H256 N64", &scan, &x, &StepOpts::default());
    let so = StepOpts {
        integration_timesteps: Some(tau.narrow(1, 0, 1).expect("tau")),
    };
    bench::bench_step(&mut g, "LTV events step B8 H256 N64", &events, &x, &so);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
