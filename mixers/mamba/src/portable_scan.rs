//! The selective scan from candle ops, on any device and differentiable by
//! candle's autograd: what the CPU runs inside
//! [`with_portable`](lrnnx_kernels::portable::with_portable), and the
//! reference the CUDA backward kernel is tested against.
//!
//! It forms the `(B, L, D, N)` transitions and inputs and runs the log-depth
//! real scan of [`lrnnx_kernels::portable::scan::real_scan`] over them, in
//! the accumulation dtype (f32 for bf16/f16 inputs), so it costs
//! `O(B L D N log L)` memory for the backward.

use candle_core::{Result, Tensor, D};
use lrnnx_kernels::portable::{scan::real_scan, widen};

use crate::cpu::recurrence::{Rule, LANES};
use crate::scan_args::{ScanArgs, ScanSizes};

/// `e^x - 1` without the cancellation of `exp(x) - 1` near zero:
/// `tanh(x / 2) (e^x + 1)`.
fn expm1(x: &Tensor) -> Result<Tensor> {
    (x * 0.5)?.tanh()? * (x.exp()? + 1.0)?
}

/// `(Abar, gain)` `(B, L, D, N)` and `(B, L, D, N or 1)` of the rule.
fn discretize(rule: Rule, dta: &Tensor, delta: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor)> {
    let (dta, delta) = (dta.unsqueeze(D::Minus1)?, delta.unsqueeze(D::Minus1)?);
    let a = a.unsqueeze(0)?.unsqueeze(0)?; // (1, 1, D, N)
    let da = dta.broadcast_mul(&a)?;
    Ok(match rule {
        Rule::Mamba => (da.exp()?, delta),
        Rule::Zoh => (
            da.exp()?,
            expm1(&delta.broadcast_mul(&a)?)?.broadcast_div(&a)?,
        ),
        Rule::Bilinear => {
            let half = (da * 0.5)?;
            let abar = ((&half + 1.0)? / (half.neg()? + 1.0)?)?;
            let gain = delta.broadcast_div(&((delta.broadcast_mul(&a)? * -0.5)? + 1.0)?)?;
            (abar, gain)
        }
        Rule::Dirac => (da.exp()?, delta.ones_like()?),
    })
}

/// `h (B, ceil(D/16), N, 16)` (the kernels' lane layout) as `(B, D * N)`.
fn from_lanes(h: &Tensor, s: ScanSizes) -> Result<Tensor> {
    let blocks = s.d.div_ceil(LANES);
    h.permute((0, 1, 3, 2))?
        .reshape((s.b, blocks * LANES, s.n))?
        .narrow(1, 0, s.d)?
        .reshape((s.b, s.d * s.n))
}

/// `h (B, D * N)` in the lane layout, lanes past `D` zero.
fn to_lanes(h: &Tensor, s: ScanSizes) -> Result<Tensor> {
    let blocks = s.d.div_ceil(LANES);
    let h = h.reshape((s.b, s.d, s.n))?;
    let h = if blocks * LANES > s.d {
        let pad = Tensor::zeros((s.b, blocks * LANES - s.d, s.n), h.dtype(), h.device())?;
        Tensor::cat(&[&h, &pad], 1)?
    } else {
        h
    };
    h.reshape((s.b, blocks, LANES, s.n))?
        .permute((0, 1, 3, 2))?
        .contiguous()
}

/// Same contract as [`crate::reference::selective_scan_reference`]:
/// `(y (B, L, D) in uz's dtype, last state (B, ceil(D/16), N, 16))` in the
/// accumulation dtype, differentiable in every input.
pub fn selective_scan_portable(args: &ScanArgs) -> Result<(Tensor, Tensor)> {
    let s = args.sizes()?;
    let ScanSizes { b, l, d, n, r } = s;
    let (uz, xdbl) = (widen(args.uz)?, widen(args.xdbl)?);
    let cast = |t: &Tensor| t.to_dtype(uz.dtype());
    let (u, z) = (uz.narrow(2, 0, d)?, uz.narrow(2, d, d)?);
    let bm = xdbl.narrow(2, r, n)?.unsqueeze(2)?; // (B, L, 1, N)
    let cm = xdbl.narrow(2, r + n, n)?.unsqueeze(2)?;
    let (abar, gain) = discretize(
        args.rule,
        &cast(args.dta)?,
        &cast(args.delta)?,
        &cast(args.a)?,
    )?;
    let input = gain
        .broadcast_mul(&bm)?
        .broadcast_mul(&u.unsqueeze(D::Minus1)?)?;
    let h0 = from_lanes(&cast(args.h0)?, s)?;
    let h = real_scan(
        &input.reshape((b, l, d * n))?,
        &abar.reshape((b, l, d * n))?,
        Some(&h0),
    )?
    .reshape((b, l, d, n))?;
    let read = h.broadcast_mul(&cm)?.sum(D::Minus1)?;
    let y = (read + u.broadcast_mul(&cast(args.skip)?.reshape((1, 1, d))?)?)?;
    let y = (y * candle_nn::ops::silu(&z)?)?;
    let last = to_lanes(&h.narrow(1, l - 1, 1)?.reshape((b, d * n))?, s)?;
    Ok((y.to_dtype(args.uz.dtype())?, last))
}
