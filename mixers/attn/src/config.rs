//! Attention constructor arguments (lrnnx's `MHA`).

use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `MHA(embed_dim, num_heads, ...)`. As there, `causal`
/// defaults to `false`: a language model wants `"causal": true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MhaConfig {
    /// Query heads (required).
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_heads`.
    pub num_heads_kv: Option<usize>,
    /// Width of a head; defaults to `d_model / num_heads`.
    pub head_dim: Option<usize>,
    /// Width of the gated MLP branch, rounded up to a multiple of 256 (0: none).
    pub mlp_dim: usize,
    /// Bias in `in_proj`.
    pub qkv_proj_bias: bool,
    /// Bias in `out_proj`.
    pub out_proj_bias: bool,
    /// Score scale; defaults to `1/sqrt(head_dim)`.
    pub softmax_scale: Option<f64>,
    /// Causal masking.
    pub causal: bool,
    /// Width of the depthwise causal conv on `qkv` (0: none).
    pub d_conv: usize,
    /// Rotary dimensions per head (0: none).
    pub rotary_emb_dim: usize,
    /// Rotary base.
    pub rotary_emb_base: f64,
    /// GPT-J interleaved pairs instead of GPT-NeoX halves.
    pub rotary_emb_interleaved: bool,
}

impl Default for MhaConfig {
    /// lrnnx's defaults; `num_heads` has none there (it is required when
    /// built by name), `1` here.
    fn default() -> Self {
        Self {
            num_heads: 1,
            num_heads_kv: None,
            head_dim: None,
            mlp_dim: 0,
            qkv_proj_bias: true,
            out_proj_bias: true,
            softmax_scale: None,
            causal: false,
            d_conv: 0,
            rotary_emb_dim: 0,
            rotary_emb_base: 10000.0,
            rotary_emb_interleaved: false,
        }
    }
}

impl MhaConfig {
    /// Resolves defaults that depend on `d_model` and checks consistency.
    pub fn resolve(mut self, d_model: usize) -> Result<Self, String> {
        if self.num_heads == 0 {
            return Err("num_heads must be positive, found 0".into());
        }
        let kv = *self.num_heads_kv.get_or_insert(self.num_heads);
        if kv == 0 || !self.num_heads.is_multiple_of(kv) {
            return Err(format!(
                "num_heads ({}) must be a multiple of num_heads_kv ({kv})",
                self.num_heads
            ));
        }
        if self.head_dim.is_none() && !d_model.is_multiple_of(self.num_heads) {
            return Err(format!(
                "d_model ({d_model}) must be divisible by num_heads ({}) when head_dim is not given",
                self.num_heads
            ));
        }
        let hd = *self.head_dim.get_or_insert(d_model / self.num_heads);
        if hd == 0 {
            return Err("head_dim must be positive".into());
        }
        if !self.rotary_emb_dim.is_multiple_of(2) || self.rotary_emb_dim > hd {
            return Err(format!(
                "rotary_emb_dim must be even and at most head_dim ({hd}), found {}",
                self.rotary_emb_dim
            ));
        }
        self.mlp_dim = self.mlp_dim.div_ceil(256) * 256;
        let scale = *self.softmax_scale.get_or_insert(1.0 / (hd as f64).sqrt());
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("softmax_scale must be positive, found {scale}"));
        }
        Ok(self)
    }
}
