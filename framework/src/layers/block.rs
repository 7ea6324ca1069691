//! The residual block: Add -> Norm -> Mixer, then Add -> Norm -> MLP.

use candle_core::{DType, Tensor};

use super::{GatedMlp, Norm};
use crate::{ForwardOpts, Mixer, MixerState, Result, StepOpts};

/// One layer of an [`LRNNLMHeadModel`](crate::LRNNLMHeadModel), as in lrnnx (and mamba_ssm).
///
/// The block takes the running residual stream and the previous block's
/// output, adds them, normalises, and applies the mixer; with an MLP it
/// repeats add and norm before the MLP. It returns `(hidden, residual)`,
/// leaving the final add to the next block (or the final norm). With
/// `residual_in_fp32` the residual stream is kept in f32 whatever the
/// compute dtype.
#[derive(Debug)]
pub struct Block {
    /// The sequence mixer.
    pub mixer: Box<dyn Mixer>,
    norm: Norm,
    mlp: Option<(Norm, GatedMlp)>,
    residual_in_fp32: bool,
}

impl Block {
    /// Assembles a block.
    pub fn new(
        mixer: Box<dyn Mixer>,
        norm: Norm,
        mlp: Option<(Norm, GatedMlp)>,
        residual_in_fp32: bool,
    ) -> Self {
        Self {
            mixer,
            norm,
            mlp,
            residual_in_fp32,
        }
    }

    fn add_residual(&self, hidden: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let r = match residual {
            Some(r) => (r.to_dtype(hidden.dtype())? + hidden)?,
            None => hidden.clone(),
        };
        Ok(if self.residual_in_fp32 {
            r.to_dtype(DType::F32)?
        } else {
            r
        })
    }

    fn mlp_part(&self, hidden: Tensor, residual: Tensor) -> Result<(Tensor, Tensor)> {
        match &self.mlp {
            None => Ok((hidden, residual)),
            Some((norm2, mlp)) => {
                let residual = self.add_residual(&hidden, Some(&residual))?;
                let h = norm2.forward(&residual)?.to_dtype(hidden.dtype())?;
                Ok((mlp.forward(&h)?, residual))
            }
        }
    }

    /// Add -> norm -> `mixer` -> (add -> norm -> MLP), with the mixer call given as a closure.
    fn apply(
        &self,
        hidden: &Tensor,
        residual: Option<&Tensor>,
        mixer: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let residual = self.add_residual(hidden, residual)?;
        let h = self.norm.forward(&residual)?.to_dtype(hidden.dtype())?;
        let h = mixer(&h)?;
        self.mlp_part(h, residual)
    }

    /// Full-sequence forward on `(B, L, H)`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        residual: Option<&Tensor>,
        opts: &ForwardOpts,
    ) -> Result<(Tensor, Tensor)> {
        self.apply(hidden, residual, |h| self.mixer.forward(h, opts))
    }

    /// Parallel forward over a prompt that also fills the mixer's decoding state.
    pub fn prefill(
        &self,
        hidden: &Tensor,
        residual: Option<&Tensor>,
        state: &mut MixerState,
        opts: &ForwardOpts,
    ) -> Result<(Tensor, Tensor)> {
        self.apply(hidden, residual, |h| self.mixer.prefill(h, state, opts))
    }

    /// One decoding step on `(B, H)`.
    pub fn step(
        &self,
        hidden: &Tensor,
        residual: Option<&Tensor>,
        state: &mut MixerState,
        opts: &StepOpts,
    ) -> Result<(Tensor, Tensor)> {
        self.apply(hidden, residual, |h| self.mixer.step(h, state, opts))
    }
}
