//! Centaurus (neck) on the CPU at B=8, L=2048, d_model=256, d_state=64,
//! sub_state_dim=4: forward by scan and by convolution, step, forward+backward.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_centaurus::{Centaurus, CentaurusConfig, ForwardMode, Mode};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;
const N: usize = 64;
const M: usize = 4;

fn layer() -> Centaurus {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg = CentaurusConfig {
        d_state: N,
        sub_state_dim: M,
        discretization: "zoh".into(),
        mode: Mode::Neck,
        forward_mode: ForwardMode::Auto,
    };
    Centaurus::new(H, cfg, &store.builder()).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let layer = layer();
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let mut g = c.benchmark_group("centaurus");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    for (name, how) in [("scan", ForwardMode::Scan), ("conv", ForwardMode::Conv)] {
        g.bench_function(format!("forward {name} B8 L2048 H256 N64 M4"), |bench| {
            bench.iter(|| layer.forward_by(&x, how).expect("forward"))
        });
    }
    for (name, how) in [("scan", ForwardMode::Scan), ("conv", ForwardMode::Conv)] {
        g.bench_function(
            format!("forward+backward {name} B8 L2048 H256 N64 M4"),
            |bench| {
                bench.iter(|| {
                    let y = layer.forward_by(&x, how).expect("forward");
                    y.sqr()
                        .and_then(|t| t.sum_all())
                        .and_then(|t| t.backward())
                        .expect("backward")
                })
            },
        );
    }
    g.throughput(Throughput::Elements(B as u64));
    let mut state = layer
        .init_state(B, L, DType::F32, &Device::Cpu)
        .expect("state");
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    g.bench_function("step B8 H256 N64 M4", |bench| {
        bench.iter(|| {
            layer
                .step(&xt, &mut state, &StepOpts::default())
                .expect("step")
        })
    });
    g.finish();
    // `forward` through the trait (auto picks the convolution here).
    let _ = layer.forward(&x, &ForwardOpts::default()).expect("forward");
}

criterion_group!(benches, bench);
criterion_main!(benches);
