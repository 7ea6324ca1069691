//! `nn.Linear` with PyTorch's weight layout and default initialisation.

use crate::{Init, ParamBuilder, Result, Role};

/// A dense layer `y = x W^T + b`, `W` stored `(out, in)` as in PyTorch.
pub type Linear = candle_nn::Linear;

/// A linear layer with bias, initialised as `nn.Linear` unless loaded.
pub fn linear(in_dim: usize, out_dim: usize, pb: &ParamBuilder) -> Result<Linear> {
    let init = Init::TorchDefault { fan_in: in_dim };
    let w = pb.get((out_dim, in_dim), "weight", init.clone())?;
    let b = pb.get(out_dim, "bias", init)?;
    pb.mark("weight", Role::LinearWeight);
    pb.mark("bias", Role::LinearBias);
    Ok(Linear::new(w, Some(b)))
}

/// A linear layer without bias, initialised as `nn.Linear` unless loaded.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, pb: &ParamBuilder) -> Result<Linear> {
    let w = pb.get(
        (out_dim, in_dim),
        "weight",
        Init::TorchDefault { fan_in: in_dim },
    )?;
    pb.mark("weight", Role::LinearWeight);
    Ok(Linear::new(w, None))
}

/// A linear layer whose bias is optional.
pub fn linear_maybe_bias(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    pb: &ParamBuilder,
) -> Result<Linear> {
    if bias {
        linear(in_dim, out_dim, pb)
    } else {
        linear_no_bias(in_dim, out_dim, pb)
    }
}

/// A linear layer whose output joins the residual stream (an `out_proj`),
/// marked [`Role::ResidualOutput`] so that the LM's init rescales it.
pub fn residual_output(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    pb: &ParamBuilder,
) -> Result<Linear> {
    let lin = linear_maybe_bias(in_dim, out_dim, bias, pb)?;
    pb.mark("weight", Role::ResidualOutput);
    Ok(lin)
}
