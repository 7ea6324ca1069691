//! RG-LRU on the CPU at B=8, L=2048, d_model=256 (d_inner 256): forward, step, forward+backward.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use lrnnx_framework::ParamStore;
use lrnnx_rglru::{RgLru, RgLruConfig};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

fn layer() -> RgLru {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    RgLru::new(H, RgLruConfig::default(), &store.builder()).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let m = layer();
    let x = bench::input(&[B, L, H]);
    let mut g = bench::group(c, "rglru");
    let (seq, token) = bench::labels(&x, "");
    bench::bench_mixer(&mut g, &m, &x, &seq, &token);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
