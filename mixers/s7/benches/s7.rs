//! S7 on the CPU at B=8, L=2048, d_model=256, d_state=16: forward, step, forward+backward.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use lrnnx_framework::ParamStore;
use lrnnx_s7::{S7Config, S7};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

const N: usize = 16;

fn layer() -> S7 {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    S7::new(H, S7Config::new(N), &store.builder()).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let m = layer();
    let x = bench::input(&[B, L, H]);
    let mut g = bench::group(c, "s7");
    let (seq, token) = bench::labels(&x, &format!(" N{N}"));
    bench::bench_mixer(&mut g, &m, &x, &seq, &token);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
