//! `generate` prints every token it generated, also the ones the decoder
//! held back at the end (an unfinished multi-byte character).

use std::collections::BTreeMap;
use std::process::Command;

use candle_core::{Device, Tensor};
use lrnnx::{LRNNLMHeadModel, LmConfig};

#[test]
fn a_trailing_partial_character_is_printed() {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LmConfig::new(8, 4, 256, &["LRU"]);
    cfg.rms_norm = false;
    cfg.tie_embeddings = false;
    LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .unwrap()
        .save_pretrained(dir.path())
        .unwrap();
    // norm_f outputs its bias (weight 0, bias 1) and the head scores only
    // byte 0xE2, the first byte of a three-byte UTF-8 character: greedy
    // decoding then always ends on an unfinished character.
    let path = dir.path().join("model.safetensors");
    let mut t: BTreeMap<String, Tensor> = lrnnx::io::read_safetensors(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let d = 8;
    t.insert(
        "backbone.norm_f.weight".into(),
        Tensor::zeros(d, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "backbone.norm_f.bias".into(),
        Tensor::ones(d, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let vocab = t["lm_head.weight"].dim(0).unwrap();
    let mut head = vec![0f32; vocab * d];
    head[0xE2 * d..0xE3 * d].fill(1.0);
    t.insert(
        "lm_head.weight".into(),
        Tensor::from_vec(head, (vocab, d), &Device::Cpu).unwrap(),
    );
    lrnnx::io::write_safetensors(&path, &t, None).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lrnnx"))
        .args([
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "ab",
        ])
        .args(["--max-tokens", "1", "--temperature", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim_end(), "ab\u{fffd}", "{stdout:?}");
}
