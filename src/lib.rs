//! # lrnnx
//!
//! Linear recurrent sequence models in Rust: LRU, S4, S4D, S5, Centaurus,
//! Mamba, RG-LRU, S7, attention and mLSTM layers behind one [`Mixer`] trait,
//! assembled by name into language models, on CPU or (feature `cuda`) NVIDIA
//! GPUs.
//!
//! This facade re-exports the framework and links every built-in mixer crate
//! so that their registrations reach the [`Registry`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lrnnx::{LmConfig, LmForwardOpts, LRNNLMHeadModel};
//! # fn main() -> lrnnx::Result<()> {
//! lrnnx::init();
//! let mut cfg = LmConfig::new(32, 16, 256, &["LRU", "attn"]);
//! cfg.mixer_kwargs = serde_json::from_str(r#"{"attn": {"num_heads": 4, "causal": true}}"#).unwrap();
//! let model = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)?;
//! let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
//! let logits = model.forward(&ids, &LmForwardOpts::default())?;
//! assert_eq!(logits.dims(), &[1, 3, 256]);
//! # Ok(()) }
//! ```

pub use lrnnx_framework::*;

#[cfg(feature = "tokenizers")]
pub mod tokenizer;
#[cfg(feature = "tokenizers")]
pub use tokenizer::HfTokenizer;

// `mixers` (the built-in crates, re-exported) and `builtin_mixers()`, from
// the mixer crates under `mixers/` this package depends on (see build.rs).
include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// Makes sure the built-in mixers are registered. Cheap; call it once at start-up.
pub fn init() {
    let _ = std::hint::black_box(builtin_mixers());
}
