//! The time-varying diagonal real scan `h_t = a_t * h_{t-1} + u_t` as a candle
//! op with a CPU forward (parallel over batch and channel blocks) and a
//! backward pass, for the real gated recurrences (RG-LRU, S7, Mamba-style
//! layers with one state per channel).
//!
//! Tensors are `(B, L, C)`: `u` (inputs), `a` (per-position decay), and the
//! result `h`; the initial state `h0` is `(B, C)`. Every channel of every
//! batch is an independent recurrence along `L`.
//!
//! - [`real_tv_scan`] / [`RealTvScan`]: the candle op (gradients to `u`, `a`, `h0`);
//! - [`scan`], [`scan_in_place`], [`scan_bwd`]: the CPU kernels on slices, for
//!   mixers that fuse the computation of `a` and `u` into their own ops
//!   (RG-LRU does).
//!
//! There is no CUDA kernel yet: on other devices [`real_tv_scan`] runs the
//! portable scan ([`crate::portable::scan`]).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{cpu_slice, dispatch3, SharedMut};
use crate::Real;

/// Widest channel block of one task. A task reads contiguous runs of up to
/// this many values per position, so consecutive positions stream through
/// memory (narrow blocks at a large row stride defeat the prefetchers).
const MAX_BLOCK: usize = 256;

/// Narrowest block used to make more tasks when the batch is small.
const MIN_BLOCK: usize = 32;

/// Below this many (batch x length x channel) updates a scan runs on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Shape of one scan problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TvDims {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub l: usize,
    /// Channels.
    pub c: usize,
}

impl TvDims {
    /// Channel block width: whole rows (up to `MAX_BLOCK`) when the batch
    /// alone makes enough tasks for the threads, narrower blocks otherwise.
    fn block(&self) -> usize {
        let want_tasks = 2 * rayon::current_num_threads().max(1);
        let per_batch = want_tasks.div_ceil(self.b.max(1));
        self.c
            .div_ceil(per_batch)
            .clamp(MIN_BLOCK, MAX_BLOCK)
            .min(self.c)
            .max(1)
    }

    /// Runs `f(batch, first channel, width)` for every (batch, channel block),
    /// in parallel when the problem is large enough.
    fn for_each_block(&self, f: impl Fn(usize, usize, usize) + Sync + Send) {
        let w = self.block();
        let blocks = self.c.div_ceil(w);
        let c = self.c;
        let run = |task: usize| {
            let (bi, blk) = (task / blocks, task % blocks);
            let c0 = blk * w;
            f(bi, c0, w.min(c - c0));
        };
        let tasks = self.b * blocks;
        if self.b * self.l * self.c < PARALLEL_THRESHOLD {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// Position of the `step`-th update (from the last one when `reverse`).
    #[inline]
    fn pos(&self, step: usize, reverse: bool) -> usize {
        if reverse {
            self.l - 1 - step
        } else {
            step
        }
    }

    fn check<T>(&self, what: &str, v: &[T], per_batch_row: bool) {
        let want = if per_batch_row {
            self.b * self.c
        } else {
            self.b * self.l * self.c
        };
        assert_eq!(
            v.len(),
            want,
            "real TV scan: {what} has the wrong length for {self:?}"
        );
    }
}

/// `h[b,t] = a[b,t] * h[b,t-1] + u[b,t]` for `t` in `0..L` (from `t = L-1`
/// down, with `h[b,t+1]` in place of `h[b,t-1]`, when `reverse`), starting
/// from `h0[b]` (zeros when `None`). `u`, `a` and the result are `(B, L, C)`,
/// `h0` is `(B, C)`, all contiguous.
///
/// # Panics
/// When a slice's length does not match `dims`.
pub fn scan<T: Real>(dims: TvDims, u: &[T], a: &[T], h0: Option<&[T]>, reverse: bool) -> Vec<T> {
    let mut h = u.to_vec();
    scan_in_place(dims, &mut h, a, h0, reverse);
    h
}

/// [`scan`] overwriting its input: `uh` holds `u` on entry and `h` on return.
///
/// # Panics
/// When a slice's length does not match `dims`.
pub fn scan_in_place<T: Real>(
    dims: TvDims,
    uh: &mut [T],
    a: &[T],
    h0: Option<&[T]>,
    reverse: bool,
) {
    let TvDims { l, c, .. } = dims;
    dims.check("u", uh, false);
    dims.check("a", a, false);
    if let Some(h0) = h0 {
        dims.check("h0", h0, true);
    }
    if uh.is_empty() {
        return;
    }
    let out = SharedMut::new(uh);
    dims.for_each_block(|bi, c0, w| {
        let out = &out;
        let mut st = [T::default(); MAX_BLOCK];
        let st = &mut st[..w];
        if let Some(h0) = h0 {
            st.copy_from_slice(&h0[bi * c + c0..bi * c + c0 + w]);
        }
        for step in 0..l {
            let row = (bi * l + dims.pos(step, reverse)) * c + c0;
            let at = &a[row..row + w];
            // SAFETY: row `t` of batch `bi`, channels c0..c0+w: this task's alone.
            let ht = unsafe { out.slice(row, w) };
            for j in 0..w {
                st[j] = at[j] * st[j] + ht[j];
                ht[j] = st[j];
            }
        }
    });
}

/// Gradients of the scan: given `g = dL/dh`, returns `(du, da, dh0)`.
///
/// With `s_t = dL/dh_t` accumulated against the scan's direction,
/// `s_t = g_t + a_{t+1} s_{t+1}`, and `du_t = s_t`, `da_t = s_t h_{t-1}`
/// (`h0` for the first update), `dh0 = a_0 s_0`. `h` is the forward's result.
///
/// # Panics
/// When a slice's length does not match `dims`.
pub fn scan_bwd<T: Real>(
    dims: TvDims,
    a: &[T],
    h: &[T],
    h0: Option<&[T]>,
    g: &[T],
    reverse: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let TvDims { b, l, c } = dims;
    dims.check("a", a, false);
    dims.check("h", h, false);
    dims.check("the gradient", g, false);
    if let Some(h0) = h0 {
        dims.check("h0", h0, true);
    }
    let mut du = vec![T::default(); b * l * c];
    let mut da = vec![T::default(); b * l * c];
    let mut dh0 = vec![T::default(); b * c];
    if du.is_empty() {
        return (du, da, dh0);
    }
    let (pdu, pda, pdh0) = (
        SharedMut::new(&mut du),
        SharedMut::new(&mut da),
        SharedMut::new(&mut dh0),
    );
    dims.for_each_block(|bi, c0, w| {
        let (pdu, pda, pdh0) = (&pdu, &pda, &pdh0);
        let mut carry = [T::default(); MAX_BLOCK];
        let carry = &mut carry[..w];
        let zeros = [T::default(); MAX_BLOCK];
        for step in (0..l).rev() {
            let t = dims.pos(step, reverse);
            let row = (bi * l + t) * c + c0;
            // The state this update was applied to.
            let prev = if step == 0 {
                match h0 {
                    Some(h0) => &h0[bi * c + c0..bi * c + c0 + w],
                    None => &zeros[..w],
                }
            } else {
                let r = (bi * l + dims.pos(step - 1, reverse)) * c + c0;
                &h[r..r + w]
            };
            let (gt, at) = (&g[row..row + w], &a[row..row + w]);
            // SAFETY: row `t` of batch `bi`, channels c0..c0+w: this task's alone.
            let (dut, dat) = unsafe { (pdu.slice(row, w), pda.slice(row, w)) };
            for j in 0..w {
                let s = gt[j] + carry[j];
                dut[j] = s;
                dat[j] = s * prev[j];
                carry[j] = at[j] * s;
            }
        }
        // SAFETY: batch `bi`, channels c0..c0+w: this task's alone.
        unsafe { pdh0.slice(bi * c + c0, w) }.copy_from_slice(carry);
    });
    (du, da, dh0)
}

/// The scan as a candle op on `(u, a, h0)`; `reverse` runs from the last position to the first.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTvScan {
    /// Run from `t = L-1` down to 0.
    pub reverse: bool,
}

fn dims_of(u: &Shape, a: &Shape, h0: &Shape) -> Result<TvDims> {
    let (b, l, c) = u.dims3()?;
    if a.dims() != [b, l, c] || h0.dims() != [b, c] {
        candle_core::bail!(
            "real TV scan: expected u (B, L, C), a (B, L, C), h0 (B, C); found u {:?}, a {:?}, h0 {:?}",
            u.dims(),
            a.dims(),
            h0.dims()
        );
    }
    Ok(TvDims { b, l, c })
}

impl RealTvScan {
    fn bwd_typed<T: Real>(
        &self,
        dims: TvDims,
        a: &Tensor,
        h: &Tensor,
        h0: &Tensor,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (sa, la) = a.storage_and_layout();
        let (sh, lh) = h.storage_and_layout();
        let (s0, l0) = h0.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (du, da, dh0) = scan_bwd(
            dims,
            cpu_slice::<T>(&sa, la, "real TV scan: a")?,
            cpu_slice::<T>(&sh, lh, "real TV scan: h")?,
            Some(cpu_slice::<T>(&s0, l0, "real TV scan: h0")?),
            cpu_slice::<T>(&sg, lg, "real TV scan: the gradient")?,
            self.reverse,
        );
        let dev = a.device();
        Ok((
            Tensor::from_vec(du, (dims.b, dims.l, dims.c), dev)?,
            Tensor::from_vec(da, (dims.b, dims.l, dims.c), dev)?,
            Tensor::from_vec(dh0, (dims.b, dims.c), dev)?,
        ))
    }
}

impl CustomOp3 for RealTvScan {
    fn name(&self) -> &'static str {
        "real-tv-scan"
    }

    fn cpu_fwd(
        &self,
        u: &CpuStorage,
        lu: &Layout,
        a: &CpuStorage,
        la: &Layout,
        h0: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(lu.shape(), la.shape(), lh.shape())?;
        let reverse = self.reverse;
        let out = dispatch3(
            "real TV scan",
            ["u", "a", "h0"],
            (u, lu),
            (a, la),
            (h0, lh),
            |u, a, h0| scan(dims, u, a, Some(h0), reverse),
            |u, a, h0| scan(dims, u, a, Some(h0), reverse),
        )?;
        Ok((out, lu.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        a: &Tensor,
        h0: &Tensor,
        h: &Tensor,
        grad_h: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = dims_of(u.shape(), a.shape(), h0.shape())?;
        let (a, h, h0) = (a.contiguous()?, h.contiguous()?, h0.contiguous()?);
        let g = grad_h.contiguous()?;
        let (du, da, dh0) = match a.dtype() {
            DType::F32 => self.bwd_typed::<f32>(dims, &a, &h, &h0, &g)?,
            DType::F64 => self.bwd_typed::<f64>(dims, &a, &h, &h0, &g)?,
            other => candle_core::bail!("real TV scan backward: unsupported dtype {other:?}"),
        };
        Ok((Some(du), Some(da), Some(dh0)))
    }
}

/// Runs `h_t = a_t * h_{t-1} + u_t` over `u, a (B, L, C)` from `h0 (B, C)`
/// (zeros when `None`) and returns every state `(B, L, C)`. Gradients flow to
/// `u`, `a` and `h0`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu)?; // (1, 3, 1)
/// let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu)?;
/// let h = lrnnx_kernels::scan_real_tv::real_tv_scan(&u, &a, None)?;
/// assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 1.5, 4.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// The fused kernel runs on CPU tensors (bf16/f16 widened to f32, states
/// returned in f32); on other devices, and under
/// [`crate::portable::with_portable`], the portable scan runs.
pub fn real_tv_scan(u: &Tensor, a: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    if !crate::portable::kernel_takes(u, false) {
        return crate::portable::scan::real_scan(u, a, h0);
    }
    let u = &crate::portable::widen(u)?;
    let (b, _, c) = u.dims3()?;
    let h0 = match h0 {
        Some(h) => h.to_dtype(u.dtype())?.contiguous()?,
        None => Tensor::zeros((b, c), u.dtype(), u.device())?,
    };
    let a = a.to_dtype(u.dtype())?.contiguous()?;
    u.contiguous()?
        .apply_op3(&a, &h0, RealTvScan { reverse: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_err, rand, vec1};
    use candle_core::{Device, Var};

    /// The obviously right loop, one channel at a time.
    fn naive(d: TvDims, u: &[f64], a: &[f64], h0: &[f64], reverse: bool) -> Vec<f64> {
        let mut h = vec![0.0; u.len()];
        for b in 0..d.b {
            for ch in 0..d.c {
                let mut x = h0[b * d.c + ch];
                let ts: Vec<usize> = if reverse {
                    (0..d.l).rev().collect()
                } else {
                    (0..d.l).collect()
                };
                for t in ts {
                    let i = (b * d.l + t) * d.c + ch;
                    x = a[i] * x + u[i];
                    h[i] = x;
                }
            }
        }
        h
    }

    #[test]
    fn matches_naive_loop_at_odd_shapes() {
        for (b, l, c) in [
            (1, 1, 1),
            (2, 7, 3),
            (3, 33, 17),
            (2, 5, 40),
            (2, 300, 70),
            (1, 20, 300),
            (3, 9, 600),
        ] {
            let d = TvDims { b, l, c };
            let u = rand(b * l * c, 1);
            let a: Vec<f64> = rand(b * l * c, 2).iter().map(|x| 0.99 * x).collect();
            let h0 = rand(b * c, 3);
            for reverse in [false, true] {
                let got = scan(d, &u, &a, Some(&h0), reverse);
                let err = max_err(&got, &naive(d, &u, &a, &h0, reverse));
                assert!(err < 1e-12, "({b},{l},{c}) reverse={reverse}: {err}");
            }
            let got = scan(d, &u, &a, None, false);
            let err = max_err(&got, &naive(d, &u, &a, &vec![0.0; b * c], false));
            assert!(err < 1e-12, "({b},{l},{c}) no h0: {err}");
        }
    }

    #[test]
    fn op_runs_in_f32_and_f64() {
        let (b, l, c) = (2, 9, 5);
        let d = TvDims { b, l, c };
        let (u, a, h0) = (rand(b * l * c, 4), rand(b * l * c, 5), rand(b * c, 6));
        let want = naive(d, &u, &a, &h0, false);
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let t = |v: &[f64], s: &[usize]| {
                Tensor::from_slice(v, s, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let h = real_tv_scan(
                &t(&u, &[b, l, c]),
                &t(&a, &[b, l, c]),
                Some(&t(&h0, &[b, c])),
            )
            .unwrap();
            let got = vec1(&h);
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            assert!(max_err(&got, &want) < tol, "{dtype:?}");
        }
        let bad = real_tv_scan(
            &Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap(),
            &Tensor::zeros((2, 3, 5), DType::F32, &dev).unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("[2, 3, 5]"), "{bad}");
    }

    /// Autograd through the op against central finite differences of
    /// `sum(h * w)`, for every input, both directions.
    #[test]
    fn gradients_match_finite_differences() {
        let (b, l, c) = (2, 11, 19);
        let dev = Device::Cpu;
        let w = Tensor::from_vec(rand(b * l * c, 7), (b, l, c), &dev).unwrap();
        for reverse in [false, true] {
            let u = Var::from_vec(rand(b * l * c, 8), (b, l, c), &dev).unwrap();
            let a = Var::from_vec(rand(b * l * c, 9), (b, l, c), &dev).unwrap();
            let h0 = Var::from_vec(rand(b * c, 10), (b, c), &dev).unwrap();
            let op = RealTvScan { reverse };
            let objective = || {
                u.as_tensor()
                    .apply_op3(a.as_tensor(), h0.as_tensor(), op)
                    .unwrap()
                    .mul(&w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let loss = || -> f64 { objective().to_scalar().unwrap() };
            let grads = objective().backward().unwrap();
            for (name, var) in [("u", &u), ("a", &a), ("h0", &h0)] {
                let g = vec1(grads.get(var.as_tensor()).unwrap());
                let base = vec1(var.as_tensor());
                for idx in [0, 1, base.len() / 2, base.len() - 2, base.len() - 1] {
                    let eps = 1e-6;
                    let bump = |delta: f64| {
                        let mut v = base.clone();
                        v[idx] += delta;
                        var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                            .unwrap();
                        let out = loss();
                        var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap())
                            .unwrap();
                        out
                    };
                    let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                    assert!(
                        (fd - g[idx]).abs() < 1e-7 * (1.0 + fd.abs()),
                        "reverse={reverse} d{name}[{idx}]: autograd {} vs finite differences {fd}",
                        g[idx]
                    );
                }
            }
        }
    }
}
