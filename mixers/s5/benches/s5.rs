//! S5 on the CPU at B=8, L=2048, d_model=256, d_state=64: LTI forward by scan
//! and by convolution, step, forward+backward; LTV forward with event timesteps.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_s5::{ForwardMode, LtiDiscretization, S5Lti, S5LtiConfig, S5Ltv, S5LtvConfig};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;
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
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let tau = Tensor::rand(0f32, 2.0, (B, L), &Device::Cpu).expect("timesteps");
    let mut g = c.benchmark_group("s5");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward scan B8 L2048 H256 N64", |bench| {
        bench.iter(|| scan.forward(&x, &ForwardOpts::default()).expect("forward"))
    });
    g.bench_function("forward conv B8 L2048 H256 N64", |bench| {
        bench.iter(|| conv.forward(&x, &ForwardOpts::default()).expect("forward"))
    });
    g.bench_function("forward+backward scan B8 L2048 H256 N64", |bench| {
        bench.iter(|| {
            let y = scan.forward(&x, &ForwardOpts::default()).expect("forward");
            y.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    let opts = ForwardOpts {
        integration_timesteps: Some(tau.clone()),
        lengths: None,
    };
    g.bench_function("LTV events forward B8 L2048 H256 N64", |bench| {
        bench.iter(|| events.forward(&x, &opts).expect("forward"))
    });
    g.bench_function("LTV events forward+backward B8 L2048 H256 N64", |bench| {
        bench.iter(|| {
            let y = events.forward(&x, &opts).expect("forward");
            y.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    g.throughput(Throughput::Elements(B as u64));
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    let mut state = scan
        .init_state(B, L, DType::F32, &Device::Cpu)
        .expect("state");
    g.bench_function("step B8 H256 N64", |bench| {
        bench.iter(|| {
            scan.step(&xt, &mut state, &StepOpts::default())
                .expect("step")
        })
    });
    let mut state = events
        .init_state(B, L, DType::F32, &Device::Cpu)
        .expect("state");
    let so = StepOpts {
        integration_timesteps: Some(tau.narrow(1, 0, 1).expect("tau")),
    };
    g.bench_function("LTV events step B8 H256 N64", |bench| {
        bench.iter(|| events.step(&xt, &mut state, &so).expect("step"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
