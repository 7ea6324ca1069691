//! The conformance runner on LM cases with integration timesteps, lengths,
//! `num_last_tokens`, non-causal attention and S4D with `l_max < L`. The
//! golden data (tests/data/lrnnx, from Python lrnnx) has no LM case with
//! these, so the cases here are made from our own model on the CPU: they
//! test the runner, not conformance with lrnnx.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use lrnnx::conformance::{run_case, Outcome};
use lrnnx::{LRNNLMHeadModel, LmConfig, LmForwardOpts};

fn model(mixers: &[&str], kwargs: serde_json::Value) -> LRNNLMHeadModel {
    lrnnx::init();
    let mut cfg = LmConfig::new(16, 4, 64, mixers);
    cfg.d_intermediate = 16;
    cfg.mixer_kwargs = serde_json::from_value(kwargs).unwrap();
    LRNNLMHeadModel::init(cfg, 4, &Device::Cpu).unwrap()
}

/// Writes an LM case: the model's parameters, `ids` and the options' inputs,
/// our forward's logits (plus `edit` of them) as the reference.
fn write_case(path: &Path, m: &LRNNLMHeadModel, ids: &Tensor, opts: &LmForwardOpts, offset: f64) {
    let mut t: BTreeMap<String, Tensor> = m
        .state_dict()
        .into_iter()
        .map(|(k, v)| (format!("param.{k}"), v))
        .collect();
    // lrnnx's state dict holds the tied head as well; ours loads it as an alias.
    t.insert(
        "input.input_ids".into(),
        ids.to_dtype(candle_core::DType::I64).unwrap(),
    );
    if let Some(ts) = &opts.integration_timesteps {
        t.insert("input.integration_timesteps".into(), ts.clone());
    }
    if let Some(l) = &opts.lengths {
        t.insert("input.lengths".into(), l.clone());
    }
    let logits = (m.forward(ids, opts).unwrap() + offset).unwrap();
    t.insert("output.logits".into(), logits);
    let mut meta = HashMap::from([
        ("mixer".to_string(), "LRNNLMHeadModel".to_string()),
        (
            "config".to_string(),
            serde_json::to_string(m.config()).unwrap(),
        ),
    ]);
    if opts.num_last_tokens > 0 {
        meta.insert("num_last_tokens".into(), opts.num_last_tokens.to_string());
    }
    lrnnx::io::write_safetensors(path, &t, Some(meta)).unwrap();
}

fn outputs(r: &lrnnx::conformance::CaseResult) -> Vec<&str> {
    r.outputs.iter().map(|o| o.0.as_str()).collect()
}

#[test]
fn lm_cases_with_timesteps_lengths_and_last_tokens_check_forward_step_and_prefill() {
    let dir = tempfile::tempdir().unwrap();
    // S5 with `use_fast_path` is the time-varying S5, which has event mode.
    let m = model(
        &["Mamba", "LRU", "S5"],
        serde_json::json!({"S5": {"use_fast_path": false}}),
    );
    let ids = common::lm::token_ids(2, 10, 5, 2, 64);
    let ts = Tensor::rand(0.5f32, 1.5, (2, 10), &Device::Cpu).unwrap();
    let opts = LmForwardOpts {
        integration_timesteps: Some(ts.clone()),
        lengths: Some(Tensor::new(&[10i64, 6], &Device::Cpu).unwrap()),
        num_last_tokens: 3,
    };
    let p = dir.path().join("lm_events.safetensors");
    write_case(&p, &m, &ids, &opts, 0.0);
    let r = run_case(&p);
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    assert_eq!(
        outputs(&r),
        [
            "logits",
            "step=forward (valid positions)",
            "prefill(lengths)=forward"
        ]
    );
    assert!(r.notes.is_empty(), "{}", r.line());

    // The timesteps reach the model: the same reference with other timesteps fails.
    let other = LmForwardOpts {
        integration_timesteps: Some((ts * 2.0).unwrap()),
        ..opts.clone()
    };
    let q = dir.path().join("lm_other_ts.safetensors");
    write_case(&q, &m, &ids, &other, 0.0);
    let file = lrnnx::io::read_safetensors_file(&q, &Device::Cpu).unwrap();
    let mut t: BTreeMap<String, Tensor> = file.tensors.into_iter().collect();
    t.insert("output.logits".into(), m.forward(&ids, &opts).unwrap());
    lrnnx::io::write_safetensors(&q, &t, Some(file.metadata)).unwrap();
    let r = run_case(&q);
    assert!(
        matches!(&r.outcome, Outcome::Fail(w) if w.contains("logits")),
        "{}",
        r.line()
    );

    // num_last_tokens alone: the last positions against our step's.
    let last = LmForwardOpts {
        num_last_tokens: 4,
        ..Default::default()
    };
    let p = dir.path().join("lm_last.safetensors");
    write_case(&p, &m, &ids, &last, 0.0);
    let r = run_case(&p);
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    assert_eq!(
        outputs(&r),
        [
            "logits",
            "step=forward",
            "last_tokens=step",
            "prefill=forward"
        ]
    );
    // A reference off by more than the tolerance fails.
    write_case(&p, &m, &ids, &last, 1e-2);
    let r = run_case(&p);
    assert!(matches!(r.outcome, Outcome::Fail(_)), "{}", r.line());
}

#[test]
fn lm_cases_whose_step_legitimately_differs_check_forward_only_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let ids = common::lm::token_ids(2, 12, 3, 1, 64);
    for (name, mixers, kwargs, why) in [
        (
            "lm_bidirectional",
            &["LRU", "attn"][..],
            serde_json::json!({"attn": {"num_heads": 2, "causal": false}}),
            "layer 1 (attn): non-causal attention",
        ),
        (
            "lm_s4d_lmax",
            &["S4D", "LRU"][..],
            serde_json::json!({"S4D": {"transposed": false, "l_max": 8}}),
            "layer 0 (S4D): l_max 8 < L 12",
        ),
    ] {
        let m = model(mixers, kwargs);
        let p = dir.path().join(format!("{name}.safetensors"));
        write_case(&p, &m, &ids, &LmForwardOpts::default(), 0.0);
        let r = run_case(&p);
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
        assert_eq!(outputs(&r), ["logits"], "{name}");
        common::assert_mentions(&r.line(), &["pass; forward only, step not checked", why]);
    }
    // With attention and unequal lengths the runner says why prefill went unchecked.
    let m = model(
        &["LRU", "attn"],
        serde_json::json!({"attn": {"num_heads": 2, "causal": true}}),
    );
    let p = dir.path().join("lm_attn_lengths.safetensors");
    let opts = LmForwardOpts {
        lengths: Some(Tensor::new(&[12i64, 7], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    write_case(&p, &m, &ids, &opts, 0.0);
    let r = run_case(&p);
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    common::assert_mentions(&r.line(), &["prefill with lengths not checked", "KV cache"]);
}

#[test]
fn a_mixer_case_with_a_kernel_cut_at_l_max_checks_forward_only_and_says_so() {
    lrnnx::init();
    let store = lrnnx::ParamStore::init(1, candle_core::DType::F32, &Device::Cpu);
    let kwargs = serde_json::json!({"transposed": false, "l_max": 6});
    let args = lrnnx::BuildArgs {
        d_model: 8,
        d_state: 4,
        layer_idx: 0,
        kwargs: kwargs.as_object().unwrap().clone(),
        params: store.builder(),
    };
    let m = lrnnx::Registry::build("S4D", &args).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 10, 8), &Device::Cpu).unwrap();
    let y = m.forward(&x, &Default::default()).unwrap();
    let mut t: BTreeMap<String, Tensor> = store
        .tensors()
        .into_iter()
        .map(|(k, v)| (format!("param.{k}"), v))
        .collect();
    t.insert("input.x".into(), x);
    t.insert("output.y".into(), y);
    let mut kw = kwargs;
    kw["d_model"] = 8.into();
    kw["d_state"] = 4.into();
    let meta = HashMap::from([
        ("mixer".to_string(), "S4D".to_string()),
        ("kwargs".to_string(), kw.to_string()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s4d_lmax.safetensors");
    lrnnx::io::write_safetensors(&p, &t, Some(meta)).unwrap();
    let r = run_case(&p);
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    assert_eq!(outputs(&r), ["y"]);
    common::assert_mentions(
        &r.line(),
        &["forward only, step not checked (l_max 6 < L 10)"],
    );
}
