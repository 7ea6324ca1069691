//! `nn.Linear` with PyTorch's weight layout and default initialisation.

use candle_core::Tensor;

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

/// `x (.., in) @ w^T (+ b)` for `w (out, in)` and `b (out)`, as one 2-D
/// matmul over all leading axes (`x` may be a strided view); the result is
/// `(.., out)`. The one linear map of the mixers' forward passes.
///
/// The input's dtype is the compute dtype: `w` and `b` are cast to it (a
/// no-op when they match), so f32 master weights run with bf16 activations
/// and their gradients flow back in f32.
pub fn project(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let w = &w.to_dtype(x.dtype())?;
    let b = b.map(|b| b.to_dtype(x.dtype())).transpose()?;
    let b = b.as_ref();
    let mut dims = x.dims().to_vec();
    let inner = dims.pop().unwrap_or(0);
    let rows = x.elem_count() / inner.max(1);
    let x2 = if x.rank() == 2 {
        x.clone()
    } else {
        x.reshape((rows, inner))?
    };
    let mut y = x2.matmul(&w.t()?)?;
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    dims.push(w.dim(0)?);
    Ok(y.reshape(dims)?)
}

/// [`project`] through a [`Linear`]'s weight and bias.
pub fn project_linear(x: &Tensor, lin: &Linear) -> Result<Tensor> {
    project(x, lin.weight(), lin.bias())
}
