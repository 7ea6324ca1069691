//! mLSTM layer constructor arguments (xLSTM's `mLSTMLayerConfig`).

use serde::{Deserialize, Serialize};

/// The fields of the xLSTM package's `mLSTMLayerConfig` (same names and
/// defaults), plus the cell's `chunk_size` and `eps`.
///
/// `embedding_dim` is the model width (`d_model`); it may be given, and must
/// then equal `d_model` (or be -1, xLSTM's "set by the top-level config").
/// The inner width is `proj_factor * embedding_dim` rounded to a multiple of
/// `round_proj_up_to_multiple_of` (up or down per `round_proj_up_dim_up`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlstmConfig {
    /// Heads of the mLSTM cell; must divide the inner width.
    pub num_heads: usize,
    /// Up-projection factor of the inner width.
    pub proj_factor: f64,
    /// Round the inner width up (`true`) or down to the multiple below.
    pub round_proj_up_dim_up: bool,
    /// The multiple the inner width is rounded to.
    pub round_proj_up_to_multiple_of: usize,
    /// Taps of the causal depthwise convolution (>= 1).
    pub conv1d_kernel_size: usize,
    /// Block size of the head-wise q/k/v projections; must divide the inner width.
    pub qkv_proj_blocksize: usize,
    /// Biases on the up, down and q/k/v projections.
    pub bias: bool,
    /// Dropout after the down-projection: accepted, not applied (inference and tests).
    pub dropout: f64,
    /// xLSTM's causal-mask size; accepted and ignored (any length works).
    pub context_length: i64,
    /// The model width, if given: must be -1 or equal `d_model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<i64>,
    /// Number of blocks of the model (xLSTM's `_num_blocks`), scales the
    /// init of `proj_down` only.
    #[serde(rename = "_num_blocks")]
    pub num_blocks: usize,
    /// Chunk length of the chunkwise forward.
    pub chunk_size: usize,
    /// `eps` of the cell's denominator.
    pub eps: f64,
}

impl MlstmConfig {
    /// The inner (up-projected) width for model width `d_model`, as xLSTM's
    /// `UpProjConfigMixin._set_proj_up_dim`.
    pub fn inner_dim(&self, d_model: usize) -> usize {
        let m = self.round_proj_up_to_multiple_of.max(1) as f64;
        let x = self.proj_factor * d_model as f64 / m;
        let mult = if self.round_proj_up_dim_up {
            x.ceil()
        } else {
            x.floor()
        };
        (mult * m) as usize
    }

    /// Checks the values against each other and `d_model`.
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if d_model == 0 {
            return Err("d_model must be positive, found 0".into());
        }
        if let Some(e) = self.embedding_dim {
            if e != -1 && e != d_model as i64 {
                return Err(format!(
                    "embedding_dim must equal d_model = {d_model} (or be -1), found {e}"
                ));
            }
        }
        if !(self.proj_factor > 0.0 && self.proj_factor.is_finite()) {
            return Err(format!(
                "proj_factor must be positive, found {}",
                self.proj_factor
            ));
        }
        if self.round_proj_up_to_multiple_of == 0 {
            return Err("round_proj_up_to_multiple_of must be positive, found 0".into());
        }
        let inner = self.inner_dim(d_model);
        if inner == 0 {
            return Err(format!(
                "proj_factor = {} with d_model = {d_model} rounds the inner width down to 0",
                self.proj_factor
            ));
        }
        if self.num_heads == 0 || !inner.is_multiple_of(self.num_heads) {
            return Err(format!(
                "num_heads must be positive and divide the inner width {inner}, found {}",
                self.num_heads
            ));
        }
        if self.qkv_proj_blocksize == 0 || !inner.is_multiple_of(self.qkv_proj_blocksize) {
            return Err(format!(
                "qkv_proj_blocksize must be positive and divide the inner width {inner}, found {}",
                self.qkv_proj_blocksize
            ));
        }
        if self.conv1d_kernel_size == 0 {
            return Err("conv1d_kernel_size must be at least 1, found 0".into());
        }
        if self.chunk_size == 0 {
            return Err("chunk_size must be positive, found 0".into());
        }
        if self.num_blocks == 0 {
            return Err("_num_blocks must be positive, found 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!("eps must be >= 0, found {}", self.eps));
        }
        Ok(())
    }
}

impl Default for MlstmConfig {
    fn default() -> Self {
        Self {
            num_heads: 4,
            proj_factor: 2.0,
            round_proj_up_dim_up: true,
            round_proj_up_to_multiple_of: 64,
            conv1d_kernel_size: 4,
            qkv_proj_blocksize: 4,
            bias: false,
            dropout: 0.0,
            context_length: -1,
            embedding_dim: None,
            num_blocks: 1,
            chunk_size: 64,
            eps: crate::cell::DEFAULT_EPS,
        }
    }
}
