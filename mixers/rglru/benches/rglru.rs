//! RG-LRU on the CPU at B=8, L=2048, d_model=256 (d_inner 256): forward, step, forward+backward.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_rglru::{RgLru, RgLruConfig};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;

fn layer() -> RgLru {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    RgLru::new(H, RgLruConfig::default(), &store.builder()).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let m = layer();
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let mut g = c.benchmark_group("rglru");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward B8 L2048 H256", |bench| {
        bench.iter(|| m.forward(&x, &ForwardOpts::default()).expect("forward"))
    });
    g.bench_function("forward+backward B8 L2048 H256", |bench| {
        bench.iter(|| {
            let y = m.forward(&x, &ForwardOpts::default()).expect("forward");
            y.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    g.throughput(Throughput::Elements(B as u64));
    let mut state = m.init_state(B, L, DType::F32, &Device::Cpu).expect("state");
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    g.bench_function("step B8 H256", |bench| {
        bench.iter(|| m.step(&xt, &mut state, &StepOpts::default()).expect("step"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
