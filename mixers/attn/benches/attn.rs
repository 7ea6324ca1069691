//! Attention on the CPU at B=8, d_model=256, 4 heads: forward and
//! forward+backward at L=2048 (and the forward through candle's ops), and a
//! decoding step over a 1.4k-token KV cache.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_attn::{flash_attention, Mha};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_kernels::portable::with_portable;
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

fn bench(c: &mut Criterion) {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg = serde_json::from_str(r#"{"num_heads": 4, "causal": true, "rotary_emb_dim": 32}"#)
        .expect("config");
    let m = Mha::new(H, cfg, &store.builder()).expect("layer");
    let mut g = bench::group(c, "attn");
    let x = bench::input(&[B, L, H]);
    bench::bench_forward_backward(
        &mut g,
        &m,
        &x,
        &ForwardOpts::default(),
        ("", " B8 L2048 H256"),
    );
    // The same forward through candle's ops (score blocks, mask, softmax):
    // what the flash kernels replaced, for the ratio.
    g.bench_function("portable forward B8 L2048 H256", |bench| {
        bench.iter(|| with_portable(|| m.forward(&x, &ForwardOpts::default())).expect("forward"))
    });
    // The kernel alone: causal, 4 heads of 64, q, k, v (B, L, h, d).
    let qkv: Vec<_> = (0..3).map(|_| bench::input(&[B, L, 4, H / 4])).collect();
    let scale = 1.0 / ((H / 4) as f64).sqrt();
    g.bench_function("flash kernel forward B8 L2048 4x64", |bench| {
        bench.iter(|| flash_attention(&qkv[0], &qkv[1], &qkv[2], scale, true).expect("flash"))
    });
    let vars: Vec<_> = qkv
        .iter()
        .map(|t| candle_core::Var::from_tensor(t).expect("var"))
        .collect();
    g.bench_function("flash kernel forward+backward B8 L2048 4x64", |bench| {
        bench.iter(|| {
            bench::backward_of_square_sum(
                &flash_attention(&vars[0], &vars[1], &vars[2], scale, true).expect("flash"),
            )
        })
    });
    let prompt = x.narrow(1, 0, 1400).expect("prompt");
    let mut st = m.init_state(B, L, DType::F32, &Device::Cpu).expect("state");
    m.prefill(&prompt, &mut st, &ForwardOpts::default())
        .expect("prefill");
    let xt = x
        .narrow(1, 1400, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    g.throughput(Throughput::Elements(B as u64));
    g.bench_function("step over 1.4k cache B8 H256", |bench| {
        // Each iteration decodes from the same 1400-token cache.
        bench.iter_batched(
            || st.clone(),
            |mut s| {
                s.seqlen_offset = 1400;
                m.step(&xt, &mut s, &StepOpts::default()).expect("step")
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
