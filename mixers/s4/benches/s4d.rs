//! S4D on the CPU at B=8, L=2048, d_model=256, d_state=64: forward by scan and
//! by convolution, step, forward+backward (default mode).

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_s4::s4d::{ForwardMode, S4d, S4dConfig};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;
const N: usize = 64;

fn layer(mode: ForwardMode) -> S4d {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg: S4dConfig =
        serde_json::from_value(serde_json::json!({"d_state": N})).expect("valid config");
    let mut m = S4d::new(H, cfg, &store.builder()).expect("valid layer");
    m.set_forward_mode(mode);
    m
}

fn bench(c: &mut Criterion) {
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let mut g = c.benchmark_group("s4d");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    for (name, mode) in [("scan", ForwardMode::Scan), ("conv", ForwardMode::Conv)] {
        let m = layer(mode);
        g.bench_function(format!("forward {name} B8 L2048 H256 N64"), |bench| {
            bench.iter(|| m.forward(&x, &ForwardOpts::default()).expect("forward"))
        });
    }
    // The default mode (convolution at this shape); the scan's backward is
    // several times slower and left out to keep the run short.
    let m = layer(ForwardMode::Auto);
    g.bench_function("forward+backward auto(conv) B8 L2048 H256 N64", |bench| {
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
    g.bench_function("step B8 H256 N64", |bench| {
        bench.iter(|| m.step(&xt, &mut state, &StepOpts::default()).expect("step"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
