//! S4 and S4D on the CPU at B=8, L=2048, d_model=256, d_state=64: forward by
//! scan and by convolution, step, forward+backward (default mode).

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore, Result, StepOpts};
use lrnnx_s4::s4d::S4d;
use lrnnx_s4::ssm::{SsmBlockConfig, SsmDisc};
use lrnnx_s4::{ForwardMode, S4};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

const N: usize = 64;

/// The benches of one S4-family layer: `new` builds it at width `H`,
/// `d_state = N`, in the given forward mode.
fn bench_layer<Disc: SsmDisc, M: Mixer>(
    c: &mut Criterion,
    group: &str,
    new: impl Fn(usize, SsmBlockConfig<Disc>, &ParamBuilder) -> Result<M>,
    set_mode: impl Fn(&mut M, ForwardMode),
) {
    let layer = |mode: ForwardMode| -> M {
        let store = ParamStore::init(0, DType::F32, &Device::Cpu);
        let cfg: SsmBlockConfig<Disc> =
            serde_json::from_value(serde_json::json!({"d_state": N})).expect("valid config");
        let mut m = new(H, cfg, &store.builder()).expect("valid layer");
        set_mode(&mut m, mode);
        m
    };
    let x = bench::input(&[B, L, H]);
    let (seq, token) = bench::labels(&x, &format!(" N{N}"));
    let mut g = bench::group(c, group);
    g.throughput(Throughput::Elements((B * L) as u64));
    for (name, mode) in [("scan", ForwardMode::Scan), ("conv", ForwardMode::Conv)] {
        let m = layer(mode);
        g.bench_function(format!("forward {name}{seq}"), |bench| {
            bench.iter(|| m.forward(&x, &ForwardOpts::default()).expect("forward"))
        });
    }
    // The default mode (convolution at this shape); the scan's backward is
    // several times slower and left out to keep the run short.
    let m = layer(ForwardMode::Auto);
    g.bench_function(format!("forward+backward auto(conv){seq}"), |bench| {
        bench.iter(|| {
            bench::backward_of_square_sum(&m.forward(&x, &ForwardOpts::default()).expect("forward"))
        })
    });
    bench::bench_step(
        &mut g,
        &format!("step{token}"),
        &m,
        &x,
        &StepOpts::default(),
    );
    g.finish();
}

fn bench(c: &mut Criterion) {
    bench_layer(c, "s4", S4::new, S4::set_forward_mode);
    bench_layer(c, "s4d", S4d::new, S4d::set_forward_mode);
}

criterion_group!(benches, bench);
criterion_main!(benches);
