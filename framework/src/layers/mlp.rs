//! The gated MLP of Mamba-style blocks.

use candle_core::{Tensor, D};

use super::linear::{linear_no_bias, project_linear, residual_output, Linear};
use crate::{ParamBuilder, Result};

/// `fc2(y * silu(gate))` where `(y, gate) = fc1(x).chunk(2)`; no biases.
///
/// The hidden width is `d_intermediate` rounded up to a multiple of 128, as in
/// mamba_ssm's `GatedMLP` (which lrnnx uses).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    fc1: Linear,
    fc2: Linear,
    hidden: usize,
}

impl GatedMlp {
    /// Builds `fc1 (2*hidden, d_model)` and `fc2 (d_model, hidden)` under `pb`.
    pub fn new(d_model: usize, d_intermediate: usize, pb: &ParamBuilder) -> Result<Self> {
        let hidden = d_intermediate.div_ceil(128) * 128;
        Ok(Self {
            fc1: linear_no_bias(d_model, 2 * hidden, &pb.pp("fc1"))?,
            fc2: residual_output(hidden, d_model, false, &pb.pp("fc2"))?,
            hidden,
        })
    }

    /// Applies the MLP over the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = project_linear(x, &self.fc1)?;
        let y = h.narrow(D::Minus1, 0, self.hidden)?;
        let gate = h.narrow(D::Minus1, self.hidden, self.hidden)?;
        let h = (y * candle_nn::ops::silu(&gate)?)?;
        project_linear(&h, &self.fc2)
    }
}
