//! Mamba checkpoints of Hugging Face `transformers` and `mamba_ssm`
//! (tests/data/foreign/, made by tools/make_foreign_fixtures.py) load through
//! `lm::foreign` and give the logits the Python libraries computed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::assert_mentions;
use common::lm::{abs_max, forward, stepped_logits};
use lrnnx::lm::foreign::{detect, read_dir, to_lm, ForeignKind};
use lrnnx::LRNNLMHeadModel;
use serde_json::{json, Value};

/// Each fixture: the library that wrote it, and what it exercises.
const CASES: &[(&str, ForeignKind)] = &[
    // transformers, tied head (stored once), residual in f32, dt_rank auto.
    ("hf_tied", ForeignKind::HfMamba),
    // transformers, untied, in/out biases, no conv bias, conv 3, expand 3, rank 5.
    ("hf_untied_bias", ForeignKind::HfMamba),
    // mamba_ssm, RMSNorm, vocabulary 100 padded to 104, tied (stored twice).
    ("ssm_rms", ForeignKind::MambaSsm),
    // mamba_ssm, LayerNorm, gated MLP, untied, biases, conv 2, expand 1.5, rank 3.
    ("ssm_ln_mlp", ForeignKind::MambaSsm),
];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/foreign")
        .join(case)
}

fn model_dir(case: &str) -> PathBuf {
    case_dir(case).join("model")
}

/// `(input_ids, logits)` the Python library computed.
fn expected(case: &str) -> (Tensor, Tensor) {
    let t = lrnnx::io::read_safetensors(&case_dir(case).join("expected.safetensors"), &Device::Cpu)
        .unwrap();
    (t["input.input_ids"].clone(), t["output.logits"].clone())
}

fn config_of(case: &str) -> Value {
    lrnnx::io::read_json(&model_dir(case).join("config.json")).unwrap()
}

/// `max |a - b| / max |b|`, in f64 (stricter than `rel_err`: no floor of 1).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.to_dtype(DType::F64).unwrap(),
        b.to_dtype(DType::F64).unwrap(),
    );
    abs_max::<f64>(&(&a - &b).unwrap()) / abs_max::<f64>(&b)
}

fn load(case: &str) -> LRNNLMHeadModel {
    lrnnx::init();
    let (config, tensors) = read_dir(&model_dir(case), &Device::Cpu)
        .unwrap()
        .expect("a foreign config");
    LRNNLMHeadModel::from_tensors(config, tensors, &Device::Cpu).unwrap()
}

#[test]
fn from_pretrained_loads_each_foreign_directory_as_it_is() {
    lrnnx::init();
    for &(case, _) in CASES {
        let m = LRNNLMHeadModel::from_pretrained(model_dir(case), None, &Device::Cpu).unwrap();
        let (ids, want) = expected(case);
        let e = rel(&forward(&m, &ids), &want);
        assert!(e < 1e-4, "{case}: from_pretrained logits differ by {e:e}");
    }
}

#[test]
fn each_fixture_is_detected_as_its_library() {
    for &(case, kind) in CASES {
        assert_eq!(detect(&config_of(case)), Some(kind), "{case}");
    }
}

#[test]
fn forward_matches_the_python_logits() {
    for &(case, _) in CASES {
        let m = load(case);
        let (ids, want) = expected(case);
        let got = forward(&m, &ids);
        assert_eq!(got.dims(), want.dims(), "{case}");
        let e = rel(&got, &want);
        assert!(e < 1e-4, "{case}: logits differ by {e:e} (relative)");
        // A single position (L = 1) is the first column of the full forward.
        let first = forward(&m, &ids.narrow(1, 0, 1).unwrap());
        let e = rel(&first, &want.narrow(1, 0, 1).unwrap());
        assert!(e < 1e-4, "{case}: L = 1 logits differ by {e:e}");
    }
}

#[test]
fn stepping_matches_the_python_logits() {
    for &(case, _) in CASES {
        let m = load(case);
        let (ids, want) = expected(case);
        let e = rel(&stepped_logits(&m, &ids), &want);
        assert!(e < 1e-4, "{case}: stepped logits differ by {e:e}");
    }
}

#[test]
fn detect_and_to_lm_map_configs_and_names() {
    // The pieces by hand: weights read with the framework's readers.
    let st = lrnnx::io::read_safetensors(
        &model_dir("hf_tied").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(st.contains_key("backbone.embeddings.weight") && !st.contains_key("lm_head.weight"));
    let (c, t) = to_lm(ForeignKind::HfMamba, &config_of("hf_tied"), st).unwrap();
    assert_eq!(
        (c.d_model, c.d_state, c.n_layer, c.vocab_size),
        (24, 8, 2, 100)
    );
    assert_eq!(c.mixer_types, vec!["Mamba", "Mamba"]);
    assert_eq!(c.pad_vocab_size_multiple, 1);
    assert!(c.tie_embeddings && c.residual_in_fp32 && c.rms_norm);
    assert_eq!(c.mixer_kwargs["Mamba"]["dt_rank"], 2);
    assert!(t.contains_key("backbone.embedding.weight"));
    assert!(!t.contains_key("backbone.embeddings.weight"));
    let dt = t["backbone.layers.1.mixer.dt_proj.bias"]
        .to_vec1::<f32>()
        .unwrap();
    let dta = t["backbone.layers.1.mixer.dtA_proj.bias"]
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(dt, dta);

    let pt = lrnnx::pytorch::read_state_dict(
        &model_dir("ssm_ln_mlp").join("pytorch_model.bin"),
        &Device::Cpu,
    )
    .unwrap();
    let (c, t) = to_lm(ForeignKind::MambaSsm, &config_of("ssm_ln_mlp"), pt).unwrap();
    assert_eq!((c.d_intermediate, c.padded_vocab_size()), (40, 96));
    assert!(!c.rms_norm && !c.tie_embeddings && !c.residual_in_fp32);
    assert_eq!(c.mixer_kwargs["Mamba"]["expand"], 1.5);
    assert!(t.contains_key("backbone.layers.0.mixer.dtA_proj.weight"));
}

#[test]
fn our_own_config_is_not_foreign() {
    lrnnx::init();
    let m = load("hf_tied");
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    assert_eq!(detect(&config_of_dir(dir.path())), None);
    assert!(read_dir(dir.path(), &Device::Cpu).unwrap().is_none());
    // Saved in our format it reloads to the same logits.
    let back = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    let (ids, want) = expected("hf_tied");
    assert!(rel(&forward(&back, &ids), &want) < 1e-4);
}

fn config_of_dir(dir: &Path) -> Value {
    lrnnx::io::read_json(&dir.join("config.json")).unwrap()
}

/// The error of mapping `case`'s config after `edit`, with its own tensors.
fn mapping_err(case: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut cfg = config_of(case);
    edit(cfg.as_object_mut().unwrap());
    let kind = detect(&cfg).unwrap();
    to_lm(kind, &cfg, HashMap::new()).unwrap_err().to_string()
}

#[test]
fn unrepresentable_options_are_refused_by_name() {
    let e = mapping_err("hf_tied", |c| {
        c.insert("model_type".into(), json!("mamba2"));
    });
    assert_mentions(&e, &["model_type", "mamba2"]);
    let e = mapping_err("hf_tied", |c| {
        c.insert("hidden_act".into(), json!("gelu"));
    });
    assert_mentions(&e, &["hidden_act", "gelu", "silu"]);
    let e = mapping_err("hf_tied", |c| {
        c.insert("intermediate_size".into(), json!(50));
    });
    assert_mentions(&e, &["intermediate_size", "50", "48"]);
    let e = mapping_err("hf_tied", |c| {
        c.insert("time_step_rank".into(), json!("big"));
    });
    assert_mentions(&e, &["time_step_rank", "big"]);
    let e = mapping_err("hf_tied", |c| {
        c.insert("quantization_config".into(), json!({"bits": 4}));
    });
    assert_mentions(&e, &["quantization_config", "bits"]);
    let e = mapping_err("ssm_rms", |c| {
        c.insert("ssm_cfg".into(), json!({"layer": "Mamba2"}));
    });
    assert_mentions(&e, &["ssm_cfg.layer", "Mamba2"]);
    let e = mapping_err("ssm_rms", |c| {
        c.insert("ssm_cfg".into(), json!({"d_state": 16, "headdim": 64}));
    });
    assert_mentions(&e, &["ssm_cfg.headdim", "64"]);
    let e = mapping_err("ssm_rms", |c| {
        c.insert("attn_layer_idx".into(), json!([1]));
    });
    assert_mentions(&e, &["attn_layer_idx", "[1]"]);
    // A hostile layer count is refused with the bound, before any allocation.
    let e = mapping_err("ssm_rms", |c| {
        c.insert("n_layer".into(), json!(1u64 << 50));
    });
    assert_mentions(&e, &["n_layer", "4096"]);
    let e = mapping_err("hf_tied", |c| {
        c.insert("num_hidden_layers".into(), json!(1u64 << 50));
    });
    assert_mentions(&e, &["num_hidden_layers", "4096"]);
    let e = mapping_err("ssm_rms", |c| {
        c.insert("d_model".into(), json!("wide"));
    });
    assert_mentions(&e, &["d_model", "wide"]);
}

#[test]
fn unknown_keys_are_ignored() {
    lrnnx::init();
    for &(case, kind) in CASES {
        let mut cfg = config_of(case);
        cfg.as_object_mut()
            .unwrap()
            .insert("a_key_from_a_later_version".into(), json!({"x": 1}));
        let dir = model_dir(case);
        let tensors = match kind {
            ForeignKind::HfMamba => {
                lrnnx::io::read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap()
            }
            ForeignKind::MambaSsm => {
                lrnnx::pytorch::read_state_dict(&dir.join("pytorch_model.bin"), &Device::Cpu)
                    .unwrap()
            }
        };
        let (c, t) = to_lm(kind, &cfg, tensors).unwrap();
        let m = LRNNLMHeadModel::from_tensors(c, t, &Device::Cpu).unwrap();
        let (ids, want) = expected(case);
        assert!(rel(&forward(&m, &ids), &want) < 1e-4, "{case}");
    }
}

#[test]
fn a_missing_or_extra_tensor_is_named() {
    lrnnx::init();
    let load_with = |edit: &dyn Fn(&mut HashMap<String, Tensor>)| {
        let (c, mut t) = read_dir(&model_dir("hf_untied_bias"), &Device::Cpu)
            .unwrap()
            .unwrap();
        edit(&mut t);
        LRNNLMHeadModel::from_tensors(c, t, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let e = load_with(&|t| {
        t.remove("lm_head.weight");
    });
    assert_mentions(&e, &["lm_head.weight"]);
    let e = load_with(&|t| {
        let x = t["backbone.norm_f.weight"].clone();
        t.insert("backbone.layers.0.mixer.extra".into(), x);
    });
    assert_mentions(&e, &["backbone.layers.0.mixer.extra"]);
}

#[test]
fn lrnnx_convert_writes_a_foreign_directory_in_our_format() {
    lrnnx::init();
    for &(case, _) in CASES {
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_lrnnx"))
            .arg("convert")
            .arg(model_dir(case))
            .arg(out.path())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{case}: convert failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        assert!(out.path().join("model.safetensors").is_file(), "{case}");
        assert_eq!(detect(&config_of_dir(out.path())), None, "{case}: ours now");
        let m = LRNNLMHeadModel::from_pretrained(out.path(), None, &Device::Cpu).unwrap();
        let (ids, want) = expected(case);
        let e = rel(&forward(&m, &ids), &want);
        assert!(e < 1e-4, "{case}: converted logits differ by {e:e}");
    }
}
