//! Weights that would make a model say garbage with exit 0 are refused on load.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use lrnnx::{LRNNLMHeadModel, LmConfig};

/// Saves a small tied model, lets `edit` change its tensors, and loads it back.
fn load_after(edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> lrnnx::Result<LRNNLMHeadModel> {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LmConfig::new(8, 4, 32, &["LRU"]);
    cfg.tie_embeddings = true;
    LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .unwrap()
        .save_pretrained(dir.path())
        .unwrap();
    common::lm::rewrite_safetensors(dir.path(), edit);
    LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu)
}

fn with_value_at(t: &Tensor, index: usize, v: f32) -> Tensor {
    let mut data = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    data[index] = v;
    Tensor::from_vec(data, t.dims(), &Device::Cpu).unwrap()
}

#[test]
fn an_unedited_checkpoint_loads() {
    load_after(|_| {}).unwrap();
}

#[test]
fn nan_and_inf_weights_are_refused_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let key = "backbone.layers.0.mixer.B";
        let e = load_after(|t| {
            let k = t
                .keys()
                .find(|k| k.starts_with("backbone.layers.0.mixer."))
                .unwrap()
                .clone();
            let edited = with_value_at(&t[&k], 1, bad);
            t.insert(k, edited);
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("backbone.layers.0.mixer.")
                && e.contains("NaN or infinite")
                && e.contains("model.safetensors"),
            "{bad} ({key}): {e}"
        );
    }
}

#[test]
fn a_tied_head_that_differs_from_the_embedding_is_refused() {
    let e = load_after(|t| {
        let edited = with_value_at(&t["lm_head.weight"], 3, 7.5);
        t.insert("lm_head.weight".into(), edited);
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("backbone.embedding.weight"),
        "{e}"
    );
}

#[test]
fn a_kwargs_override_for_a_type_no_layer_has_is_refused() {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LmConfig::new(8, 4, 32, &["LRU"]);
    LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .unwrap()
        .save_pretrained(dir.path())
        .unwrap();
    let kw: lrnnx::MixerKwargs = serde_json::from_str(r#"{"LRUU": {"r_min": 0.5}}"#).unwrap();
    let e = LRNNLMHeadModel::from_pretrained(dir.path(), Some(&kw), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LRUU") && e.contains("\"LRU\""), "{e}");
}

#[test]
fn a_per_type_entry_under_an_unused_name_is_refused() {
    lrnnx::init();
    let mut cfg = LmConfig::new(8, 4, 32, &["LRU", "attn"]);
    cfg.mixer_kwargs = serde_json::from_str(r#"{"atn": {"num_heads": 2}}"#).unwrap();
    let e = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`atn`") && e.contains("\"attn\""), "{e}");
}
