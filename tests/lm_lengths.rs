//! `prefill` honours `lengths`: a padded batch prefilled with lengths gives
//! each sequence the state (and last logits) of prefilling it alone.

mod common;

use candle_core::{Device, Tensor};
use lrnnx::{LRNNLMHeadModel, LmConfig, LmForwardOpts, LmState};

fn model(mixers: &[&str]) -> LRNNLMHeadModel {
    lrnnx::init();
    let mut cfg = LmConfig::new(16, 4, 64, mixers);
    cfg.d_intermediate = 16;
    cfg.mixer_kwargs = serde_json::from_value(serde_json::json!({
        "attn": {"num_heads": 2, "causal": true},
        "S4D": {"transposed": false},
        "S5": {"discretization": "zoh"},
    }))
    .unwrap();
    cfg.mixer_kwargs.retain(|k, _| mixers.contains(&k.as_str()));
    LRNNLMHeadModel::init(cfg, 2, &Device::Cpu).unwrap()
}

const RECURRENT: &[&str] = &["LRU", "Mamba", "S4D", "S5", "RGLRU", "S7"];

fn lengths(v: &[i64]) -> LmForwardOpts {
    LmForwardOpts {
        lengths: Some(Tensor::new(v, &Device::Cpu).unwrap()),
        ..Default::default()
    }
}

/// Decodes `n` tokens greedily from `state`: each step's logits.
fn decode(m: &LRNNLMHeadModel, mut logits: Tensor, state: &mut LmState, n: usize) -> Vec<Tensor> {
    (0..n)
        .map(|_| {
            logits = m.step(&logits.argmax(1).unwrap(), state, None).unwrap();
            logits.clone()
        })
        .collect()
}

#[test]
fn a_padded_batch_prefilled_with_lengths_equals_each_sequence_alone() {
    let m = model(RECURRENT);
    let lens = [5usize, 8, 3, 5];
    // Padding past each length is junk that must not matter.
    let ids = common::lm::token_ids(4, 8, 7, 1, 64);
    let mut state = m.init_state(4, 8).unwrap();
    let last = m
        .prefill(&ids, &mut state, &lengths(&[5, 8, 3, 5]))
        .unwrap();
    assert_eq!(state.seqlen_offset, 8, "the longest sequence's tokens");
    let batch_steps = decode(&m, last.clone(), &mut state.clone(), 3);
    for (b, &n) in lens.iter().enumerate() {
        let alone = ids.narrow(0, b, 1).unwrap().narrow(1, 0, n).unwrap();
        let mut st = m.init_state(1, 8).unwrap();
        let want = m
            .prefill(&alone, &mut st, &LmForwardOpts::default())
            .unwrap();
        let got = last.narrow(0, b, 1).unwrap();
        let e = common::lm::rel_err(&got, &want);
        assert!(
            e <= 1e-6,
            "sequence {b} (length {n}): last logits off by {e}"
        );
        // Every per-sequence state tensor equals the lone prefill's.
        for (i, (layer, lone)) in state.layers.iter().zip(&st.layers).enumerate() {
            for (name, t) in layer.tensors() {
                let lt = lone.get(name).unwrap();
                let row = if t.dims().first() == Some(&4) && lt.dims().first() == Some(&1) {
                    t.narrow(0, b, 1).unwrap()
                } else {
                    t.clone()
                };
                let e = common::lm::rel_err(&row, lt);
                assert!(e <= 1e-6, "sequence {b}, layer {i} `{name}`: off by {e}");
            }
        }
        // And decoding on from them agrees.
        let lone_steps = decode(&m, want, &mut st, 3);
        for (k, (a, w)) in batch_steps.iter().zip(&lone_steps).enumerate() {
            let e = common::lm::rel_err(&a.narrow(0, b, 1).unwrap(), w);
            assert!(e <= 1e-5, "sequence {b}, step {k}: off by {e}");
        }
    }
    // Without lengths the padded rows would give other states (the check can fail).
    let mut plain = m.init_state(4, 8).unwrap();
    let p = m
        .prefill(&ids, &mut plain, &LmForwardOpts::default())
        .unwrap();
    assert!(
        common::lm::rel_err(&p.narrow(0, 2, 1).unwrap(), &last.narrow(0, 2, 1).unwrap()) > 1e-3
    );
}

#[test]
fn lengths_are_checked_and_attention_refuses_unequal_ones() {
    let m = model(&["LRU", "attn"]);
    let ids = common::lm::token_ids(2, 6, 3, 0, 64);
    // Equal full lengths are an ordinary prefill, attention or not.
    let mut a = m.init_state(2, 6).unwrap();
    let mut b = m.init_state(2, 6).unwrap();
    let la = m.prefill(&ids, &mut a, &lengths(&[6, 6])).unwrap();
    let lb = m.prefill(&ids, &mut b, &LmForwardOpts::default()).unwrap();
    assert_eq!(common::lm::max_diff(&la, &lb), 0.0);
    let err = |v: &[i64]| {
        let mut st = m.init_state(2, 6).unwrap();
        m.prefill(&ids, &mut st, &lengths(v))
            .unwrap_err()
            .to_string()
    };
    common::assert_mentions(
        &err(&[6, 4]),
        &["unequal lengths [6, 4]", "layer 1 (attn)", "KV cache"],
    );
    common::assert_mentions(&err(&[0, 6]), &["lengths", "1..=6", "length 0"]);
    common::assert_mentions(&err(&[7, 6]), &["1..=6", "length 7"]);
    common::assert_mentions(&err(&[6, 6, 6]), &["lengths", "(2,) or (1,)", "[3]"]);
}
