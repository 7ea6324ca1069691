//! LRU on the CPU at B=8, L=2048, d_model=256, d_state=256: forward, step,
//! backward, and the step through candle's ops.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use lrnnx_framework::{Mixer, ParamStore, StepOpts};
use lrnnx_kernels::portable::with_portable;
use lrnnx_lru::{Lru, LruConfig};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

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
    let x = bench::input(&[B, L, H]);
    let mut g = bench::group(c, "lru");
    let (seq, token) = bench::labels(&x, &format!(" N{N}"));
    bench::bench_mixer(&mut g, &lru, &x, &seq, &token);
    // The step through candle's ops, which the fused CPU step replaced: the ratio.
    let (mut state, xt) = bench::first_step(&lru, &x);
    g.bench_function(format!("portable step{token}"), |bench| {
        bench.iter(|| {
            with_portable(|| lru.step(&xt, &mut state, &StepOpts::default())).expect("step")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
