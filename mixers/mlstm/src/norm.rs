//! xLSTM's `MultiHeadLayerNorm`: a layer norm per head (group norm with one
//! group per head), weight `1 + w` (residual weight), no bias, eps 1e-5.

use candle_core::{Tensor, D};
use lrnnx_framework::{Init, ParamBuilder, Result};

/// xLSTM's fixed `eps` of the head norm.
pub const NORM_EPS: f64 = 1e-5;

/// Parameter `weight (NH * DH)`, zero at init (the effective scale is `1 + weight`).
#[derive(Debug, Clone)]
pub struct MultiHeadLayerNorm {
    weight: Tensor,
    heads: usize,
}

impl MultiHeadLayerNorm {
    /// Builds the norm over `features = heads * head_dim` under `pb`.
    pub fn new(features: usize, heads: usize, pb: &ParamBuilder) -> Result<Self> {
        Ok(Self {
            weight: pb.get(features, "weight", Init::Zeros)?,
            heads,
        })
    }

    /// Normalizes `h (B, NH, S, DH)` over `DH`, in `h`'s dtype.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let dh = h.dim(D::Minus1)?;
        let mean = h.mean_keepdim(D::Minus1)?;
        let hc = h.broadcast_sub(&mean)?;
        let var = hc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = hc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?;
        let scale = (self.weight.to_dtype(h.dtype())? + 1.0)?.reshape((1, self.heads, 1, dh))?;
        Ok(y.broadcast_mul(&scale)?)
    }
}
