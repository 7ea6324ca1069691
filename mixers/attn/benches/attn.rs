//! Attention on the CPU at B=8, d_model=256, 4 heads: forward at L=2048 and a
//! decoding step over a 1.4k-token KV cache.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_attn::Mha;
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_testing::bench::{self, B, D_MODEL as H, L};

fn bench(c: &mut Criterion) {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let cfg = serde_json::from_str(r#"{"num_heads": 4, "causal": true, "rotary_emb_dim": 32}"#)
        .expect("config");
    let m = Mha::new(H, cfg, &store.builder()).expect("layer");
    let mut g = bench::group(c, "attn");
    let x = bench::input(&[B, L, H]);
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward B8 L2048 H256", |bench| {
        bench.iter(|| m.forward(&x, &ForwardOpts::default()).expect("forward"))
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
