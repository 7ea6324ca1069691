//! mLSTM layers inside the language model: forward, prefill + step, save and load.

use candle_core::{Device, Tensor};
use lrnnx_framework::{LRNNLMHeadModel, LmConfig, LmForwardOpts};
use lrnnx_testing::{assert_lm_decoding_matches_forward, max_err, vec1};

#[test]
fn lm_with_mlstm_layers_decodes_as_it_forwards_and_round_trips() {
    // Make sure this crate is linked (its registration is what is tested).
    assert_eq!(lrnnx_mlstm::link(), ["mLSTM"]);
    let mut cfg = LmConfig::new(16, 8, 50, &["mLSTM", "mLSTM"]);
    cfg.mixer_kwargs = serde_json::from_str(
        r#"{"mLSTM": {"num_heads": 2, "chunk_size": 4, "round_proj_up_to_multiple_of": 8}}"#,
    )
    .unwrap();
    let model = LRNNLMHeadModel::init(cfg, 3, &Device::Cpu).unwrap();
    let ids = Tensor::new(
        &[
            [1u32, 5, 9, 2, 7, 3, 3, 8, 4, 1, 0],
            [4, 4, 2, 9, 1, 6, 2, 5, 7, 3, 8],
        ],
        &Device::Cpu,
    )
    .unwrap();
    // A prefill of 6 tokens, then steps.
    assert_lm_decoding_matches_forward(&model, &ids, 6, 1e-4);
    let logits = model.forward(&ids, &LmForwardOpts::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("lrnnx-mlstm-lm-{}", std::process::id()));
    model.save_pretrained(&dir).unwrap();
    let again = LRNNLMHeadModel::from_pretrained(&dir, None, &Device::Cpu).unwrap();
    let again_logits = again.forward(&ids, &LmForwardOpts::default()).unwrap();
    assert_eq!(max_err(&vec1(&again_logits), &vec1(&logits)), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
