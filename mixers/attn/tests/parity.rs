//! The portable path (candle's ops, what CUDA runs) against the fused CPU
//! path in f64: forward, every gradient, prefill + steps; and bf16
//! activations on f32 master weights.

use candle_core::{DType, Device};
use lrnnx_attn::{Mha, MhaConfig};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore, StepOpts};
use lrnnx_testing::parity::{assert_parity, sweep, Candidate, Tolerance, BF16_SHAPES, SHAPES};
use lrnnx_testing::{max_rel, randn, vec1};

/// `(config, d_model)`: plain, GQA with NeoX rotary, MQA with interleaved
/// rotary, odd head size and a conv, the MLP branch without biases, non-causal.
const CONFIGS: &[(&str, usize)] = &[
    (r#"{"num_heads": 2, "causal": true}"#, 6),
    (
        r#"{"num_heads": 4, "num_heads_kv": 2, "causal": true, "rotary_emb_dim": 2}"#,
        12,
    ),
    (
        r#"{"num_heads": 3, "num_heads_kv": 1, "head_dim": 5, "causal": true, "rotary_emb_dim": 4, "rotary_emb_interleaved": true, "d_conv": 3}"#,
        7,
    ),
    (
        r#"{"num_heads": 2, "causal": true, "mlp_dim": 10, "qkv_proj_bias": false, "out_proj_bias": false, "rotary_emb_dim": 4}"#,
        8,
    ),
    (
        r#"{"num_heads": 4, "num_heads_kv": 2, "causal": false, "rotary_emb_dim": 2, "d_conv": 4}"#,
        12,
    ),
];

fn cfg(json: &str) -> MhaConfig {
    serde_json::from_str(json).expect("test config parses")
}

fn causal(json: &str) -> bool {
    cfg(json).causal
}

fn builder(
    json: &'static str,
    d_model: usize,
) -> impl Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>> {
    move |pb| Ok(Box::new(Mha::new(d_model, cfg(json), pb)?) as Box<dyn Mixer>)
}

#[test]
fn portable_path_matches_the_fused_path() {
    // L = 1 (forward only a step), odd L, one longer L; a batch of 1 and of 3.
    for &(json, e) in CONFIGS {
        // Non-causal attention has no position-by-position decoding.
        let steps = if causal(json) { 3 } else { 0 };
        sweep(
            &builder(json, e),
            e,
            &SHAPES,
            &Candidate::portable(),
            Tolerance::F32,
            steps,
            json,
        );
    }
}

#[test]
fn portable_path_matches_in_query_blocks() {
    // 4103 keys: 4103^2 scores exceed SCORE_BUDGET, so the queries go in
    // blocks of 2^24 / 4103 = 4089 rows and a last block of 14: L is not a
    // multiple of the block. Causal blocks also cut the keys.
    let l = 4103;
    let rows = lrnnx_attn::SCORE_BUDGET / l;
    assert!(rows < l && l % rows != 0, "the test must exercise blocking");
    for (json, steps) in [
        (
            r#"{"num_heads": 1, "causal": true, "rotary_emb_dim": 2}"#,
            2,
        ),
        (r#"{"num_heads": 1}"#, 0),
    ] {
        let r = assert_parity(
            &builder(json, 2),
            (1, l, 2),
            &Candidate::portable(),
            Tolerance::F32,
            steps,
            json,
        );
        println!("{json} (l {l}): {r:?}");
    }
}

/// bf16 activations on f32 master weights. bf16 rounds to 8 significant bits,
/// a relative error of at most 2^-8 per rounding. On the way to the output a
/// value is rounded about eight times where the compute dtype is bf16 (the
/// input, the cast `in_proj` weight, the projection, the rotated q/k, the
/// context, the cast `out_proj` weight, the output, and the MLP's product);
/// scores, softmax and the conv run in f32 and add nothing of that order. So
/// the forward and decoding error is held to 8 * 2^-8 = 2^-5 of the output's
/// scale. Backward rounds the same chain again in reverse, plus the cotangent
/// itself, so gradients get twice that: 2^-4.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 32.0,
    grad: 1.0 / 16.0,
};

#[test]
fn bf16_activations_on_f32_weights_match_the_f64_reference() {
    let cand = Candidate::portable_bf16();
    for &(json, e) in CONFIGS {
        let steps = if causal(json) { 3 } else { 0 };
        sweep(
            &builder(json, e),
            e,
            &BF16_SHAPES,
            &cand,
            BF16,
            steps,
            &format!("bf16 {json}"),
        );
    }
}

#[test]
fn an_f32_cache_takes_bf16_steps() {
    // The cache dtype is the caller's: bf16 keys, values and conv rows are
    // cast on write (exactly: bf16 values fit f32) and widened to f32 for the
    // scores either way, so an f32 cache steps to the same bf16 outputs as a
    // bf16 one.
    let (json, e) = CONFIGS[2];
    let store = ParamStore::init(5, DType::F32, &Device::Cpu);
    let m = Mha::new(e, cfg(json), &store.builder()).expect("builds");
    let (b, l) = (2, 5);
    let x = randn(&[b, l, e], 6, DType::BF16);
    let decode = |cache: DType| {
        // A capacity of 2 makes the cache grow on the way.
        let mut st = m.init_state(b, 2, cache, &Device::Cpu).expect("state");
        assert_eq!(st.get("k").expect("k").dtype(), cache);
        let mut ys = Vec::new();
        for t in 0..l {
            let xt = x.narrow(1, t, 1).expect("position");
            let yt = m.step(&xt, &mut st, &StepOpts::default()).expect("step");
            assert_eq!(yt.dtype(), DType::BF16, "position {t}");
            ys.push(yt.unsqueeze(1).expect("rank"));
        }
        candle_core::Tensor::cat(&ys, 1).expect("steps")
    };
    let (narrow, wide) = (decode(DType::BF16), decode(DType::F32));
    assert_eq!(vec1(&narrow), vec1(&wide));
    // And the steps are the forward's, within the bf16 forward tolerance.
    let want = m.forward(&x, &ForwardOpts::default()).expect("forward");
    let err = max_rel(&narrow, &want);
    assert!(err <= BF16.output, "steps vs forward: {err:e}");
}

#[test]
fn a_state_of_another_batch_is_named() {
    // GQA (2 KV heads of 3): the KV cache is (3, 2, .., 3), the step's (2, 2, .., 3).
    let (json, e) = CONFIGS[1];
    let store = ParamStore::init(5, DType::F32, &Device::Cpu);
    let m = Mha::new(e, cfg(json), &store.builder()).expect("builds");
    let mut st = m.init_state(3, 4, DType::F32, &Device::Cpu).expect("state");
    let x = randn(&[2, 1, e], 6, DType::F32);
    let err = m
        .step(&x, &mut st, &StepOpts::default())
        .expect_err("a batch of 2 on a state of 3")
        .to_string();
    assert!(
        err.contains("found (3, 2, .., 3)") && err.contains("expected (2, 2, .., 3)"),
        "{err}"
    );
}
