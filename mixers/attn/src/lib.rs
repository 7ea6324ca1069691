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

mod config;
mod decode;
mod mha;
mod rotary;

pub use config::MhaConfig;
pub use mha::Mha;
pub use rotary::Rotary;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "attn";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: MhaConfig = args.parse(NAME, &[])?;
    let m = Mha::new(args.d_model, cfg, &args.params).map_err(|e| match e {
        lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
        other => other,
    })?;
    Ok(Box::new(m))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({
        "num_heads": null, "num_heads_kv": null, "head_dim": null, "mlp_dim": 0,
        "qkv_proj_bias": true, "out_proj_bias": true, "softmax_scale": null, "causal": false,
        "d_conv": 0, "rotary_emb_dim": 0, "rotary_emb_base": 10000.0, "rotary_emb_interleaved": false
    })
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["MHA", "mha", "attention"],
        family: Family::Attention,
        summary: "Multi-head softmax attention: GQA, rotary, KV-cache decoding",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
