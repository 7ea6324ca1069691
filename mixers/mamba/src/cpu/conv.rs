//! The causal depthwise convolution + silu on the `x` half of `xz`, with
//! the `z` half passed through, as a candle op with backward (CPU).
//!
//! `xz (B, L, 2D)` -> `uz (B, L, 2D)`:
//! `u[b,t,d] = silu(bias[d] + sum_k w[d,k] x[b, t-(W-1)+k, d])` (zero before
//! the start), `uz[..., D:] = xz[..., D:]`. This is `nn.Conv1d(D, D, W,
//! groups=D, padding=W-1)(x)[..., :L]` followed by silu, as lrnnx runs it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use lrnnx_kernels::cpu::cpu_slice;
use lrnnx_kernels::cpu::exec::threads;
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::{Dispatch, Simd, LANES};
use lrnnx_kernels::cpu::SharedMut;

use lrnnx_kernels::cpu::simd_kernel::{run_kernel, Schedule, SimdKernel};

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    l: usize,
    d: usize,
    w: usize,
}

impl Dims {
    fn dp(&self) -> usize {
        self.d.div_ceil(LANES) * LANES
    }
}

fn dims_of(xz: &Layout, w: &Layout, bias: &Layout) -> candle_core::Result<Dims> {
    let (b, l, d2) = xz.shape().dims3()?;
    let (d, w_) = w.shape().dims2()?;
    if d2 != 2 * d || bias.shape().dims() != [d] || w_ == 0 {
        candle_core::bail!(
            "Mamba conv: expected xz (B, L, 2D), weight (D, W), bias (D); found {:?}, {:?}, {:?}",
            xz.shape(),
            w.shape(),
            bias.shape()
        );
    }
    Ok(Dims { b, l, d, w: w_ })
}

/// Row chunks per batch row: a few tasks per thread.
fn chunks_per_row(dims: &Dims) -> usize {
    (4 * threads())
        .div_ceil(dims.b.max(1))
        .clamp(1, dims.l.div_ceil(16).max(1))
}

/// Weights `(W, Dp)` and bias `(Dp)`, zero-padded to whole lane groups.
struct Taps<T> {
    wt: Vec<T>,
    bias: Vec<T>,
}

impl<T: Float> Taps<T> {
    fn new(dims: &Dims, w: &[T], bias: &[T]) -> Self {
        let (d, taps, dp) = (dims.d, dims.w, dims.dp());
        let mut wt = vec![T::ZERO; taps * dp];
        let mut b = vec![T::ZERO; dp];
        for ch in 0..d {
            for k in 0..taps {
                wt[k * dp + ch] = w[ch * taps + k];
            }
            b[ch] = bias[ch];
        }
        Self { wt, bias: b }
    }
}

/// `pre` of lanes `d0..` at position `t` of batch row `bi`: bias, then taps 0..W in order.
#[inline(always)]
fn pre_of<S: Simd>(
    xz: &[S::E],
    taps: &Taps<S::E>,
    dims: &Dims,
    bi: usize,
    t: usize,
    d0: usize,
) -> S::V {
    let (l, d, w, dp) = (dims.l, dims.d, dims.w, dims.dp());
    let wl = LANES.min(d - d0);
    let mut acc = S::load(&taps.bias[d0..]);
    for k in 0..w {
        // Source position t - (W-1) + k; nothing before the start.
        if t + k + 1 >= w {
            let src = t + k + 1 - w;
            let x = S::load_part(&xz[(bi * l + src) * 2 * d + d0..], wl);
            acc = S::fma(S::load(&taps.wt[k * dp + d0..]), x, acc);
        }
    }
    acc
}

/// One task per (batch row, chunk of positions), on rayon once the input is large.
fn row_chunks(dims: &Dims, chunks: usize) -> Schedule {
    Schedule {
        tasks: dims.b * chunks,
        parallel: dims.b * dims.l * dims.d >= 1 << 14,
    }
}

/// Task `task`'s batch row and positions `t0..t1`, rows cut into `chunks` chunks.
#[inline(always)]
fn task_rows(l: usize, chunks: usize, task: usize) -> (usize, usize, usize) {
    let (bi, c) = (task / chunks, task % chunks);
    (bi, l * c / chunks, l * (c + 1) / chunks)
}

struct Fwd<'a, T> {
    dims: Dims,
    xz: &'a [T],
    taps: &'a Taps<T>,
    chunks: usize,
    out: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for Fwd<'_, T> {
    fn schedule(&self) -> Schedule {
        row_chunks(&self.dims, self.chunks)
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let Dims { l, d, .. } = self.dims;
        let (bi, t0, t1) = task_rows(l, self.chunks, task);
        for t in t0..t1 {
            let row = (bi * l + t) * 2 * d;
            // SAFETY: rows t0..t1 of batch bi belong to this task.
            let out = unsafe { self.out.slice(row, 2 * d) };
            for d0 in (0..d).step_by(LANES) {
                let pre = pre_of::<S>(self.xz, self.taps, &self.dims, bi, t, d0);
                let u = S::mul(pre, S::sigmoid(pre));
                S::store_part(u, &mut out[d0..], LANES.min(d - d0));
            }
            out[d..].copy_from_slice(&self.xz[row + d..row + 2 * d]);
        }
    }
}

/// Rows per sub-chunk of the backward (their `gpre` stays in L2).
const SUB: usize = 64;

/// The backward of a task's rows: `gpre = g_u * silu'(pre)` for the rows and
/// a halo of `W - 1` after them (in a task-local buffer), then
/// `dx[t] = sum_k w[k] gpre[t + W-1-k]`, the `z` half of the gradient, and
/// partial weight and bias gradients.
struct Bwd<'a, T> {
    dims: Dims,
    xz: &'a [T],
    taps: &'a Taps<T>,
    g: &'a [T],
    chunks: usize,
    dxz: SharedMut<T>,
    /// `(tasks, W + 1, Dp)`: weight rows (per tap) then the bias row.
    part: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for Bwd<'_, T> {
    fn schedule(&self) -> Schedule {
        row_chunks(&self.dims, self.chunks)
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let Dims { l, d, w, .. } = self.dims;
        let dp = self.dims.dp();
        let (bi, t0, t1) = task_rows(l, self.chunks, task);
        let one = S::c(1.0);
        // SAFETY: this task's partial.
        let part = unsafe { self.part.slice(task * (w + 1) * dp, (w + 1) * dp) };
        let mut gp = vec![T::ZERO; (SUB + w - 1) * dp];
        for s0 in (t0..t1).step_by(SUB) {
            let s1 = (s0 + SUB).min(t1);
            let he = (s1 + w - 1).min(l);
            for t in s0..he {
                let g = &self.g[(bi * l + t) * 2 * d..(bi * l + t + 1) * 2 * d];
                let gr = &mut gp[(t - s0) * dp..(t - s0 + 1) * dp];
                for d0 in (0..d).step_by(LANES) {
                    let pre = pre_of::<S>(self.xz, self.taps, &self.dims, bi, t, d0);
                    let sg = S::sigmoid(pre);
                    let gu = S::load_part(&g[d0..], LANES.min(d - d0));
                    let v = S::mul(S::mul(gu, sg), S::fma(pre, S::sub(one, sg), one));
                    S::store(v, &mut gr[d0..]);
                }
            }
            for t in s0..s1 {
                let row = bi * l + t;
                // SAFETY: rows t0..t1 of batch bi belong to this task.
                let dxr = unsafe { self.dxz.slice(row * 2 * d, 2 * d) };
                let (dx, dz) = dxr.split_at_mut(d);
                dz.copy_from_slice(&self.g[row * 2 * d + d..(row + 1) * 2 * d]);
                for d0 in (0..d).step_by(LANES) {
                    let wl = LANES.min(d - d0);
                    let gpt = S::load(&gp[(t - s0) * dp + d0..]);
                    let mut acc = S::zero();
                    for k in 0..w {
                        // Output t + (W-1) - k read x[t] through tap k.
                        let dst = t + w - 1 - k;
                        if dst < l {
                            let go = S::load(&gp[(dst - s0) * dp + d0..]);
                            acc = S::fma(S::load(&self.taps.wt[k * dp + d0..]), go, acc);
                        }
                        // Tap k of output t read x[t - (W-1) + k].
                        if t + k + 1 >= w {
                            let src = t + k + 1 - w;
                            let x = S::load_part(&self.xz[(bi * l + src) * 2 * d + d0..], wl);
                            let pk = &mut part[k * dp + d0..];
                            S::store(S::fma(gpt, x, S::load(pk)), pk);
                        }
                    }
                    let pb = &mut part[w * dp + d0..];
                    S::store(S::add(S::load(pb), gpt), pb);
                    S::store_part(acc, &mut dx[d0..], wl);
                }
            }
        }
    }
}

/// The conv + silu op; `weight` is `(D, W)` (Conv1d's `(D, 1, W)` squeezed).
#[derive(Debug, Clone, Copy)]
pub struct ConvSilu;

fn fwd_typed<T: Dispatch>(dims: Dims, xz: &[T], w: &[T], bias: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; dims.b * dims.l * 2 * dims.d];
    if dims.d > 0 {
        let taps = Taps::new(&dims, w, bias);
        run_kernel(Fwd {
            dims,
            xz,
            taps: &taps,
            chunks: chunks_per_row(&dims),
            out: SharedMut::new(&mut out),
        });
    }
    out
}

fn bwd_typed<T: Dispatch>(
    dims: Dims,
    xz: &[T],
    w: &[T],
    bias: &[T],
    g: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { b, l, d, w: taps_n } = dims;
    let dp = dims.dp();
    let chunks = chunks_per_row(&dims);
    let tasks = b * chunks;
    let mut dxz = vec![T::ZERO; b * l * 2 * d];
    let mut part = vec![T::ZERO; tasks * (taps_n + 1) * dp];
    if d > 0 {
        let taps = Taps::new(&dims, w, bias);
        run_kernel(Bwd {
            dims,
            xz,
            taps: &taps,
            g,
            chunks,
            dxz: SharedMut::new(&mut dxz),
            part: SharedMut::new(&mut part),
        });
    }
    let mut dw = vec![T::ZERO; d * taps_n];
    let mut db = vec![T::ZERO; d];
    for p in part.chunks(((taps_n + 1) * dp).max(1)) {
        for ch in 0..d {
            for k in 0..taps_n {
                dw[ch * taps_n + k] += p[k * dp + ch];
            }
            db[ch] += p[taps_n * dp + ch];
        }
    }
    (dxz, dw, db)
}

impl CustomOp3 for ConvSilu {
    fn name(&self) -> &'static str {
        "mamba-conv-silu"
    }

    fn cpu_fwd(
        &self,
        xz: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        bias: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = dims_of(lx, lw, lb)?;
        let off = |l: &Layout| {
            l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg("Mamba conv: inputs must be contiguous".into())
            })
        };
        let ((a, b), (c, d), (e, f)) = (off(lx)?, off(lw)?, off(lb)?);
        let out = match (xz, w, bias) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(bb)) => {
                CpuStorage::F32(fwd_typed(dims, &x[a..b], &w[c..d], &bb[e..f]))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(bb)) => {
                CpuStorage::F64(fwd_typed(dims, &x[a..b], &w[c..d], &bb[e..f]))
            }
            _ => candle_core::bail!(
                "Mamba conv: expected f32 or f64 inputs of one dtype, found {:?}, {:?}, {:?}",
                xz.dtype(),
                w.dtype(),
                bias.dtype()
            ),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        xz: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (sx, lx) = xz.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sb, lb) = bias.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let dims = dims_of(lx, lw, lb)?;
        let dev = xz.device();
        macro_rules! go {
            ($t:ty) => {{
                let (dxz, dw, db) = bwd_typed::<$t>(
                    dims,
                    cpu_slice(&sx, lx, "Mamba conv input")?,
                    cpu_slice(&sw, lw, "Mamba conv weight")?,
                    cpu_slice(&sb, lb, "Mamba conv bias")?,
                    cpu_slice(&sg, lg, "Mamba conv grad")?,
                );
                (
                    Tensor::from_vec(dxz, lx.shape(), dev)?,
                    Tensor::from_vec(dw, lw.shape(), dev)?,
                    Tensor::from_vec(db, lb.shape(), dev)?,
                )
            }};
        }
        let (a, b, c) = match xz.dtype() {
            candle_core::DType::F32 => go!(f32),
            candle_core::DType::F64 => go!(f64),
            dt => candle_core::bail!("Mamba conv backward: unsupported dtype {dt:?}"),
        };
        Ok((Some(a), Some(b), Some(c)))
    }
}

/// `uz = [silu(causal_dwconv(x) + bias) | z]` for `xz = [x | z] (B, L, 2D)`,
/// `weight (D, W)`, `bias (D)`.
pub fn conv_silu(xz: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = xz.dtype();
    xz.contiguous()?.apply_op3(
        &weight.to_dtype(dtype)?.contiguous()?,
        &bias.to_dtype(dtype)?.contiguous()?,
        ConvSilu,
    )
}
