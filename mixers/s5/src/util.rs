//! Small tensor helpers shared by the two S5 classes.

use candle_core::{Device, Tensor, D};
use lrnnx_framework::{Complex, Error, Result};

/// `x (.., H) @ m` with `m (H, out)`, as one 2-D matmul.
pub(crate) fn matmul_last(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let h = dims.pop().unwrap_or(0);
    let rows = x.elem_count() / h.max(1);
    let y = x.reshape((rows, h))?.matmul(m)?;
    dims.push(m.dim(1)?);
    Ok(y.reshape(dims)?)
}

/// torch's `softplus` (threshold 20): `x` above 20, `log(1 + e^x)` below,
/// written so that no branch overflows (their gradients stay finite too).
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    let mid = (x.clamp(-20.0, 20.0)?.exp()? + 1.0)?.log()?;
    let low = x.minimum(-20.0)?.exp()?;
    let r = x.gt(20.0)?.where_cond(x, &mid)?;
    Ok(x.lt(-20.0)?.where_cond(&low, &r)?)
}

/// The complex tensor stored as `(..., 2)` (PyTorch `view_as_real`).
pub(crate) fn complex_of(t: &Tensor) -> Result<Complex> {
    Ok(Complex::new(
        t.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
        t.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
    ))
}

/// `A_bar^t` for `t = 0..len` as `(len, 2N)` split complex, by running the
/// scan on an impulse (exact products, gradients through the scan's backward).
pub(crate) fn powers(lambda: &Tensor, len: usize) -> Result<Tensor> {
    let n2 = lambda.dim(0)?;
    let n = n2 / 2;
    let dev = lambda.device();
    let dtype = lambda.dtype();
    if len == 0 {
        return Ok(Tensor::zeros((0, n2), dtype, dev)?);
    }
    let one = Tensor::cat(
        &[
            Tensor::ones((1, 1, n), dtype, dev)?,
            Tensor::zeros((1, 1, n), dtype, dev)?,
        ],
        2,
    )?;
    let u = if len > 1 {
        Tensor::cat(&[one, Tensor::zeros((1, len - 1, n2), dtype, dev)?], 1)?
    } else {
        one
    };
    let h0 = zero_state(&u)?;
    Ok(lrnnx_kernels::scan::complex_diag_scan(&u, lambda, Some(&h0))?.squeeze(0)?)
}

/// The zero initial state `(B, 2N)` for scan inputs `u (B, L, 2N)`, in their
/// accumulation dtype. Passed explicitly rather than as `None` so that the
/// transition is in the graph at L = 1 on every path (its gradient is zero
/// there, not absent); the fused scans build the same zeros themselves.
pub(crate) fn zero_state(u: &Tensor) -> Result<Tensor> {
    let (b, _, n2) = u.dims3()?;
    Ok(Tensor::zeros(
        (b, n2),
        lrnnx_kernels::portable::accumulation_dtype(u.dtype()),
        u.device(),
    )?)
}

/// `h0`, or the zero state of [`zero_state`] when it is `None`.
pub(crate) fn or_zero_state(h0: Option<&Tensor>, u: &Tensor) -> Result<Tensor> {
    match h0 {
        Some(h0) => Ok(h0.clone()),
        None => zero_state(u),
    }
}

/// An f32 CPU tensor from f64 values (parameters are drawn on the CPU, then cast by the store).
pub(crate) fn tensor(v: Vec<f64>, shape: &[usize]) -> Result<Tensor> {
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Checks `integration_timesteps` of a forward pass, `(B, L)` or `(B, L, 1)`, and returns it as `(B, L)`.
pub(crate) fn timesteps_seq(ts: &Tensor, b: usize, l: usize, what: &str) -> Result<Tensor> {
    match ts.dims() {
        &[tb, tl] if tb == b && tl == l => Ok(ts.clone()),
        &[tb, tl, 1] if tb == b && tl == l => Ok(ts.squeeze(2)?),
        d => Err(Error::shape(
            what,
            format!("({b}, {l}) or ({b}, {l}, 1)"),
            d,
        )),
    }
}

/// Checks `integration_timesteps` of a step, `(B,)` or `(B, 1)`, and returns it as `(B, 1)`.
pub(crate) fn timesteps_step(ts: &Tensor, b: usize, what: &str) -> Result<Tensor> {
    match ts.dims() {
        &[tb] if tb == b => Ok(ts.unsqueeze(1)?),
        &[tb, 1] if tb == b => Ok(ts.clone()),
        d => Err(Error::shape(what, format!("({b},) or ({b}, 1)"), d)),
    }
}
