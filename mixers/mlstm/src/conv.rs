//! xLSTM's `CausalConv1d`: a depthwise causal convolution with bias
//! (`nn.Conv1d(D, D, K, groups=D, padding=K-1)` cut to the input length),
//! over a sequence or one step at a time with a window of the last `K` inputs,
//! both through [`lrnnx_kernels::depthwise_conv`] (its backward gives the
//! gradients).

use candle_core::Tensor;
use lrnnx_framework::{Init, ParamBuilder, Result};
use lrnnx_kernels::depthwise_conv::depthwise_conv;

/// Parameters `conv.weight (D, 1, K)` and `conv.bias (D)` (PyTorch default init).
#[derive(Debug, Clone)]
pub struct CausalConv1d {
    weight: Tensor,
    bias: Tensor,
    taps: usize,
}

impl CausalConv1d {
    /// Builds the convolution under `pb` (xLSTM's module `conv1d`, holding `conv`).
    pub fn new(features: usize, taps: usize, pb: &ParamBuilder) -> Result<Self> {
        let init = Init::TorchDefault { fan_in: taps };
        let pb = pb.pp("conv");
        let weight = pb.get((features, 1, taps), "weight", init.clone())?;
        let bias = pb.get(features, "bias", init)?;
        Ok(Self { weight, bias, taps })
    }

    /// Kernel size `K`.
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// `x (B, L, D)` -> `(B, L, D)`; `window (B, K, D)`, the last `K` inputs
    /// before `x` (zeros at the start), supplies the left context.
    pub fn forward(&self, x: &Tensor, window: Option<&Tensor>) -> Result<Tensor> {
        let w = self.weight.squeeze(1)?.to_dtype(x.dtype())?;
        let bias = self.bias.to_dtype(x.dtype())?;
        let b = x.dim(0)?;
        Ok(match window {
            Some(win) if self.taps > 1 => {
                let ctx = win.narrow(1, 1, self.taps - 1)?.to_dtype(x.dtype())?;
                let ext = Tensor::cat(&[&ctx, x], 1)?;
                depthwise_conv(&ext, &w, &bias, b)?.narrow(1, self.taps - 1, x.dim(1)?)?
            }
            _ => depthwise_conv(x, &w, &bias, b)?,
        })
    }

    /// The window after consuming `x (B, L, D)`: the last `K` inputs, `(B, K, D)`.
    pub fn next_window(&self, window: &Tensor, x: &Tensor) -> Result<Tensor> {
        let all = Tensor::cat(&[&window.to_dtype(x.dtype())?, x], 1)?;
        let l = all.dim(1)?;
        Ok(all.narrow(1, l - self.taps, self.taps)?.contiguous()?)
    }

    /// One step: `x (B, D)` and `window (B, K, D)` -> `(y (B, D), new window)`.
    pub fn step(&self, x: &Tensor, window: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.unsqueeze(1)?;
        let y = self.forward(&x, Some(window))?.squeeze(1)?;
        Ok((y, self.next_window(window, &x)?))
    }
}
