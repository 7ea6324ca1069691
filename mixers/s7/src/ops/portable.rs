//! The S7 ops in candle tensor ops only: what runs on CUDA, in bf16/f16, and
//! inside `lrnnx_kernels::portable::with_portable`; backward comes from
//! candle's autograd. The entry functions of the other modules branch here
//! when their fused CPU kernel cannot take the tensors.
//!
//! Unlike the fused ops these materialise the per-token `B` and `C`,
//! `(T, H*N)` each (a GEMM in the compute dtype), then contract them with a
//! batched matmul in the accumulation dtype (f32, f64 stays f64), so `Bu`
//! and `yc` come back widened like the scan's states.

use candle_core::{Result, Tensor};
use lrnnx_kernels::portable::widen;

/// `(T, H)` of `u` and `N`, checking `w (H*N, H)`.
fn dims(u: &Tensor, w: &Tensor, n: usize, what: &str) -> Result<(usize, usize)> {
    let (t, h) = u.dims2()?;
    if w.dims() != [h * n, h] {
        candle_core::bail!(
            "{what}: expected u (T, H) and W (H*N, H) with N = {n}; found u {:?}, W {:?}",
            u.dims(),
            w.dims()
        );
    }
    Ok((t, h))
}

/// The per-token matrices `u @ w^T` as `(T, H, N)`, widened.
fn per_token(u: &Tensor, w: &Tensor, (t, h, n): (usize, usize, usize)) -> Result<Tensor> {
    widen(&u.matmul(&w.t()?)?)?.reshape((t, h, n))
}

/// `Bu[t,n] = sum_h (u Wb^T)[t, h*N+n] u[t,h]`: `(T, N)` in the accumulation
/// dtype from `u (T, H)` and `wb (H*N, H)` of one dtype.
pub fn b_input(u: &Tensor, wb: &Tensor, n: usize) -> Result<Tensor> {
    let (t, h) = dims(u, wb, n, "S7 B input")?;
    let bm = per_token(u, wb, (t, h, n))?;
    widen(u)?.reshape((t, 1, h))?.matmul(&bm)?.reshape((t, n))
}

/// `yc[t,h] = sum_n (u Wc^T)[t, h*N+n] s[t,n]`: `(T, H)` in the accumulation
/// dtype from the states `s (T, N)`, `u (T, H)` and `wc (H*N, H)`.
pub fn c_output(s: &Tensor, u: &Tensor, wc: &Tensor) -> Result<Tensor> {
    let n = s.dim(1)?;
    let (t, h) = dims(u, wc, n, "S7 C output")?;
    if s.dims() != [t, n] {
        candle_core::bail!("S7 C output: expected s ({t}, {n}), found {:?}", s.dims());
    }
    let cm = per_token(u, wc, (t, h, n))?;
    let s = s.to_dtype(cm.dtype())?.reshape((t, n, 1))?;
    cm.matmul(&s)?.reshape((t, h))
}

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, in `x`'s dtype.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let e = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
    ((e + 1.0)? * x)? * 0.5
}

/// `sigmoid(z) * y + x` (the saturating sigmoid op of candle-nn, whose
/// backward stays finite where `exp(-z)` overflows).
pub fn gate_residual(z: &Tensor, y: &Tensor, x: &Tensor) -> Result<Tensor> {
    if z.dims() != y.dims() || z.dims() != x.dims() {
        candle_core::bail!(
            "S7 gate: expected three tensors of one shape, found {:?}, {:?} and {:?}",
            z.dims(),
            y.dims(),
            x.dims()
        );
    }
    candle_nn::ops::sigmoid(z)? * y + x
}
