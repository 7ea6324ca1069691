//! mLSTM on the CPU. The cell at B=4, NH=4, L=2048, head dim 64: chunkwise
//! (chunk 64) against parallel and recurrent, chunkwise forward+backward and
//! one recurrent step; the layer (d_model 128, inner 256, 4 heads of 64):
//! forward, forward+backward, step.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::ParamStore;
use lrnnx_mlstm::cell::{self, CellState};
use lrnnx_mlstm::{Mlstm, MlstmConfig};
use lrnnx_testing::bench;

const B: usize = 4;
const NH: usize = 4;
const L: usize = 2048;
const DH: usize = 64;
const EPS: f64 = 1e-6;

fn randn(shape: &[usize], mean: f32) -> Tensor {
    Tensor::randn(mean, 1f32, shape, &Device::Cpu).expect("input")
}

fn cell_bench(c: &mut Criterion) {
    let (q, k, v) = (
        randn(&[B, NH, L, DH], 0.0),
        randn(&[B, NH, L, DH], 0.0),
        randn(&[B, NH, L, DH], 0.0),
    );
    let (i, f) = (randn(&[B, NH, L], 0.0), randn(&[B, NH, L], 3.0));
    let mut g = bench::group(c, "mlstm cell B4 NH4 L2048 DH64");
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("chunkwise(64) forward", |b| {
        b.iter(|| cell::chunkwise(&q, &k, &v, &i, &f, None, 64, EPS).expect("chunkwise"))
    });
    g.bench_function("chunkwise(128) forward", |b| {
        b.iter(|| cell::chunkwise(&q, &k, &v, &i, &f, None, 128, EPS).expect("chunkwise"))
    });
    g.bench_function("parallel forward", |b| {
        b.iter(|| cell::parallel(&q, &k, &v, &i, &f, None, EPS).expect("parallel"))
    });
    g.bench_function("recurrent forward", |b| {
        b.iter(|| cell::recurrent_sequence(&q, &k, &v, &i, &f, None, EPS).expect("recurrent"))
    });
    let vars: Vec<candle_core::Var> = [&q, &k, &v, &i, &f]
        .iter()
        .map(|t| candle_core::Var::from_tensor(t).expect("var"))
        .collect();
    g.bench_function("chunkwise(64) forward+backward", |b| {
        b.iter(|| {
            let t = |j: usize| vars[j].as_tensor();
            let (h, _) =
                cell::chunkwise(t(0), t(1), t(2), t(3), t(4), None, 64, EPS).expect("chunkwise");
            bench::backward_of_square_sum(&h)
        })
    });
    g.throughput(Throughput::Elements(B as u64));
    let state = CellState::zeros(B, NH, DH, DH, DType::F32, &Device::Cpu).expect("state");
    let at = |t: &Tensor| t.narrow(2, 0, 1).and_then(|x| x.squeeze(2)).expect("slice");
    let (qt, kt, vt, it, ft) = (at(&q), at(&k), at(&v), at(&i), at(&f));
    g.bench_function("step", |b| {
        b.iter(|| cell::step(&qt, &kt, &vt, &it, &ft, &state, EPS).expect("step"))
    });
    g.finish();
}

fn layer_bench(c: &mut Criterion) {
    let d = 128;
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let layer = Mlstm::new(d, MlstmConfig::default(), &store.builder()).expect("valid config");
    let x = randn(&[B, L, d], 0.0);
    let mut g = bench::group(c, "mlstm layer B4 L2048 d128 (inner 256, NH4)");
    bench::bench_mixer(&mut g, &layer, &x, "", "");
    g.finish();
}

criterion_group!(benches, cell_bench, layer_bench);
criterion_main!(benches);
