//! The RG-LRU ops in candle tensor ops only: what runs on CUDA, in bf16/f16,
//! and inside `lrnnx_kernels::portable::with_portable`; backward comes from
//! candle's autograd. The entry functions of the other modules ([`super::block`],
//! [`super::gate_scan`], [`super::gelu_mul`]) branch here when their fused CPU
//! kernel cannot take the tensors.
//!
//! Precision: projections run in the input's dtype (the weights cast to it at
//! use); the convolution's taps are summed in the accumulation dtype (f32,
//! f64 stays f64) and rounded once to the input's dtype; the gates, `a_bar`, the input scaling and the
//! recurrence run in its accumulation dtype (f32, f64 stays f64), so
//! `1 - a_bar^2` never cancels in bf16; the states come back widened.

use candle_core::{DType, Result, Tensor, D};
use lrnnx_kernels::portable::{accumulation_dtype, conv, scan::real_scan, widen};

use super::block::{BlockParams, Dense};

/// `(B, L, D)` of the convolved input `xc`, checked as the fused op checks it.
fn gate_dims(z: &Tensor, xc: &Tensor, p: &Tensor, batch: usize) -> Result<(usize, usize, usize)> {
    let dims = super::gate_scan::dims_of(z.shape(), xc.shape(), p.shape(), batch)?;
    Ok((dims.b, dims.l, dims.d))
}

/// `log(sigmoid(x))`, stably: `min(x, 0) - log(1 + exp(-|x|))`.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.minimum(0.0)? - tail
}

/// `sqrt(q)` for `q >= 0` whose derivative is left out (zero) where `q = 0`,
/// as the fused backward does, instead of the infinite one of `sqrt`.
fn sqrt_zero_safe(q: &Tensor) -> Result<Tensor> {
    let live = q.gt(0.0)?.to_dtype(q.dtype())?;
    // Where q = 0: sqrt(0 + 1) * 0 = 0, with a finite derivative times 0.
    let safe = (q + (1.0 - &live)?)?;
    safe.sqrt()? * live
}

/// The RG-LRU core ([`super::gate_scan`]'s math): gate pre-activations
/// `z (B, L, 2D)` (recurrent gate first, no bias), the convolved input
/// `xc (B, L, D)` (or both `(B*L, .)` with `B = batch`), `p = [a_log | br | bi]`
/// `(3D)` and the initial state `h0 (B, D)` (zeros when `None`). Returns every
/// state in `xc`'s shape and accumulation dtype.
pub fn gate_scan(
    z: &Tensor,
    xc: &Tensor,
    p: &Tensor,
    c: f64,
    h0: Option<&Tensor>,
    batch: usize,
) -> Result<Tensor> {
    let (b, l, d) = gate_dims(z, xc, p, batch)?;
    if let Some(h0) = h0 {
        if h0.dims() != [b, d] {
            candle_core::bail!(
                "RG-LRU gate scan: expected h0 ({b}, {d}), found {:?}",
                h0.dims()
            );
        }
    }
    let acc = accumulation_dtype(xc.dtype());
    let z = z.to_dtype(acc)?.reshape((b, l, 2 * d))?;
    let x = xc.to_dtype(acc)?.reshape((b, l, d))?;
    let p = p.to_dtype(acc)?;
    let (a_log, br, bi) = (
        p.narrow(0, 0, d)?,
        p.narrow(0, d, d)?,
        p.narrow(0, 2 * d, d)?,
    );
    let r = candle_nn::ops::sigmoid(&z.narrow(D::Minus1, 0, d)?.broadcast_add(&br)?)?;
    let i = candle_nn::ops::sigmoid(&z.narrow(D::Minus1, d, d)?.broadcast_add(&bi)?)?;
    // a_bar = sigmoid(a_log)^(c r) = exp(c r log sigmoid(a_log)).
    let cla = (log_sigmoid(&a_log)? * c)?;
    let a_bar = r.broadcast_mul(&cla)?.exp()?;
    let m = sqrt_zero_safe(&a_bar.sqr()?.affine(-1.0, 1.0)?.relu()?)?;
    let u = ((m * i)? * x)?;
    let h = real_scan(&u, &a_bar, h0)?;
    h.reshape(xc.dims())
}

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, in `x`'s dtype.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let e = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
    ((e + 1.0)? * x)? * 0.5
}

/// `gelu(g) * h` for two tensors of one shape, in the accumulation dtype of
/// the wider of the two (the gate is usually in the compute dtype, the
/// states in f32).
pub fn gelu_mul(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    if g.dims() != h.dims() {
        candle_core::bail!(
            "gelu-mul: expected two tensors of one shape, found {:?} and {:?}",
            g.dims(),
            h.dims()
        );
    }
    let acc = if g.dtype() == DType::F64 || h.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    gelu(&g.to_dtype(acc)?)? * h.to_dtype(acc)?
}

/// `x @ w^T + b` with the weights cast to `x`'s dtype.
fn dense(layer: &Dense, x: &Tensor) -> Result<Tensor> {
    let y = x.matmul(&layer.w.to_dtype(x.dtype())?.t()?)?;
    match &layer.b {
        Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?),
        None => Ok(y),
    }
}

/// The block up to `out_proj` ([`super::block::block`]'s math): `x (B*L, H)`
/// (rows batch-major, `B = batch`) from zero states; returns
/// `gelu(gate) * h`, `(B*L, D)`, in `x`'s dtype.
pub fn block(x: &Tensor, batch: usize, prm: &BlockParams) -> Result<Tensor> {
    let dt = x.dtype();
    let gate = dense(&prm.gate, x)?;
    let xi = dense(&prm.input, x)?;
    // The taps summed in the accumulation dtype: one rounding, not 2W.
    let acc = accumulation_dtype(dt);
    let (cw, cb) = (prm.conv_w.to_dtype(acc)?, prm.conv_b.to_dtype(acc)?);
    let xc = conv::depthwise_conv(&widen(&xi)?, &cw, &cb, batch)?.to_dtype(dt)?;
    let z = xc.matmul(&prm.gates_w.to_dtype(dt)?.t()?)?;
    let p = prm.p.to_dtype(acc)?;
    let h = gate_scan(&z, &xc, &p, prm.c, None, batch)?;
    gelu_mul(&gate, &widen(&h)?)?.to_dtype(dt)
}
