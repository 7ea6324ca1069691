//! Depthwise causal convolution with bias, PyTorch's
//! `nn.Conv1d(D, D, W, groups=D, padding=W-1)(x)[..., :L]` on `(B, L, D)` data:
//! `y[b,t,d] = bias[d] + sum_k w[d,k] x[b, t-(W-1)+k, d]` (zero before `t = 0`).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use lrnnx_kernels::cpu::{
    contiguous, cpu_slice, for_rows, tensor, with_simd, Float, SharedMut, ROWS_PER_TASK,
};

/// The convolution op on `(x (B, L, D), w (D, W), bias (D))`; `x` may also
/// be `(B*L, D)`, rows batch-major, with `B = batch`.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv {
    /// `B` for 2-D inputs.
    pub batch: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) l: usize,
    pub(crate) d: usize,
    pub(crate) w: usize,
}

fn dims_of(x: &Shape, w: &Shape, bias: &Shape, batch: usize) -> Result<Dims> {
    let (b, l, d) = lrnnx_kernels::cpu::batch_dims(x, batch, "depthwise conv input")?;
    match (w.dims(), bias.dims()) {
        (&[wd, taps], &[bd]) if wd == d && bd == d && taps > 0 => Ok(Dims { b, l, d, w: taps }),
        _ => candle_core::bail!(
            "depthwise conv: expected x (B, L, D), w (D, W), bias (D); found x {:?}, w {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            bias.dims()
        ),
    }
}

/// The taps tap-major, `(W, D)`.
fn transpose<T: Float>(w: &[T], d: usize, taps: usize) -> Vec<T> {
    let mut out = vec![T::default(); d * taps];
    for c in 0..d {
        for k in 0..taps {
            out[k * d + c] = w[c * taps + k];
        }
    }
    out
}

/// `y += w * x`, elementwise.
#[inline(always)]
fn axpy<T: Float>(y: &mut [T], w: &[T], x: &[T]) {
    let n = y.len();
    let (w, x) = (&w[..n], &x[..n]);
    for j in 0..n {
        y[j] += w[j] * x[j];
    }
}

/// Output rows `r0..` (as many as `y` holds) of the convolution of `x (B*L, D)`
/// with the tap-major taps `wt (W, D)`.
#[inline(always)]
fn rows_fwd_impl<T: Float>(x: &[T], wt: &[T], bias: &[T], l: usize, r0: usize, y: &mut [T]) {
    let d = bias.len();
    let taps = wt.len() / d;
    for (i, yrow) in y.chunks_exact_mut(d).enumerate() {
        let r = r0 + i;
        yrow.copy_from_slice(bias);
        // Tap k reads position t - (W-1) + k, within the same sequence.
        for k in (taps - 1).saturating_sub(r % l)..taps {
            let src = r + k + 1 - taps;
            axpy(yrow, &wt[k * d..(k + 1) * d], &x[src * d..(src + 1) * d]);
        }
    }
}

with_simd! {
    fn rows_fwd<T: Float>(x: &[T], wt: &[T], bias: &[T], l: usize, r0: usize, y: &mut [T]) = rows_fwd_impl;
}

/// Rows `r0..` of `dx`, and this run's sums of `dw` (tap-major `(W, D)`) and `dbias`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_bwd_impl<T: Float>(
    x: &[T],
    wt: &[T],
    g: &[T],
    l: usize,
    r0: usize,
    dx: &mut [T],
    dwt: &mut [T],
    db: &mut [T],
) {
    let d = db.len();
    let taps = wt.len() / d;
    for (i, dxrow) in dx.chunks_exact_mut(d).enumerate() {
        let r = r0 + i;
        let t = r % l;
        dxrow.fill(T::default());
        // x[t] feeds y[t + (W-1) - k] through tap k, within the same sequence.
        for k in (taps - 1).saturating_sub(l - 1 - t)..taps {
            let dst = r + taps - 1 - k;
            axpy(dxrow, &wt[k * d..(k + 1) * d], &g[dst * d..(dst + 1) * d]);
        }
        // y[t] read x[t - (W-1) + k] through tap k.
        let grow = &g[r * d..(r + 1) * d];
        for k in (taps - 1).saturating_sub(t)..taps {
            let src = r + k + 1 - taps;
            axpy(
                &mut dwt[k * d..(k + 1) * d],
                grow,
                &x[src * d..(src + 1) * d],
            );
        }
        for (b, &v) in db.iter_mut().zip(grow) {
            *b += v;
        }
    }
}

with_simd! {
    #[allow(clippy::too_many_arguments)]
    fn rows_bwd<T: Float>(
        x: &[T],
        wt: &[T],
        g: &[T],
        l: usize,
        r0: usize,
        dx: &mut [T],
        dwt: &mut [T],
        db: &mut [T],
    ) = rows_bwd_impl;
}

pub(crate) fn forward<T: Float>(dims: Dims, x: &[T], w: &[T], bias: &[T]) -> Vec<T> {
    let Dims { b, l, d, w: taps } = dims;
    let wt = transpose(w, d, taps);
    let mut y = vec![T::default(); b * l * d];
    let py = SharedMut::new(&mut y);
    for_rows(b * l, d * taps, |r0, n| {
        // SAFETY: rows r0..r0+n of `y` belong to this task only.
        let y = unsafe { py.slice(r0 * d, n * d) };
        rows_fwd(x, &wt, bias, l, r0, y);
    });
    y
}

/// `(dx, dw, dbias)` from `g = dL/dy`.
pub(crate) fn backward<T: Float>(
    dims: Dims,
    x: &[T],
    w: &[T],
    g: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { b, l, d, w: taps } = dims;
    let wt = transpose(w, d, taps);
    let rows = b * l;
    let mut dx = vec![T::default(); rows * d];
    // Per-task partial sums of dw (tap-major) and dbias, reduced below.
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let mut parts = vec![T::default(); tasks * (taps + 1) * d];
    let (px, pp) = (SharedMut::new(&mut dx), SharedMut::new(&mut parts));
    for_rows(rows, d * taps, |r0, n| {
        let task = r0 / ROWS_PER_TASK;
        // SAFETY: rows r0..r0+n of `dx` and this task's partial sums belong to it only.
        let (dx, part) = unsafe {
            (
                px.slice(r0 * d, n * d),
                pp.slice(task * (taps + 1) * d, (taps + 1) * d),
            )
        };
        let (dwt, db) = part.split_at_mut(taps * d);
        rows_bwd(x, &wt, g, l, r0, dx, dwt, db);
    });
    let mut sum = vec![T::default(); (taps + 1) * d];
    for part in parts.chunks((taps + 1) * d) {
        for (o, &v) in sum.iter_mut().zip(part) {
            *o += v;
        }
    }
    let db = sum.split_off(taps * d);
    (dx, transpose(&sum, taps, d), db)
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-causal-conv"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        bias: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(lx.shape(), lw.shape(), lb.shape(), self.batch)?;
        let out = match (x, w, bias) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward(
                    dims,
                    contiguous(x, lx, "conv input")?,
                    contiguous(w, lw, "conv weight")?,
                    contiguous(b, lb, "conv bias")?,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward(
                    dims,
                    contiguous(x, lx, "conv input")?,
                    contiguous(w, lw, "conv weight")?,
                    contiguous(b, lb, "conv bias")?,
                ))
            }
            _ => candle_core::bail!(
                "depthwise conv: expected all f32 or all f64, found {:?}, {:?}, {:?}",
                x.dtype(),
                w.dtype(),
                bias.dtype()
            ),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = dims_of(x.shape(), w.shape(), bias.shape(), self.batch)?;
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
        fn typed<T: Float>(
            dims: Dims,
            x: &Tensor,
            w: &Tensor,
            g: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let (sx, lx) = x.storage_and_layout();
            let (sw, lw) = w.storage_and_layout();
            let (sg, lg) = g.storage_and_layout();
            let (dx, dw, db) = backward(
                dims,
                cpu_slice::<T>(&sx, lx, "conv input")?,
                cpu_slice::<T>(&sw, lw, "conv weight")?,
                cpu_slice::<T>(&sg, lg, "conv gradient")?,
            );
            Ok((
                tensor(dx, x.shape())?,
                tensor(dw, (dims.d, dims.w))?,
                tensor(db, dims.d)?,
            ))
        }
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => typed::<f32>(dims, &x, &w, &g)?,
            DType::F64 => typed::<f64>(dims, &x, &w, &g)?,
            other => candle_core::bail!("depthwise conv: unsupported dtype {other:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The convolution of `x (B, L, D)` (or `(B*L, D)` with `B = batch`) with
/// `w (D, W)` plus `bias (D)`.
pub fn depthwise_conv(x: &Tensor, w: &Tensor, bias: &Tensor, batch: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias.contiguous()?,
        DepthwiseConv { batch },
    )
}
