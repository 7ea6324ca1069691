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

/// The built-in mixer crates.
pub mod mixers {
    pub use lrnnx_attn as attn;
    pub use lrnnx_centaurus as centaurus;
    pub use lrnnx_lru as lru;
    pub use lrnnx_mamba as mamba;
    pub use lrnnx_mlstm as mlstm;
    pub use lrnnx_rglru as rglru;
    pub use lrnnx_s4 as s4;
    pub use lrnnx_s4::s4d;
    pub use lrnnx_s5 as s5;
    pub use lrnnx_s7 as s7;
}

/// Names of the built-in mixers; calling it also guarantees that the linker
/// keeps every built-in crate (and so its `inventory` registration).
pub fn builtin_mixers() -> Vec<&'static str> {
    vec![
        lrnnx_lru::link(),
        lrnnx_s4::link(),
        lrnnx_s4::link_s4d(),
        lrnnx_s5::link(),
        lrnnx_centaurus::link(),
        lrnnx_mamba::link(),
        lrnnx_rglru::link(),
        lrnnx_s7::link(),
        lrnnx_mlstm::link(),
        lrnnx_attn::link(),
    ]
}

/// Makes sure the built-in mixers are registered. Cheap; call it once at start-up.
pub fn init() {
    let _ = std::hint::black_box(builtin_mixers());
}
