//! LRU on the CPU at B=8, L=2048, d_model=256, d_state=256: forward, step, backward.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_lru::{Lru, LruConfig};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;
const N: usize = 256;

fn layer() -> Lru {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg = LruConfig {
        d_state: N,
        r_min: 0.0,
        r_max: 1.0,
        max_phase: std::f64::consts::TAU,
    };
    Lru::new(H, cfg, &store.builder()).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let lru = layer();
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let mut g = c.benchmark_group("lru");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward B8 L2048 H256 N256", |bench| {
        bench.iter(|| lru.forward(&x, &ForwardOpts::default()).expect("forward"))
    });
    g.bench_function("forward+backward B8 L2048 H256 N256", |bench| {
        bench.iter(|| {
            let y = lru.forward(&x, &ForwardOpts::default()).expect("forward");
            y.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    g.throughput(Throughput::Elements(B as u64));
    let mut state = lru
        .init_state(B, L, DType::F32, &Device::Cpu)
        .expect("state");
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    g.bench_function("step B8 H256 N256", |bench| {
        bench.iter(|| {
            lru.step(&xt, &mut state, &StepOpts::default())
                .expect("step")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
