//! The `lrnnx` binary end to end.

mod common;

/// Runs `lrnnx args…`; gives the exit status and stdout followed by stderr.
fn lrnnx(args: &[&str]) -> (bool, String) {
    let ran = common::cli::run_lrnnx(args);
    (ran.ok, ran.text())
}

#[test]
fn mixers_lists_the_builtins() {
    let (ok, out) = lrnnx(&["mixers"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("LRU")
            && out.contains("attn")
            && out.contains("lrnnx-lru")
            && out.contains("LTI"),
        "{out}"
    );
}

#[test]
fn conformance_prints_a_line_per_case_and_a_summary() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lrnnx");
    let (ok, out) = lrnnx(&["conformance", dir]);
    assert!(ok, "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.ends_with("skipped") && last.contains("passed") && last.contains(" 0 failed"),
        "{last}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("lm_lru_attn") && l.ends_with("pass")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("mamba_zoh") && l.contains("skipped"))
            || out.contains("mamba_zoh"),
        "{out}"
    );
}

#[test]
fn conformance_exits_non_zero_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let (ok, out) = lrnnx(&["conformance", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("0 passed, 1 failed, 0 skipped"), "{out}");
}

#[test]
fn info_describes_a_saved_model() {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let mut c = lrnnx::LmConfig::new(16, 8, 30, &["LRU", "attn"]);
    c.mixer_kwargs = serde_json::from_str(r#"{"attn": {"num_heads": 2, "causal": true}}"#).unwrap();
    let m = lrnnx::LRNNLMHeadModel::init(c, 0, &candle_core::Device::Cpu).unwrap();
    m.save_pretrained(dir.path()).unwrap();
    let (ok, out) = lrnnx(&["info", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&m.num_params().to_string())
            && out.contains("F32")
            && out.contains("layer 1   attn"),
        "{out}"
    );
    let (ok, out) = lrnnx(&["info", "/nonexistent/model"]);
    assert!(
        !ok && out.contains("/nonexistent/model/config.json"),
        "{out}"
    );
}

#[test]
fn default_job_runs_small() {
    let (ok, out) = lrnnx(&[
        "demo",
        "--d-model",
        "32",
        "--batch",
        "2",
        "--seqlen",
        "16",
        "--tokens",
        "4",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("tokens/s") && out.contains("generate"),
        "{out}"
    );
}

#[test]
fn mixers_name_shows_the_default_kwargs() {
    let (ok, out) = lrnnx(&["mixers", "mamba"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("name:     Mamba")
            && out.contains("\"d_conv\": 4")
            && !out.contains("d_state"),
        "{out}"
    );
    let (ok, out) = lrnnx(&["mixers", "LRUU"]);
    assert!(
        !ok && out.contains("unknown mixer `LRUU`") && out.contains("LRU"),
        "{out}"
    );
}

#[test]
fn convert_keeps_the_tokenizer() {
    lrnnx::init();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let cfg = lrnnx::LmConfig::new(8, 4, 32, &["LRU"]);
    lrnnx::LRNNLMHeadModel::init(cfg, 0, &candle_core::Device::Cpu)
        .unwrap()
        .save_pretrained(src.path())
        .unwrap();
    let tok = r#"{"version": "1.0", "note": "stands in for a real tokenizer"}"#;
    std::fs::write(src.path().join("tokenizer.json"), tok).unwrap();
    let out = dst.path().join("converted");
    let (ok, text) = lrnnx(&[
        "convert",
        src.path().to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        tok
    );
}
