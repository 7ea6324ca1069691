//! Python lrnnx checkpoints (`config.json` + `pytorch_model.bin`): load, convert, hand back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::assert_mentions;
use common::lm::{forward, load_err, rel_err};
use lrnnx::{LRNNLMHeadModel, MixerKwargs};

fn ckpt(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/lrnnx/checkpoints")
        .join(case)
}

fn expected(case: &str) -> (Tensor, Tensor, Option<MixerKwargs>) {
    let f =
        lrnnx::io::read_safetensors_file(&ckpt(case).join("expected.safetensors"), &Device::Cpu)
            .unwrap();
    let kw = f
        .metadata
        .get("mixer_kwargs")
        .and_then(|s| serde_json::from_str::<MixerKwargs>(s).ok())
        .filter(|m| !m.is_empty());
    (
        f.tensors["input.input_ids"].clone(),
        f.tensors["output.logits"].clone(),
        kw,
    )
}

/// A fresh directory holding copies of `files` of checkpoint `case`.
fn copy_of(case: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(ckpt(case).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

const CASES: &[&str] = &[
    "lrnnx_lm_small",
    "lrnnx_lm_small_untied",
    "lrnnx_lm_small_kwargs",
];

#[test]
fn python_checkpoints_load_unchanged_and_convert_losslessly() {
    lrnnx::init();
    for case in CASES {
        let (ids, logits, kw) = expected(case);
        let model =
            LRNNLMHeadModel::from_pretrained(ckpt(case), kw.as_ref(), &Device::Cpu).unwrap();
        let ours = forward(&model, &ids);
        assert_eq!(ours.dims(), logits.dims(), "{case}: padded vocabulary kept");
        assert!(rel_err(&ours, &logits) < 1e-4, "{case}");
        // Convert: our layout, every default filled in; no kwargs needed to reload.
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let back = LRNNLMHeadModel::from_pretrained(out.path(), None, &Device::Cpu).unwrap();
        assert_eq!(rel_err(&forward(&back, &ids), &ours), 0.0, "{case}");
        // Our model.safetensors has exactly the key set and shapes of lrnnx's state dict.
        let theirs =
            lrnnx::pytorch::read_state_dict(&ckpt(case).join("pytorch_model.bin"), &Device::Cpu)
                .unwrap();
        let mine = lrnnx::io::read_safetensors(&out.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        let shapes =
            |m: &std::collections::HashMap<String, Tensor>| -> BTreeMap<String, Vec<usize>> {
                m.iter()
                    .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                    .collect()
            };
        assert_eq!(shapes(&mine), shapes(&theirs), "{case}");
        // Complex parameters are complex64 there, as lrnnx's state dict has them.
        let header = safetensors_header(&out.path().join("model.safetensors"));
        for (key, t) in &theirs {
            let entry = &header[key.as_str()];
            let dims: Vec<usize> = t.dims().to_vec();
            if key.ends_with("mixer.A") && model.complex_keys().contains(key) {
                assert_eq!(entry["dtype"], "C64", "{case}: {key}");
                assert_eq!(
                    entry["shape"],
                    serde_json::json!(dims[..dims.len() - 1]),
                    "{case}: {key}"
                );
            } else {
                assert_eq!(entry["dtype"], "F32", "{case}: {key}");
            }
        }
        if case.contains("kwargs") {
            assert!(
                model.complex_keys().iter().any(|k| k.ends_with("mixer.A")),
                "{case}: Centaurus' A is complex"
            );
        }
        // And our pytorch_model.bin writer hands the same back.
        let bin = out.path().join("pytorch_model.bin");
        lrnnx::pytorch::write_state_dict(&bin, &model.state_dict()).unwrap();
        let round = lrnnx::pytorch::read_state_dict(&bin, &Device::Cpu).unwrap();
        assert_eq!(
            shapes(&round).keys().collect::<BTreeSet<_>>(),
            shapes(&theirs).keys().collect::<BTreeSet<_>>()
        );
    }
}

/// The JSON header of a safetensors file: name -> {dtype, shape, data_offsets}.
fn safetensors_header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

#[test]
fn safetensors_is_preferred_when_both_exist() {
    lrnnx::init();
    let (ids, _, _) = expected("lrnnx_lm_small");
    let dir = copy_of("lrnnx_lm_small", &["config.json", "pytorch_model.bin"]);
    let model = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    // A safetensors file with every weight scaled: if it is read, logits change.
    let scaled: BTreeMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::F32 {
                (t * 1.5).unwrap()
            } else {
                t
            };
            (k, t)
        })
        .collect();
    lrnnx::io::write_safetensors(&dir.path().join("model.safetensors"), &scaled, None).unwrap();
    let preferred = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert!(rel_err(&forward(&model, &ids), &forward(&preferred, &ids)) > 1e-3);
}

mod bad_input {
    use super::*;

    fn copy_with(case: &str, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> tempfile::TempDir {
        let dir = copy_of(case, &["config.json"]);
        let mut sd: BTreeMap<String, Tensor> =
            lrnnx::pytorch::read_state_dict(&ckpt(case).join("pytorch_model.bin"), &Device::Cpu)
                .unwrap()
                .into_iter()
                .collect();
        f(&mut sd);
        lrnnx::pytorch::write_state_dict(&dir.path().join("pytorch_model.bin"), &sd).unwrap();
        dir
    }

    #[test]
    fn missing_tensor_names_key_and_file() {
        let dir = copy_with("lrnnx_lm_small", |sd| {
            sd.remove("backbone.layers.1.mixer.x_proj.weight");
        });
        let e = load_err(dir.path());
        assert_mentions(
            &e,
            &["backbone.layers.1.mixer.x_proj.weight", "pytorch_model.bin"],
        );
    }

    #[test]
    fn wrong_shape_names_key_and_both_shapes() {
        let dir = copy_with("lrnnx_lm_small", |sd| {
            sd.insert(
                "backbone.layers.0.mixer.B_re".into(),
                Tensor::zeros((8, 31), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let e = load_err(dir.path());
        assert_mentions(&e, &["backbone.layers.0.mixer.B_re", "[8, 31]", "[8, 32]"]);
    }

    #[test]
    fn truncated_zip_names_the_file() {
        let dir = copy_of("lrnnx_lm_small", &["config.json"]);
        let bytes = std::fs::read(ckpt("lrnnx_lm_small").join("pytorch_model.bin")).unwrap();
        std::fs::write(
            dir.path().join("pytorch_model.bin"),
            &bytes[..bytes.len() - 100],
        )
        .unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["pytorch_model.bin", "PyTorch"]);
    }

    #[test]
    fn no_weights_at_all() {
        let dir = copy_of("lrnnx_lm_small", &["config.json"]);
        let e = load_err(dir.path());
        assert_mentions(&e, &["model.safetensors", "pytorch_model.bin"]);
    }

    #[test]
    fn unknown_mixer_in_config_lists_registered_and_mentions_plugins() {
        let dir = copy_of("lrnnx_lm_small", &["pytorch_model.bin"]);
        let cfg = std::fs::read_to_string(ckpt("lrnnx_lm_small").join("config.json"))
            .unwrap()
            .replace("\"S7\"", "\"S8\"");
        std::fs::write(dir.path().join("config.json"), cfg).unwrap();
        let e = load_err(dir.path());
        assert_mentions(&e, &["`S8`", "Mamba", "plugin"]);
    }

    #[test]
    fn kwargs_needed_but_missing_is_a_clear_error() {
        // lrnnx does not save mixer kwargs; S5 has no default discretization.
        let e = load_err(&ckpt("lrnnx_lm_small_kwargs"));
        assert_mentions(&e, &["S5", "discretization"]);
    }
}
