//! Centaurus (neck) on the CPU at B=8, L=2048, d_model=256, d_state=64,
//! sub_state_dim=4: forward by scan and by convolution, step, forward+backward.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_centaurus::{Centaurus, CentaurusConfig, ForwardMode, Mode};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};
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
    let x = bench::input(&[B, L, H]);
    let mut g = bench::group(c, "centaurus");
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
                    bench::backward_of_square_sum(&layer.forward_by(&x, how).expect("forward"))
                })
            },
        );
    }
    bench::bench_step(
        &mut g,
        "step B8 H256 N64 M4",
        &layer,
        &x,
        &StepOpts::default(),
    );
    g.finish();
    // `forward` through the trait (auto picks the convolution here).
    let _ = layer.forward(&x, &ForwardOpts::default()).expect("forward");
}

criterion_group!(benches, bench);
criterion_main!(benches);
