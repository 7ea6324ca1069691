//! Training: every registered mixer learns; checkpoints reload and generate identically; bad checkpoints fail clearly.

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use lrnnx::train::{cross_entropy, AdamW, AdamWConfig, ByteTokenizer, TokenBatches, Tokenizer};
use lrnnx::{LRNNLMHeadModel, LmConfig, LmForwardOpts, Registry};

const TINY: &str = "In the beginning God created the heaven and the earth. And the earth was without form, and void; \
and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. \
And God said, Let there be light: and there was light. And God saw the light, that it was good.";

/// Kwargs a mixer needs to build in a (B, L, H) language model.
fn kwargs_for(name: &str) -> serde_json::Value {
    match name {
        "attn" => serde_json::json!({"num_heads": 2, "causal": true}),
        "S5" => serde_json::json!({"discretization": "zoh"}),
        "Centaurus" => serde_json::json!({"sub_state_dim": 2}),
        "S4" | "S4D" => serde_json::json!({"transposed": false}),
        "mLSTM" => serde_json::json!({"num_heads": 2}),
        _ => serde_json::json!({}),
    }
}

#[test]
fn every_registered_mixer_learns_and_every_parameter_moves() {
    lrnnx::init();
    let ids = ByteTokenizer.encode(TINY).unwrap();
    for entry in Registry::all() {
        let name = entry.spec.name;
        let mut cfg = LmConfig::new(16, 4, 256, &[name]);
        cfg.d_intermediate = 16;
        cfg.mixer_kwargs =
            serde_json::from_value(serde_json::json!({ name: kwargs_for(name) })).unwrap();
        let model = match LRNNLMHeadModel::init(cfg, 1, &Device::Cpu) {
            Ok(m) => m,
            Err(e) => panic!("{name}: {e}"),
        };
        let vars = model.store().vars();
        let initial: BTreeMap<String, Tensor> = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect();
        let mut opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: 1e-2,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut data = TokenBatches::new(ids.clone(), 24, 0.2, 0).unwrap();
        let (vx, vy) = data.train_batch(4, &Device::Cpu).unwrap();
        // Event timesteps reach the parameters only event mode uses (Mamba's dtA_proj.bias);
        // mixers without event mode ignore them.
        let opts = LmForwardOpts {
            integration_timesteps: Some(Tensor::rand(0.5f32, 1.5, (4, 24), &Device::Cpu).unwrap()),
            ..Default::default()
        };
        let eval = |m: &LRNNLMHeadModel| -> f32 {
            cross_entropy(&m.forward(&vx, &opts).unwrap(), &vy)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let before = eval(&model);
        for _ in 0..12 {
            let (x, y) = data.train_batch(4, &Device::Cpu).unwrap();
            let loss = cross_entropy(&model.forward(&x, &opts).unwrap(), &y).unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let after = eval(&model);
        assert!(after < before - 0.05, "{name}: loss {before} -> {after}");
        for (k, v) in &vars {
            let moved = common::lm::max_diff(v.as_tensor(), &initial[k]);
            // lrnnx keeps Mamba's dtA_proj.weight but never uses it (only its bias): exempt.
            if k.ends_with("dtA_proj.weight") {
                continue;
            }
            assert!(
                moved > 0.0,
                "{name}: parameter {k} never received a gradient"
            );
        }
    }
}

/// Runs `lrnnx args…`; gives the exit status, stdout and stderr.
fn lrnnx(args: &[&str]) -> (bool, String, String) {
    let ran = common::cli::run_lrnnx(args);
    (ran.ok, ran.stdout, ran.stderr)
}

#[test]
fn cli_checkpoints_reload_resume_and_generate_identically() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("tiny.txt");
    std::fs::write(&corpus, TINY.repeat(4)).unwrap();
    let out = dir.path().join("run");
    let (c, o) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let common = [
        "--corpus",
        c,
        "--d-model",
        "16",
        "--d-state",
        "4",
        "--d-intermediate",
        "16",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--save-every",
        "2",
        "--warmup",
        "1",
        "--mixer-kwargs",
        r#"{"attn": {"num_heads": 2, "causal": true}}"#,
        "--quiet",
        "--out",
        o,
    ];
    let (ok, stdout, stderr) = lrnnx(&[&["train", "--steps", "4"], &common[..]].concat());
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("validation loss") && stdout.contains("unigram entropy"),
        "{stdout}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let gen = [
        "generate",
        "--model",
        o,
        "--prompt",
        "And God",
        "--max-tokens",
        "12",
        "--seed",
        "7",
    ];
    let (ok1, a, e1) = lrnnx(&gen);
    let (ok2, b, _) = lrnnx(&gen);
    assert!(ok1 && ok2, "{e1}");
    assert_eq!(a, b, "same seed, same text");
    assert!(
        a.starts_with("And God") && e1.contains("tokens/s"),
        "{a} {e1}"
    );
    // Resume to 6 steps: trainer.json advances and the model still loads.
    let (ok, stdout, stderr) =
        lrnnx(&[&["train", "--steps", "6", "--resume", o], &common[..]].concat());
    assert!(ok, "{stdout}{stderr}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 6);
}

#[test]
fn corrupt_or_missing_checkpoint_files_fail_clearly() {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LmConfig::new(16, 4, 256, &["LRU"]);
    cfg.d_intermediate = 0;
    LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .unwrap()
        .save_pretrained(dir.path())
        .unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let (ok, _, err) = lrnnx(&["generate", "--model", d, "--max-tokens", "3"]);
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (ok, _, err) = lrnnx(&["generate", "--model", d, "--max-tokens", "3"]);
    assert!(!ok && err.contains("no weights"), "{err}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let (ok, _, err) = lrnnx(&["generate", "--model", d, "--max-tokens", "3"]);
    assert!(!ok && err.contains("config.json"), "{err}");
    let (ok, _, err) = lrnnx(&[
        "train", "--resume", d, "--steps", "1", "--quiet", "--out", d,
    ]);
    // Not a checkpoint set: its manifest is the first thing --resume checks.
    assert!(
        !ok && err.contains("checkpoint.json") && err.contains("not a complete checkpoint set"),
        "{err}"
    );
}
