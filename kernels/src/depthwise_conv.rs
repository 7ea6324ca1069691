//! The causal depthwise convolution of the mixers (RG-LRU, mLSTM, Mamba's
//! decoding step), PyTorch's `nn.Conv1d(D, D, W, groups=D, padding=W-1)(x)[..., :L]`
//! on `(B, L, D)` data:
//! `y[b,t,d] = bias[d] + sum_k w[d,k] x[b, t-(W-1)+k, d]` (zero before `t = 0`),
//! accumulated bias first, then taps `0..W` in order, with fused
//! multiply-adds ([`Float::fma`]).
//!
//! - [`depthwise_conv`]: the candle op, with a hand-written backward
//!   (gradients of the input, the weight and the bias);
//! - [`conv_step`]: one decoding step of one channel on its window of the
//!   last `W` inputs, with the same arithmetic as the op.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::cpu::{
    batch_dims, cpu_slice, dispatch3, for_rows, tensor, Float, SharedMut, ROWS_PER_TASK,
};
use crate::with_simd;

/// The convolution op on `(x (B, L, D), w (D, W), bias (D))`; `x` may also
/// be `(B*L, D)`, rows batch-major, with `B = batch`.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv {
    /// `B` for 2-D inputs.
    pub batch: usize,
}

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub l: usize,
    /// Channels.
    pub d: usize,
    /// Taps.
    pub w: usize,
}

fn dims_of(x: &Shape, w: &Shape, bias: &Shape, batch: usize) -> Result<Dims> {
    let (b, l, d) = batch_dims(x, batch, "depthwise conv input")?;
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

/// `y = w * x + y`, elementwise, fused.
#[inline(always)]
fn axpy<T: Float>(y: &mut [T], w: &[T], x: &[T]) {
    let n = y.len();
    let (w, x) = (&w[..n], &x[..n]);
    for j in 0..n {
        y[j] = w[j].fma(x[j], y[j]);
    }
}

/// One decoding step of one channel: `new` becomes `old` (the last `W`
/// inputs, oldest first) shifted left by one with `x` appended, and the
/// result is `bias + sum_k w[k] new[k]`, as the op computes it. All three
/// slices have length `W >= 1`.
#[inline(always)]
pub fn conv_step<T: Float>(old: &[T], x: T, w: &[T], bias: T, new: &mut [T]) -> T {
    let taps = new.len();
    new[..taps - 1].copy_from_slice(&old[1..taps]);
    new[taps - 1] = x;
    let mut acc = bias;
    for (&wk, &v) in w[..taps].iter().zip(new.iter()) {
        acc = wk.fma(v, acc);
    }
    acc
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

/// The convolution of `x (B*L, D)` with `w (D, W)` plus `bias (D)`, on slices.
pub fn forward<T: Float>(dims: Dims, x: &[T], w: &[T], bias: &[T]) -> Vec<T> {
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

/// `(dx, dw, dbias)` from `g = dL/dy`, on slices.
pub fn backward<T: Float>(dims: Dims, x: &[T], w: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
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
        let out = dispatch3(
            "depthwise conv",
            ["input", "weight", "bias"],
            (x, lx),
            (w, lw),
            (bias, lb),
            |x, w, b| forward(dims, x, w, b),
            |x, w, b| forward(dims, x, w, b),
        )?;
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
/// The fused op takes f32/f64 CPU tensors; everything else runs
/// [`crate::portable::conv::depthwise_conv`].
pub fn depthwise_conv(x: &Tensor, w: &Tensor, bias: &Tensor, batch: usize) -> Result<Tensor> {
    if !crate::portable::use_fused_cpu(x) {
        return crate::portable::conv::depthwise_conv(x, w, bias, batch);
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias.contiguous()?,
        DepthwiseConv { batch },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::tests::uniform;

    /// The convolution written plainly, in f64.
    fn naive(d: Dims, x: &[f64], w: &[f64], bias: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; d.b * d.l * d.d];
        for b in 0..d.b {
            for t in 0..d.l {
                for c in 0..d.d {
                    let mut acc = bias[c];
                    for k in 0..d.w {
                        // Tap k reads position t - (W-1) + k; zero before the start.
                        if let Some(src) = (t + k + 1).checked_sub(d.w) {
                            acc += w[c * d.w + k] * x[(b * d.l + src) * d.d + c];
                        }
                    }
                    y[(b * d.l + t) * d.d + c] = acc;
                }
            }
        }
        y
    }

    fn f64s(n: usize, seed: u64) -> Vec<f64> {
        uniform(n, -1.0, 1.0, seed)
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn worst(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    const SHAPES: [Dims; 5] = [
        Dims {
            b: 1,
            l: 1,
            d: 1,
            w: 1,
        },
        Dims {
            b: 2,
            l: 7,
            d: 3,
            w: 4,
        },
        Dims {
            b: 3,
            l: 2,
            d: 17,
            w: 4,
        },
        Dims {
            b: 1,
            l: 131,
            d: 5,
            w: 3,
        },
        Dims {
            b: 2,
            l: 65,
            d: 33,
            w: 5,
        },
    ];

    #[test]
    fn forward_matches_the_naive_sum() {
        for (i, d) in SHAPES.into_iter().enumerate() {
            let seed = 10 * i as u64;
            let (x, w, bias) = (
                f64s(d.b * d.l * d.d, seed),
                f64s(d.d * d.w, seed + 1),
                f64s(d.d, seed + 2),
            );
            let want = naive(d, &x, &w, &bias);
            let got = forward(d, &x, &w, &bias);
            assert!(worst(&got, &want) < 1e-14, "f64 {d:?}");
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = bias.iter().map(|&v| v as f32).collect();
            let got: Vec<f64> = forward(d, &x32, &w32, &b32)
                .into_iter()
                .map(f64::from)
                .collect();
            assert!(worst(&got, &want) < 1e-5, "f32 {d:?}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for (i, d) in SHAPES.into_iter().enumerate() {
            let seed = 10 * i as u64 + 5;
            let (x, w, bias, g) = (
                f64s(d.b * d.l * d.d, seed),
                f64s(d.d * d.w, seed + 1),
                f64s(d.d, seed + 2),
                f64s(d.b * d.l * d.d, seed + 3),
            );
            // L = sum g * y is linear in each input, so central differences are exact
            // up to rounding.
            let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
                naive(d, x, w, b).iter().zip(&g).map(|(y, g)| y * g).sum()
            };
            let fd = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
                (0..v.len())
                    .map(|j| {
                        let (mut p, mut m) = (v.to_vec(), v.to_vec());
                        p[j] += 1e-3;
                        m[j] -= 1e-3;
                        (f(&p) - f(&m)) / 2e-3
                    })
                    .collect()
            };
            let (dx, dw, db) = backward(d, &x, &w, &g);
            assert!(
                worst(&dx, &fd(&x, &|v| loss(v, &w, &bias))) < 1e-9,
                "dx {d:?}"
            );
            assert!(
                worst(&dw, &fd(&w, &|v| loss(&x, v, &bias))) < 1e-9,
                "dw {d:?}"
            );
            assert!(
                worst(&db, &fd(&bias, &|v| loss(&x, &w, v))) < 1e-9,
                "db {d:?}"
            );
        }
    }

    #[test]
    fn steps_reproduce_the_forward_bit_for_bit() {
        for (i, d) in SHAPES.into_iter().enumerate() {
            let seed = 10 * i as u64 + 7;
            let (x, w, bias) = (
                uniform(d.b * d.l * d.d, -1.0, 1.0, seed),
                uniform(d.d * d.w, -1.0, 1.0, seed + 1),
                uniform(d.d, -1.0, 1.0, seed + 2),
            );
            let want = forward(d, &x, &w, &bias);
            for b in 0..d.b {
                for c in 0..d.d {
                    let mut window = vec![0f32; d.w];
                    let mut next = vec![0f32; d.w];
                    let taps = &w[c * d.w..(c + 1) * d.w];
                    for t in 0..d.l {
                        let at = (b * d.l + t) * d.d + c;
                        let y = conv_step(&window, x[at], taps, bias[c], &mut next);
                        std::mem::swap(&mut window, &mut next);
                        assert_eq!(y.to_bits(), want[at].to_bits(), "{d:?} b {b} c {c} t {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_op_takes_3d_and_2d_inputs_and_has_gradients() -> Result<()> {
        use candle_core::{Device, Var};
        let d = Dims {
            b: 2,
            l: 9,
            d: 5,
            w: 4,
        };
        let dev = Device::Cpu;
        let x = Var::from_vec(f64s(d.b * d.l * d.d, 1), (d.b, d.l, d.d), &dev)?;
        let w = Var::from_vec(f64s(d.d * d.w, 2), (d.d, d.w), &dev)?;
        let bias = Var::from_vec(f64s(d.d, 3), d.d, &dev)?;
        let y = depthwise_conv(&x, &w, &bias, d.b)?;
        let want = naive(
            d,
            &x.flatten_all()?.to_vec1()?,
            &w.flatten_all()?.to_vec1()?,
            &bias.to_vec1()?,
        );
        assert!(worst(&y.flatten_all()?.to_vec1()?, &want) < 1e-14);
        let flat = x.reshape((d.b * d.l, d.d))?;
        let y2 = depthwise_conv(&flat, &w, &bias, d.b)?;
        assert_eq!(y2.dims(), &[d.b * d.l, d.d]);
        assert!(worst(&y2.flatten_all()?.to_vec1()?, &want) < 1e-14);
        let grads = y.sum_all()?.backward()?;
        for v in [x.as_tensor(), w.as_tensor(), bias.as_tensor()] {
            assert!(grads.get(v).is_some(), "a gradient is missing");
        }
        let e = depthwise_conv(&x, &w.narrow(0, 0, 4)?, &bias, d.b).unwrap_err();
        assert!(e.to_string().contains("expected x (B, L, D)"), "{e}");
        Ok(())
    }
}
