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

/// `demo`'s output without its timings: the model line, the logits' shape
/// and the generated ids.
fn demo_result(args: &[&str]) -> String {
    let (ok, out) = lrnnx(&[&["demo", "--d-model", "32"], args].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains("tokens/s") && out.contains("generate"),
        "{out}"
    );
    out.lines()
        .map(|l| match (l.find(" in "), l.find("; ids")) {
            (_, Some(ids)) => &l[ids..],
            (Some(t), None) => &l[..t],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn demo_runs_small_with_old_and_canonical_flags_alike() {
    let old = demo_result(&["--batch", "2", "--seqlen", "16", "--tokens", "4"]);
    let new = demo_result(&["--batch-size", "2", "--seq-len", "16", "--max-tokens", "4"]);
    assert_eq!(old, new);
    assert!(
        new.contains("B=2 L=16: logits [2, 16, 256]") && new.contains("; ids ["),
        "{new}"
    );
    // Four ids generated: three commas in the list.
    let ids = new.lines().last().unwrap();
    assert_eq!(ids.matches(',').count(), 3, "{ids}");
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

/// A small model of `vocab` tokens saved into a fresh directory.
fn saved_model(vocab: usize) -> (tempfile::TempDir, usize) {
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let mut c = lrnnx::LmConfig::new(16, 8, vocab, &["LRU", "attn"]);
    c.mixer_kwargs = serde_json::from_str(r#"{"attn": {"num_heads": 2, "causal": true}}"#).unwrap();
    let m = lrnnx::LRNNLMHeadModel::init(c, 0, &candle_core::Device::Cpu).unwrap();
    m.save_pretrained(dir.path()).unwrap();
    (dir, m.num_params())
}

#[test]
fn info_json_is_one_document_with_the_text_output_facts() {
    let (dir, params) = saved_model(30);
    let d = dir.path().to_str().unwrap();
    let ran = common::cli::run_lrnnx(&["info", d, "--json"]);
    assert!(ran.ok, "{}", ran.stderr);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", ran.stdout));
    assert_eq!(v["model"], d);
    assert_eq!(v["parameters"], params);
    assert_eq!(v["d_model"], 16);
    assert_eq!(v["d_state"], 8);
    assert_eq!(v["n_layer"], 2);
    assert_eq!(v["vocab_size"], 30);
    assert_eq!(v["dtypes"], serde_json::json!(["F32"]));
    for key in [
        "device",
        "padded_vocab_size",
        "d_intermediate",
        "norm",
        "norm_epsilon",
        "tie_embeddings",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0]["mixer"], "LRU");
    assert_eq!(layers[1]["mixer"], "attn");
    assert_eq!(layers[1]["index"], 1);
    assert_eq!(layers[1]["config"]["num_heads"], 2);
    // The model directory as a flag: the same document, and the same text.
    let flag = common::cli::run_lrnnx(&["info", "--model", d, "--json"]);
    assert!(flag.ok, "{}", flag.stderr);
    assert_eq!(flag.stdout, ran.stdout);
    assert_eq!(lrnnx(&["info", "--model", d]), lrnnx(&["info", d]));
}

#[test]
fn mixers_json_lists_every_registered_mixer() {
    lrnnx::init();
    let ran = common::cli::run_lrnnx(&["mixers", "--json"]);
    assert!(ran.ok, "{}", ran.stderr);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", ran.stdout));
    let listed = v["mixers"].as_array().unwrap();
    let all = lrnnx::Registry::all();
    assert!(all.len() >= 11, "{} mixers registered", all.len());
    assert_eq!(listed.len(), all.len());
    for r in &all {
        let e = listed
            .iter()
            .find(|e| e["name"] == r.spec.name)
            .unwrap_or_else(|| panic!("{} not listed: {v}", r.spec.name));
        assert_eq!(e["family"], r.spec.family.to_string());
        assert_eq!(e["source"], r.spec.source);
        assert_eq!(e["summary"], r.spec.summary);
        assert_eq!(e["aliases"], serde_json::json!(r.spec.aliases));
        assert!(e["plugin"].is_null(), "{e}");
    }
    let one = common::cli::run_lrnnx(&["mixers", "mamba", "--json"]);
    assert!(one.ok, "{}", one.stderr);
    let m: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(m["name"], "Mamba");
    assert_eq!(m["defaults"]["d_conv"], 4);
    assert!(m["defaults"].get("d_state").is_none(), "{m}");
}

/// The ids `generate` samples from the model in `dir` after `prompt` at
/// temperature 1, no top-k or top-p, seed 3 (what [`generated`] asks the binary for).
fn expected_ids(dir: &std::path::Path, prompt: &[u32], n: usize) -> Vec<u32> {
    lrnnx::init();
    let m = lrnnx::LRNNLMHeadModel::from_pretrained(dir, None, &candle_core::Device::Cpu).unwrap();
    let opts = lrnnx::GenerateOpts {
        max_new_tokens: n,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed: 3,
        vocab_limit: Some(m.config().vocab_size),
    };
    lrnnx::generate(&m, prompt, &opts, |_| {}).unwrap()
}

/// `lrnnx generate` of `n` tokens after `prompt` with `model_args` naming the model; its stdout.
fn generated(model_args: &[&str], prompt: &str, n: usize) -> String {
    let n = n.to_string();
    let ran = common::cli::run_lrnnx(
        &[
            &["generate"],
            model_args,
            &["--prompt", prompt, "--max-tokens", &n, "--temperature", "1"],
            &["--top-k", "0", "--top-p", "1", "--seed", "3"],
        ]
        .concat(),
    );
    assert!(ran.ok, "{}", ran.stderr);
    assert!(!ran.stderr.contains("warning"), "{}", ran.stderr);
    ran.stdout
}

#[test]
fn generate_streams_the_whole_decode_with_byte_tokens() {
    use lrnnx::train::{ByteTokenizer, Tokenizer};
    let (dir, _) = saved_model(256);
    let d = dir.path().to_str().unwrap();
    let prompt = "Grüße, ";
    let ids = expected_ids(dir.path(), &ByteTokenizer.encode(prompt).unwrap(), 80);
    assert_eq!(ids.len(), 80);
    let whole = ByteTokenizer.decode(&ids).unwrap();
    let out = generated(&[d], prompt, 80);
    assert_eq!(out, format!("{prompt}{whole}\n"));
    // Random bytes: some multi-byte and invalid sequences were streamed.
    assert!(!whole.is_ascii(), "{whole:?}");
    // --model and --tokens are the same as MODEL and --max-tokens.
    let n = "80".to_string();
    let old = common::cli::run_lrnnx(&[
        "generate",
        "--model",
        d,
        "--prompt",
        prompt,
        "--tokens",
        &n,
        "--temperature",
        "1",
        "--top-k",
        "0",
        "--top-p",
        "1",
        "--seed",
        "3",
    ]);
    assert!(old.ok, "{}", old.stderr);
    assert_eq!(old.stdout, out);
}

/// A WordPiece `tokenizer.json`: words spaced, `##` pieces glued on, no
/// space before punctuation, so a token's text depends on its neighbours.
const WORDPIECE: &str = r###"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
    "max_input_chars_per_word": 100,
    "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "the": 3, "cat": 4, "##s": 5, "##ing": 6,
      ".": 7, ",": 8, "!": 9, "?": 10, "run": 11, "é": 12, "##ü": 13, "gr": 14, "##üß": 15,
      "##e": 16, "a": 17, "sat": 18, "on": 19, "mat": 20, "##ed": 21, "dog": 22, "big": 23}}
}"###;

#[test]
fn generate_streams_the_whole_decode_with_a_tokenizer_json() {
    let (dir, _) = saved_model(24);
    std::fs::write(dir.path().join("tokenizer.json"), WORDPIECE).unwrap();
    let tok: tokenizers::Tokenizer = WORDPIECE.parse().unwrap();
    let prompt = "hello world";
    let prompt_ids = tok.encode(prompt, false).unwrap().get_ids().to_vec();
    assert_eq!(prompt_ids, [1, 2]);
    let ids = expected_ids(dir.path(), &prompt_ids, 60);
    let whole = tok.decode(&ids, false).unwrap();
    // Token by token the text would differ (spaces before `##` pieces and
    // punctuation): what is printed must be the whole decode.
    let piecewise: String = ids
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(piecewise, whole);
    let d = dir.path().to_str().unwrap();
    assert_eq!(
        generated(&["--model", d], prompt, 60),
        format!("{prompt}{whole}\n")
    );
}
