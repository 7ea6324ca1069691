//! One decoding step of the LRU fused on the CPU: `u = W_in x`, then
//! `h' = lambda h + u` (complex, split layout), then `y = W_out h' + D x`,
//! on raw slices with the small row-by-weight products of the kernels
//! crate. Through candle's ops the same step is a dozen ops and two GEMM
//! calls with `m = B`, whose fixed costs dominate a few-MFLOP step.

use candle_core::{Result, Tensor};
use lrnnx_framework::layers::diagonal::SplitSystem;
use lrnnx_kernels::cpu::{cpu_slice, matmul_t, tensor, Float};
use lrnnx_kernels::portable::use_fused_cpu;

/// `(y (B, H), h' (B, 2N))` of one step from `x (B, H)` and `h (B, 2N)`, or
/// `None` where the fused path does not apply (not the CPU, not f32/f64,
/// mixed dtypes): then the caller runs candle's ops.
pub(crate) fn fused_step(
    x: &Tensor,
    h: &Tensor,
    ops: &SplitSystem,
    skip: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let dtype = x.dtype();
    let same = [h, &ops.lambda, &ops.w_in, &ops.w_out, skip]
        .iter()
        .all(|t| t.dtype() == dtype && t.device().is_cpu());
    if !use_fused_cpu(x) || !same {
        return Ok(None);
    }
    match dtype {
        candle_core::DType::F32 => step_typed::<f32>(x, h, ops, skip).map(Some),
        candle_core::DType::F64 => step_typed::<f64>(x, h, ops, skip).map(Some),
        _ => Ok(None),
    }
}

fn step_typed<T: Float + candle_core::WithDType>(
    x: &Tensor,
    h: &Tensor,
    ops: &SplitSystem,
    skip: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (b, d_model) = x.dims2()?;
    let n2 = h.dim(1)?;
    let n = n2 / 2;
    let contiguous = |t: &Tensor| t.contiguous();
    let (x, h, lam, w_in, w_out, skip) = (
        contiguous(x)?,
        contiguous(h)?,
        contiguous(&ops.lambda)?,
        contiguous(&ops.w_in)?,
        contiguous(&ops.w_out)?,
        contiguous(skip)?,
    );
    let guards = [&x, &h, &lam, &w_in, &w_out, &skip].map(|t| t.storage_and_layout());
    let s = |i: usize, what: &str| cpu_slice::<T>(&guards[i].0, guards[i].1, what);
    let (xs, hs, ls) = (s(0, "LRU step input")?, s(1, "LRU state")?, s(2, "lambda")?);
    let (wi, wo, ds) = (s(3, "W_in")?, s(4, "W_out")?, s(5, "D")?);
    let mut next = matmul_t(xs, d_model, wi, None); // u (B, 2N)
    for (hn, ho) in next.chunks_exact_mut(n2).zip(hs.chunks_exact(n2)) {
        let (ur, ui) = hn.split_at_mut(n);
        let (hr, hi) = ho.split_at(n);
        let (lr, li) = ls.split_at(n);
        for k in 0..n {
            let re = lr[k] * hr[k] - li[k] * hi[k] + ur[k];
            ui[k] = lr[k] * hi[k] + li[k] * hr[k] + ui[k];
            ur[k] = re;
        }
    }
    let mut y = matmul_t(&next, n2, wo, None); // W_out h' (B, H)
    for (yr, xr) in y.chunks_exact_mut(d_model).zip(xs.chunks_exact(d_model)) {
        for ((yv, &xv), &dv) in yr.iter_mut().zip(xr).zip(ds) {
            *yv += xv * dv;
        }
    }
    drop(guards);
    Ok((tensor(y, (b, d_model))?, tensor(next, (b, n2))?))
}
