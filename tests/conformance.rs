//! lrnnx reference cases (tests/data/lrnnx) through the conformance runner.

use std::path::Path;

use lrnnx::conformance::{run_dir, summary, Outcome};

fn data() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lrnnx"))
}

#[test]
fn every_runnable_case_passes_and_required_ones_run() {
    lrnnx::init();
    let results = run_dir(data()).unwrap();
    for r in &results {
        println!("{}", r.line());
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .map(|r| r.line())
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    for required in [
        "lru",
        "lru_rmin",
        "lru_lengths",
        "mha",
        "mha_gqa",
        "lm_lru_attn",
    ] {
        let r = results
            .iter()
            .find(|r| r.name == required)
            .unwrap_or_else(|| panic!("case {required} missing"));
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.line());
    }
    // The LM case compares our step with our forward, as well as with lrnnx's logits.
    let lm = results.iter().find(|r| r.name == "lm_lru_attn").unwrap();
    assert!(lm
        .outputs
        .iter()
        .any(|(o, _, rel)| o == "step=forward" && *rel <= 1e-4));
    let (pass, fail, skip) = summary(&results);
    assert_eq!(pass + fail + skip, results.len());
}

#[test]
fn a_wrong_reference_fails() {
    // Copy a case and corrupt its reference output: the runner must say FAIL.
    lrnnx::init();
    let dir = tempfile::tempdir().unwrap();
    let src = data().join("lru.safetensors");
    let file = lrnnx::io::read_safetensors_file(&src, &candle_core::Device::Cpu).unwrap();
    let mut tensors: std::collections::BTreeMap<String, candle_core::Tensor> =
        file.tensors.into_iter().collect();
    let y = tensors["output.y"].clone();
    tensors.insert("output.y".into(), (y + 1e-2).unwrap());
    lrnnx::io::write_safetensors(
        &dir.path().join("lru_bad.safetensors"),
        &tensors,
        Some(file.metadata),
    )
    .unwrap();
    let results = run_dir(dir.path()).unwrap();
    assert!(
        matches!(results[0].outcome, Outcome::Fail(_)),
        "{}",
        results[0].line()
    );
}
