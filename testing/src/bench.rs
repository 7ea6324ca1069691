//! The criterion scaffolding the mixer benches share (feature `bench`): the
//! CPU shape they run at, the group settings, and the forward,
//! forward+backward and step measurements every mixer gets.

use candle_core::{backprop::GradStore, DType, Device, Tensor};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, MixerState, StepOpts};

/// The batch size of the mixer benches.
pub const B: usize = 8;
/// The sequence length of the mixer benches.
pub const L: usize = 2048;
/// The model width of the mixer benches.
pub const D_MODEL: usize = 256;

/// An f32 `N(0, 1)` input on the CPU (unseeded: the timings do not depend on the values).
pub fn input(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("input")
}

/// A benchmark group with the settings every mixer bench uses: 10 samples
/// (one forward at the bench shape takes long enough on its own).
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g
}

/// The backward pass of `sum(y²)`: what the forward+backward benches time after the forward.
pub fn backward_of_square_sum(y: &Tensor) -> GradStore {
    y.sqr()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward")
}

/// The labels of the bench shape of `x (B, L, H)` for the benchmark names:
/// `" B8 L2048 H256{extra}"` for a sequence and `" B8 H256{extra}"` for a step.
pub fn labels(x: &Tensor, extra: &str) -> (String, String) {
    let (b, l, h) = x.dims3().expect("x is (B, L, H)");
    (
        format!(" B{b} L{l} H{h}{extra}"),
        format!(" B{b} H{h}{extra}"),
    )
}

/// A fresh f32 CPU state of `m` for `x (B, L, H)` and the `(B, H)` input of its first position.
pub fn first_step(m: &dyn Mixer, x: &Tensor) -> (MixerState, Tensor) {
    let (b, l, _) = x.dims3().expect("x is (B, L, H)");
    let state = m.init_state(b, l, DType::F32, &Device::Cpu).expect("state");
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    (state, xt)
}

/// Times one step of `m` (options `opts`) on the first position of `x (B, L, H)`,
/// the state carried from iteration to iteration; the throughput is B positions.
pub fn bench_step(
    g: &mut BenchmarkGroup<WallTime>,
    name: &str,
    m: &dyn Mixer,
    x: &Tensor,
    opts: &StepOpts,
) {
    let (mut state, xt) = first_step(m, x);
    g.throughput(Throughput::Elements(x.dim(0).expect("batch") as u64));
    g.bench_function(name, |bench| {
        bench.iter(|| m.step(&xt, &mut state, opts).expect("step"))
    });
}

/// Times `{prefix}forward{seq}` and `{prefix}forward+backward{seq}` (of
/// `sum(y²)`) of `m` on `x (B, L, H)` with options `opts`; the throughput is
/// B·L positions.
pub fn bench_forward_backward(
    g: &mut BenchmarkGroup<WallTime>,
    m: &dyn Mixer,
    x: &Tensor,
    opts: &ForwardOpts,
    (prefix, seq): (&str, &str),
) {
    let (b, l, _) = x.dims3().expect("x is (B, L, H)");
    g.throughput(Throughput::Elements((b * l) as u64));
    g.bench_function(format!("{prefix}forward{seq}"), |bench| {
        bench.iter(|| m.forward(x, opts).expect("forward"))
    });
    g.bench_function(format!("{prefix}forward+backward{seq}"), |bench| {
        bench.iter(|| backward_of_square_sum(&m.forward(x, opts).expect("forward")))
    });
}

/// The benches of a mixer with nothing special: `forward{seq}` and
/// `forward+backward{seq}` on `x (B, L, H)`, then `step{token}`, with default options.
pub fn bench_mixer(
    g: &mut BenchmarkGroup<WallTime>,
    m: &dyn Mixer,
    x: &Tensor,
    seq: &str,
    token: &str,
) {
    bench_forward_backward(g, m, x, &ForwardOpts::default(), ("", seq));
    bench_step(g, &format!("step{token}"), m, x, &StepOpts::default());
}
