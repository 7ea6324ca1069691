//! # lrnnx-attn
//!
//! Causal multi-head softmax attention as lrnnx's `MHA` (a copy of
//! mamba_ssm's): fused `in_proj` to `[Q | K | V | mlp]`, grouped-query heads
//! (`num_heads_kv`), optional depthwise causal conv on `qkv`, optional rotary
//! embeddings (GPT-NeoX halves or GPT-J interleaved), optional gated MLP
//! branch, `out_proj`. Decoding keeps a KV cache, and unlike lrnnx (whose
//! decode without flash_attn lets a query see only key 0) `step` equals
//! `forward` position by position.
//!
//! Registered as `"attn"`.

mod attend;
mod cache;
mod config;
mod decode;
mod flash;
mod mha;
mod rotary;

pub use attend::SCORE_BUDGET;
pub use config::MhaConfig;
pub use flash::{flash_attention, MAX_HEAD_DIM};
pub use mha::{Mha, INITIAL_CACHE_POSITIONS};
pub use rotary::Rotary;

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "attn" {
        aliases: ["MHA", "mha", "attention"],
        family: Attention,
        summary: "Multi-head softmax attention: GQA, rotary, KV-cache decoding",
        config: MhaConfig,
        new: Mha::new,
        required: ["num_heads"],
    }
}
