//! The language model: building by name, step = forward, save/load, bad input.

mod common;

use candle_core::{DType, Device, Tensor};
use common::assert_mentions;
use common::lm::{
    forward, load_err, logits_at, max_diff, prefilled, rewrite_safetensors, saved_config,
    stepped_logits, token_ids,
};
use lrnnx::{generate, GenerateOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts};

fn hybrid(tied: bool, rms: bool, d_intermediate: usize) -> LmConfig {
    let mut c = LmConfig::new(16, 8, 50, &["LRU", "attn", "LRU"]);
    c.mixer_kwargs = serde_json::from_str(
        r#"{"attn": {"num_heads": 2, "causal": true, "rotary_emb_dim": 4}, "LRU": {"r_min": 0.5}}"#,
    )
    .unwrap();
    c.tie_embeddings = tied;
    c.rms_norm = rms;
    c.d_intermediate = d_intermediate;
    c
}

fn ids(b: usize, l: usize) -> Tensor {
    token_ids(b, l, 17, 3, 50)
}

#[test]
fn step_and_prefill_equal_forward() {
    lrnnx::init();
    for (tied, rms, di) in [(true, true, 32), (false, false, 0)] {
        let m = LRNNLMHeadModel::init(hybrid(tied, rms, di), 1, &Device::Cpu).unwrap();
        let x = ids(2, 12);
        let logits = forward(&m, &x);
        assert_eq!(
            logits.dims(),
            &[2, 12, 56],
            "vocab 50 padded to a multiple of 8"
        );
        assert!(max_diff(&stepped_logits(&m, &x), &logits) < 1e-4);
        let (last, mut st) = prefilled(&m, &x, 7);
        assert!(max_diff(&last, &logits_at(&logits, 6)) < 1e-4);
        let next = m.step(&x.narrow(1, 7, 1).unwrap(), &mut st, None).unwrap();
        assert!(max_diff(&next, &logits_at(&logits, 7)) < 1e-4);
        let tail = m
            .forward(
                &x,
                &LmForwardOpts {
                    num_last_tokens: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(max_diff(&tail, &logits.narrow(1, 9, 3).unwrap()) < 1e-6);
    }
}

#[test]
fn save_and_reload_give_identical_logits_and_config() {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    for (tied, rms, di) in [(true, true, 32), (false, false, 0)] {
        let m = LRNNLMHeadModel::init(hybrid(tied, rms, di), 3, &Device::Cpu).unwrap();
        m.save_pretrained(dir.path()).unwrap();
        let cfg = saved_config(dir.path());
        // Every per-layer default is written out.
        assert_eq!(cfg["layers"][0]["type"], "LRU");
        assert_eq!(cfg["layers"][0]["r_min"], 0.5);
        assert_eq!(cfg["layers"][0]["max_phase"], std::f64::consts::TAU);
        assert_eq!(cfg["layers"][1]["num_heads_kv"], 2);
        let back = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
        let x = ids(2, 9);
        assert_eq!(max_diff(&forward(&m, &x), &forward(&back, &x)), 0.0);
        assert_eq!(back.config(), m.config());
        // lrnnx's state-dict names, lm_head included when tied.
        let keys = lrnnx::io::read_safetensors(&dir.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        for k in [
            "backbone.embedding.weight",
            "backbone.layers.0.mixer.nu_log",
            "backbone.layers.1.mixer.in_proj.weight",
            "backbone.norm_f.weight",
            "lm_head.weight",
        ] {
            assert!(keys.contains_key(k), "{k}");
        }
        assert_eq!(
            keys.contains_key("backbone.layers.0.mlp.fc1.weight"),
            di > 0
        );
        assert_eq!(keys.contains_key("backbone.norm_f.bias"), !rms);
        let none_left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(none_left.is_empty(), "temporary files left behind");
    }
}

#[test]
fn generation_is_deterministic_with_a_seed() {
    lrnnx::init();
    let m = LRNNLMHeadModel::init(hybrid(true, true, 32), 5, &Device::Cpu).unwrap();
    let opts = GenerateOpts {
        max_new_tokens: 12,
        temperature: 0.9,
        top_k: 20,
        top_p: 0.95,
        seed: 42,
        ..Default::default()
    };
    let mut streamed = Vec::new();
    let a = generate(&m, &[1, 2, 3], &opts, |t| streamed.push(t)).unwrap();
    let b = generate(&m, &[1, 2, 3], &opts, |_| {}).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, streamed);
    assert_eq!(a.len(), 12);
    // Greedy generation equals argmax of the full forward, token by token.
    let g = generate(
        &m,
        &[4, 5],
        &GenerateOpts {
            max_new_tokens: 5,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let mut seq = vec![4u32, 5];
    for &t in &g {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = m
            .forward(
                &x,
                &LmForwardOpts {
                    num_last_tokens: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        let arg = logits
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(arg, t);
        seq.push(t);
    }
}

mod bad_input {
    use super::*;

    /// The message of the error that building a model of `c` gives.
    fn init_err(c: LmConfig) -> String {
        LRNNLMHeadModel::init(c, 0, &Device::Cpu)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_mixer_lists_registered_names() {
        lrnnx::init();
        let e = init_err(LmConfig::new(16, 8, 50, &["LRU", "Mamba3"]));
        assert_mentions(&e, &["Mamba3", "LRU", "attn"]);
    }

    #[test]
    fn layer_count_mismatch() {
        lrnnx::init();
        let mut c = LmConfig::new(16, 8, 50, &["LRU", "LRU"]);
        c.n_layer = 3;
        let e = init_err(c);
        assert_mentions(&e, &["n_layer is 3", "2 entries"]);
    }

    #[test]
    fn unknown_kwarg_names_layer_and_key() {
        lrnnx::init();
        let mut c = LmConfig::new(16, 8, 50, &["LRU", "attn"]);
        c.mixer_kwargs =
            serde_json::from_str(r#"{"attn": {"num_heads": 2, "casual": true}}"#).unwrap();
        let e = init_err(c);
        assert_mentions(&e, &["layer 1", "casual", "causal"]);
    }

    #[test]
    fn wrong_input_rank_or_range() {
        lrnnx::init();
        let m = LRNNLMHeadModel::init(hybrid(true, true, 0), 0, &Device::Cpu).unwrap();
        let e = m
            .forward(&ids(2, 3).flatten_all().unwrap(), &LmForwardOpts::default())
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["(batch, seqlen)", "[6]"]);
        let big = Tensor::new(&[[1u32, 999]], &Device::Cpu).unwrap();
        let e = m
            .forward(&big, &LmForwardOpts::default())
            .unwrap_err()
            .to_string();
        assert_mentions(&e, &["0..56", "999"]);
    }

    fn saved() -> (tempfile::TempDir, LRNNLMHeadModel) {
        lrnnx::init();
        let dir = tempfile::tempdir().unwrap();
        let m = LRNNLMHeadModel::init(hybrid(true, true, 0), 0, &Device::Cpu).unwrap();
        m.save_pretrained(dir.path()).unwrap();
        (dir, m)
    }

    #[test]
    fn missing_tensor_names_the_key_and_file() {
        let (dir, _) = saved();
        rewrite_safetensors(dir.path(), |t| {
            t.remove("backbone.layers.0.mixer.B_re");
        });
        let e = load_err(dir.path());
        assert_mentions(&e, &["backbone.layers.0.mixer.B_re", "model.safetensors"]);
    }

    #[test]
    fn misshapen_tensor_names_key_and_shapes() {
        let (dir, _) = saved();
        rewrite_safetensors(dir.path(), |t| {
            t.insert(
                "backbone.layers.1.mixer.out_proj.weight".into(),
                Tensor::zeros((16, 15), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let e = load_err(dir.path());
        assert_mentions(&e, &["out_proj.weight", "[16, 15]", "[16, 16]"]);
    }

    #[test]
    fn stray_tensor_is_reported() {
        let (dir, _) = saved();
        rewrite_safetensors(dir.path(), |t| {
            t.insert(
                "backbone.layers.7.mixer.x".into(),
                Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let e = load_err(dir.path());
        assert_mentions(&e, &["backbone.layers.7.mixer.x"]);
    }

    #[test]
    fn truncated_safetensors() {
        let (dir, _) = saved();
        let path = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["model.safetensors", "not a valid safetensors"]);
    }

    #[test]
    fn malformed_config() {
        let (dir, _) = saved();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"d_model\": 16, \"n_layer\": ").unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["config.json", "malformed JSON"]);
        std::fs::write(&path, r#"{"d_model": "sixteen", "d_state": 8, "n_layer": 1, "vocab_size": 5, "mixer_types": ["LRU"]}"#).unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["config.json", "sixteen"]);
    }

    #[test]
    fn missing_weights() {
        let (dir, _) = saved();
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["model.safetensors", "pytorch_model.bin"]);
    }
}

#[test]
fn mlstm_mixes_with_attention_and_mamba_and_round_trips() {
    lrnnx::init();
    let mut c = LmConfig::new(16, 4, 40, &["mLSTM", "attn", "Mamba"]);
    c.d_intermediate = 16;
    c.mixer_kwargs = serde_json::from_str(
        r#"{"mLSTM": {"num_heads": 2, "chunk_size": 4}, "attn": {"num_heads": 2, "causal": true}}"#,
    )
    .unwrap();
    let m = LRNNLMHeadModel::init(c, 2, &Device::Cpu).unwrap();
    let x = token_ids(2, 11, 7, 1, 40);
    let logits = forward(&m, &x);
    assert!(max_diff(&stepped_logits(&m, &x), &logits) < 1e-4);
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    let back = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&forward(&back, &x), &logits), 0.0);
}

#[test]
fn fresh_models_get_lrnnx_init_weights() {
    let c = LmConfig::new(16, 4, 40, &["Mamba", "LRU"]);
    let m = LRNNLMHeadModel::init(c, 3, &Device::Cpu).expect("model");
    let vars = m.store().vars();
    let abs_max = |name: &str| -> f32 {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let t = v.as_tensor().abs().expect("abs");
        t.max_all().and_then(|t| t.to_scalar::<f32>()).expect("max")
    };
    // Zeroed: dtA_proj.bias (lrnnx does not mark it _no_reinit).
    assert_eq!(abs_max("backbone.layers.0.mixer.dtA_proj.bias"), 0.0);
    // Kept: dt_proj.bias (inverse softplus of dt in [1e-3, 0.1], all < 0).
    assert!(abs_max("backbone.layers.0.mixer.dt_proj.bias") > 2.0);
    // Redrawn from U(±1/sqrt(fan_in)) / sqrt(n_layer).
    let fan_in = vars["backbone.layers.0.mixer.out_proj.weight"]
        .as_tensor()
        .dim(1)
        .expect("dim");
    let bound = 1.0 / (fan_in as f32).sqrt() / 2f32.sqrt();
    let w = abs_max("backbone.layers.0.mixer.out_proj.weight");
    assert!(
        w <= bound && w > 0.9 * bound,
        "out_proj max {w}, bound {bound}"
    );
}
