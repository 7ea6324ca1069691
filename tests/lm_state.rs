//! A model's decoding state saved and restored: decoding continues exactly
//! as if never interrupted; a state of another model is refused by name.

mod common;

use candle_core::{Device, Tensor};
use lrnnx::{LRNNLMHeadModel, LmConfig, LmForwardOpts, LmState};

fn config(mixers: &[&str], d_state: usize) -> LmConfig {
    let mut cfg = LmConfig::new(16, d_state, 64, mixers);
    cfg.d_intermediate = 16;
    cfg.mixer_kwargs = serde_json::from_value(serde_json::json!({
        "attn": {"num_heads": 2, "causal": true, "rotary_emb_dim": 4},
        "S4D": {"transposed": false},
        "S5": {"discretization": "zoh"},
    }))
    .unwrap();
    cfg.mixer_kwargs.retain(|k, _| mixers.contains(&k.as_str()));
    cfg
}

const MIXERS: &[&str] = &["LRU", "attn", "Mamba", "S4D", "S5", "RGLRU"];

fn model(mixers: &[&str], d_state: usize) -> LRNNLMHeadModel {
    lrnnx::init();
    LRNNLMHeadModel::init(config(mixers, d_state), 1, &Device::Cpu).unwrap()
}

fn argmax(logits: &Tensor) -> Tensor {
    logits.argmax(1).unwrap()
}

/// Greedy decoding of `n` tokens from `state` after `logits`: the tokens and each step's logits.
fn decode(
    m: &LRNNLMHeadModel,
    mut logits: Tensor,
    state: &mut LmState,
    n: usize,
) -> (Vec<Vec<u32>>, Vec<Tensor>) {
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = argmax(&logits);
        toks.push(next.to_vec1::<u32>().unwrap());
        logits = m.step(&next, state, None).unwrap();
        all.push(logits.clone());
    }
    (toks, all)
}

#[test]
fn a_saved_state_continues_decoding_exactly_as_if_uninterrupted() {
    let m = model(MIXERS, 4);
    let dir = tempfile::tempdir().unwrap();
    let prompt = common::lm::token_ids(2, 7, 5, 3, 64);
    let mut state = m.init_state(2, 32).unwrap();
    let last = m
        .prefill(&prompt, &mut state, &LmForwardOpts::default())
        .unwrap();
    let path = dir.path().join("state.safetensors");
    state.save(&path).unwrap();
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);

    // "Another process": the model reloaded from disk, the state from its file.
    m.save_pretrained(dir.path().join("model")).unwrap();
    let m2 =
        LRNNLMHeadModel::from_pretrained(dir.path().join("model"), None, &Device::Cpu).unwrap();
    let mut restored = m2.load_state(&path).unwrap();
    assert_eq!(restored.seqlen_offset, 7);
    assert_eq!(restored.mixers, MIXERS);
    assert_eq!(
        restored
            .layers
            .iter()
            .map(|l| l.seqlen_offset)
            .collect::<Vec<_>>(),
        state
            .layers
            .iter()
            .map(|l| l.seqlen_offset)
            .collect::<Vec<_>>()
    );

    let (toks_a, logits_a) = decode(&m, last.clone(), &mut state, 6);
    let (toks_b, logits_b) = decode(&m2, last, &mut restored, 6);
    assert_eq!(toks_a, toks_b);
    for (t, (a, b)) in logits_a.iter().zip(&logits_b).enumerate() {
        assert_eq!(common::lm::max_diff(a, b), 0.0, "step {t}");
    }
    // And both equal the forward over the whole sequence.
    let mut full = vec![prompt.clone()];
    for t in &toks_a[..5] {
        full.push(
            Tensor::new(t.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(1)
                .unwrap(),
        );
    }
    let full = Tensor::cat(&full, 1).unwrap();
    let fwd = common::lm::forward(&m, &full);
    let e = common::lm::rel_err(&logits_b[4], &common::lm::logits_at(&fwd, 11));
    assert!(e <= 1e-4, "{e}");
}

#[test]
fn a_state_of_another_model_or_file_is_refused_naming_what_differs() {
    let m = model(MIXERS, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let mut state = m.init_state(2, 8).unwrap();
    m.prefill(
        &common::lm::token_ids(2, 3, 1, 0, 64),
        &mut state,
        &LmForwardOpts::default(),
    )
    .unwrap();
    state.save(&path).unwrap();
    let err = |other: &LRNNLMHeadModel| other.load_state(&path).unwrap_err().to_string();

    let e = err(&model(&MIXERS[..5], 4));
    common::assert_mentions(&e, &["state.safetensors", "5 layer states", "found 6"]);
    let mut swapped = MIXERS.to_vec();
    swapped.swap(0, 2);
    let e = err(&model(&swapped, 4));
    common::assert_mentions(
        &e,
        &["layer 0", "expected mixer `Mamba`", "found mixer `LRU`"],
    );
    // Same mixers, another state size: the tensor and both shapes are named.
    let e = err(&model(MIXERS, 6));
    common::assert_mentions(&e, &["layer 0 (LRU)", "expected shape", "found"]);
    let f32_state = e;
    let bf16 = model(MIXERS, 4)
        .with_compute_dtype(candle_core::DType::BF16)
        .unwrap();
    let e = err(&bf16);
    common::assert_mentions(&e, &["dtype BF16", "found dtype F32"]);
    assert_ne!(e, f32_state);

    // A batch that disagrees between layers.
    let mut mixed = LmState::load(&path, &Device::Cpu).unwrap();
    let one = m.init_state(1, 8).unwrap();
    mixed.layers[3] = one.layers[3].clone();
    let e = m.check_state(&mixed).unwrap_err().to_string();
    common::assert_mentions(&e, &["layer 3 (S4D)", "batch 2 elsewhere"]);

    // Not a state file: a model's weights, a truncated file, a directory.
    m.save_pretrained(dir.path().join("model")).unwrap();
    let e = LmState::load(&dir.path().join("model/model.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    common::assert_mentions(
        &e,
        &[
            "model.safetensors",
            "expected a decoding state of format",
            "found format `pt`",
        ],
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = LmState::load(&cut, &Device::Cpu).unwrap_err().to_string();
    common::assert_mentions(&e, &["cut.safetensors", "not a valid safetensors file"]);
    let e = LmState::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    common::assert_mentions(&e, &["expected a regular file, found a directory"]);

    // Metadata that disagrees with itself.
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "layers.9.h".to_string(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let meta = std::collections::HashMap::from([
        ("format".to_string(), lrnnx::LM_STATE_FORMAT.to_string()),
        ("n_layer".to_string(), "1".to_string()),
        ("mixers".to_string(), r#"["LRU"]"#.to_string()),
        ("layer_offsets".to_string(), "[0]".to_string()),
        ("seqlen_offset".to_string(), "0".to_string()),
        ("dtype".to_string(), "f32".to_string()),
    ]);
    let odd = dir.path().join("odd.safetensors");
    lrnnx::io::write_safetensors(&odd, &tensors, Some(meta.clone())).unwrap();
    let e = LmState::load(&odd, &Device::Cpu).unwrap_err().to_string();
    common::assert_mentions(&e, &["i < 1", "`layers.9.h`"]);
    let mut m2 = meta;
    m2.insert("n_layer".into(), "1000000".into());
    lrnnx::io::write_safetensors(&odd, &tensors, Some(m2)).unwrap();
    let e = LmState::load(&odd, &Device::Cpu).unwrap_err().to_string();
    common::assert_mentions(&e, &["at most 4096 layers", "1000000"]);
}
