//! S7's input-dependent `B` and `C` without materialising them over the sequence.
//!
//! x_proj produces, per token, `B (H, N)` and `C (H, N)` from `u (H)` (rows
//! `h*N + n` of their weight blocks, the "(h n)" layout). S7 only needs
//! ```text
//! Bu[t,n]  = sum_h B[t,h,n] u[t,h]        = sum_{h,k} u[t,h] Wb[h*N+n, k] u[t,k]
//! yc[t,h]  = sum_n C[t,h,n] s[t,n]        = sum_{n,k} Wc[h*N+n, k] u[t,k] s[t,n]
//! ```
//! Both ops compute `u @ W^T` for a chunk of tokens at a time (a GEMM into a
//! buffer that stays in cache) and contract it at once, so the `(B, L, H, N)`
//! tensors never exist. Their backward passes recompute the chunk's GEMM.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{contiguous, tensor, with_cpu_slice, Float};
use lrnnx_kernels::portable::use_fused_cpu;

use super::contract::{
    accumulate, add_weighted_rows, bu_custom_op, check_uw, dot_from, outer, BuOp,
};

/// Tokens per GEMM chunk: a `(CHUNK, H*N)` buffer of a few MB.
const CHUNK: usize = 512;

/// Chunks `(first token, tokens)` of `0..t`.
fn chunks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(CHUNK).map(move |c0| (c0, CHUNK.min(t - c0)))
}

/// `a (m, k) @ w^T` for `w (n, k)`, as a CPU tensor `(m, n)`.
fn gemm_nt<T: Float>(a: &[T], m: usize, k: usize, w: &Tensor) -> Result<Tensor> {
    Tensor::from_slice(a, (m, k), &Device::Cpu)?.matmul(&w.t()?)
}

/// For each chunk of tokens, `P = u_chunk @ w^T` (`w (H*N, H)`), then
/// `f(t, P[i], out_t)` for each token `t = c0 + i` of the chunk in parallel,
/// with `P[i]` its `H*N` products and `out_t` its `width` outputs.
fn per_token_products<T: Float>(
    u: &[T],
    t: usize,
    h: usize,
    w: &Tensor,
    out: &mut [T],
    width: usize,
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) -> Result<()> {
    let hn = w.dim(0)?;
    for (c0, tc) in chunks(t) {
        let p = gemm_nt(&u[c0 * h..(c0 + tc) * h], tc, h, w)?;
        with_slice::<T, _>(&p, |p| {
            out[c0 * width..(c0 + tc) * width]
                .par_chunks_mut(width)
                .enumerate()
                .for_each(|(i, o)| f(c0 + i, &p[i * hn..(i + 1) * hn], o));
            Ok(())
        })?;
    }
    Ok(())
}

/// The gradient of a chunk's per-token `(H, N)` matrices (`B` or `C`),
/// `G[i, r*N + j] = a[i, r] b[i, j]` for `a (tc, H)`, `b (tc, N)`, as a tensor
/// `(tc, H*N)`; the weight's share `G^T uc` is added into `dw`.
fn matrix_grad<T: Float>(
    a: &[T],
    b: &[T],
    uc: &[T],
    (tc, h, n): (usize, usize, usize),
    dw: &mut Option<Tensor>,
) -> Result<Tensor> {
    let mut g = vec![T::default(); tc * h * n];
    g.par_chunks_mut(h * n).enumerate().for_each(|(i, row)| {
        outer(row, &a[i * h..(i + 1) * h], &b[i * n..(i + 1) * n]);
    });
    let g = tensor(g, (tc, h * n))?;
    let uct = Tensor::from_slice(uc, (tc, h), &Device::Cpu)?;
    accumulate(dw, g.t()?.matmul(&uct)?)?;
    Ok(g)
}

/// The summed weight gradient, zeros when there were no chunks.
fn weight_grad(dw: Option<Tensor>, w: &Tensor) -> Result<Tensor> {
    match dw {
        Some(dw) => Ok(dw),
        None => w.zeros_like(),
    }
}

/// Runs `f` on a CPU tensor's contiguous slice.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    with_cpu_slice(t, "S7 bilinear buffer", f)
}

/// `Bu[t,n] = sum_h (u Wb^T)[t, h*N+n] u[t,h]` on `(u (T, H), Wb (H*N, H))`.
#[derive(Debug, Clone)]
pub struct BInput {
    /// State size `N`.
    pub n: usize,
    /// The weight block, the op's second input (kept here for the GEMM).
    pub w: Tensor,
}

impl BuOp for BInput {
    fn n(&self) -> usize {
        self.n
    }

    fn fwd_into<T: Float>(&self, u: &[T], t: usize, h: usize, out: &mut [T]) -> Result<()> {
        per_token_products(u, t, h, &self.w, out, self.n, |tok, p, o| {
            add_weighted_rows(o, &u[tok * h..(tok + 1) * h], p);
        })
    }

    /// `(du, dWb)` from `g = dL/dBu (T, N)`.
    fn bwd_typed<T: Float>(&self, u: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (t, h) = u.dims2()?;
        let n = self.n;
        let mut dw: Option<Tensor> = None;
        let mut du = vec![T::default(); t * h];
        with_slice::<T, _>(u, |us| {
            with_slice::<T, _>(g, |gs| {
                for (c0, tc) in chunks(t) {
                    let uc = &us[c0 * h..(c0 + tc) * h];
                    let gc = &gs[c0 * n..(c0 + tc) * n];
                    // G[i, h*N+n] = u[i,h] g[i,n]: the gradient of B itself.
                    let gb = matrix_grad(uc, gc, uc, (tc, h, n), &mut dw)?;
                    // Through the right factor u: G @ Wb; through the left one: sum_n g P.
                    let du2 = gb.matmul(&self.w)?;
                    let p = gemm_nt(uc, tc, h, &self.w)?;
                    with_slice::<T, _>(&du2, |du2| {
                        with_slice::<T, _>(&p, |p| {
                            du[c0 * h..(c0 + tc) * h]
                                .par_chunks_mut(h)
                                .enumerate()
                                .for_each(|(i, o)| {
                                    let gi = &gc[i * n..(i + 1) * n];
                                    for (hh, o) in o.iter_mut().enumerate() {
                                        let row = &p[(i * h + hh) * n..(i * h + hh + 1) * n];
                                        *o = dot_from(du2[i * h + hh], row, gi);
                                    }
                                });
                            Ok(())
                        })
                    })?;
                }
                Ok(())
            })
        })?;
        Ok((tensor(du, (t, h))?, weight_grad(dw, &self.w)?))
    }
}

bu_custom_op!(BInput, "s7-b-input");

/// `yc[t,h] = sum_n (u Wc^T)[t, h*N+n] s[t,n]` on `(s (T, N), u (T, H), Wc (H*N, H))`.
#[derive(Debug, Clone)]
pub struct COutput {
    /// State size `N`.
    pub n: usize,
    /// The weight block, the op's third input (kept here for the GEMM).
    pub w: Tensor,
}

impl COutput {
    fn fwd<T: Float>(&self, s: &[T], u: &[T], t: usize, h: usize) -> Result<Vec<T>> {
        let n = self.n;
        let mut out = vec![T::default(); t * h];
        per_token_products(u, t, h, &self.w, &mut out, h, |tok, p, o| {
            let st = &s[tok * n..(tok + 1) * n];
            for (hh, o) in o.iter_mut().enumerate() {
                *o = dot_from(T::default(), &p[hh * n..(hh + 1) * n], st);
            }
        })?;
        Ok(out)
    }

    /// `(ds, du, dWc)` from `g = dL/dyc (T, H)`.
    fn bwd_typed<T: Float>(
        &self,
        s: &Tensor,
        u: &Tensor,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (t, h) = u.dims2()?;
        let n = self.n;
        let mut dw: Option<Tensor> = None;
        let mut ds = vec![T::default(); t * n];
        let mut du = Vec::with_capacity(t * h);
        with_slice::<T, _>(s, |ss| {
            with_slice::<T, _>(u, |us| {
                with_slice::<T, _>(g, |gs| {
                    for (c0, tc) in chunks(t) {
                        let uc = &us[c0 * h..(c0 + tc) * h];
                        let (sc, gc) = (&ss[c0 * n..(c0 + tc) * n], &gs[c0 * h..(c0 + tc) * h]);
                        // G[i, h*N+n] = g[i,h] s[i,n]: the gradient of C itself.
                        let gcm = matrix_grad(gc, sc, uc, (tc, h, n), &mut dw)?;
                        with_slice::<T, _>(&gcm.matmul(&self.w)?, |d| {
                            du.extend_from_slice(d);
                            Ok(())
                        })?;
                        let p = gemm_nt(uc, tc, h, &self.w)?;
                        with_slice::<T, _>(&p, |p| {
                            ds[c0 * n..(c0 + tc) * n]
                                .par_chunks_mut(n)
                                .enumerate()
                                .for_each(|(i, o)| {
                                    let pi = &p[i * h * n..(i + 1) * h * n];
                                    add_weighted_rows(o, &gc[i * h..(i + 1) * h], pi);
                                });
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
        })?;
        let dw = weight_grad(dw, &self.w)?;
        Ok((tensor(ds, (t, n))?, tensor(du, (t, h))?, dw))
    }
}

impl CustomOp3 for COutput {
    fn name(&self) -> &'static str {
        "s7-c-output"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        ls: &Layout,
        u: &CpuStorage,
        lu: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, h) = check_uw(lu.shape(), lw.shape(), self.n, "S7 C output")?;
        if ls.shape().dims() != [t, self.n] {
            candle_core::bail!(
                "S7 C output: expected s ({t}, {}), found {:?}",
                self.n,
                ls.shape().dims()
            );
        }
        let out = match (s, u, w) {
            (CpuStorage::F32(s), CpuStorage::F32(u), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.fwd(contiguous(s, ls, "s")?, contiguous(u, lu, "u")?, t, h)?)
            }
            (CpuStorage::F64(s), CpuStorage::F64(u), CpuStorage::F64(_)) => {
                CpuStorage::F64(self.fwd(contiguous(s, ls, "s")?, contiguous(u, lu, "u")?, t, h)?)
            }
            _ => candle_core::bail!(
                "S7 C output: expected f32 or f64 throughout, found {:?}, {:?}, {:?}",
                s.dtype(),
                u.dtype(),
                w.dtype()
            ),
        };
        Ok((out, Shape::from((t, h))))
    }

    fn bwd(
        &self,
        s: &Tensor,
        u: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ds, du, dw) = match u.dtype() {
            DType::F32 => self.bwd_typed::<f32>(s, u, g)?,
            DType::F64 => self.bwd_typed::<f64>(s, u, g)?,
            other => candle_core::bail!("S7 C output: unsupported dtype {other:?}"),
        };
        Ok((Some(ds), Some(du), Some(dw)))
    }
}

/// From this many tokens on, `B^T u` runs as the folded quadratic form of
/// [`super::quad`] (folding the weight costs about as much as ~100 tokens).
pub const FOLD_MIN_TOKENS: usize = 256;

/// `Bu (T, N)` from `u (T, H)` and the `B` block `wb (H*N, H)` of x_proj, in
/// the accumulation dtype of `u`: the fused CPU ops for CPU f32/f64, else
/// [`super::portable::b_input`].
pub fn b_input(u: &Tensor, wb: &Tensor, n: usize) -> Result<Tensor> {
    if !use_fused_cpu(u) {
        return super::portable::b_input(u, wb, n);
    }
    let w = wb.contiguous()?;
    let u = u.contiguous()?;
    if u.dim(0)? >= FOLD_MIN_TOKENS {
        u.apply_op2(&w, super::quad::BQuad::new(&w, n)?)
    } else {
        u.apply_op2(&w, BInput { n, w: w.clone() })
    }
}

/// `yc (T, H)` from the states `s (T, N)`, `u (T, H)` and the `C` block
/// `wc (H*N, H)`, in the accumulation dtype of `u`: the fused CPU op for CPU
/// f32/f64, else [`super::portable::c_output`].
pub fn c_output(s: &Tensor, u: &Tensor, wc: &Tensor) -> Result<Tensor> {
    if !use_fused_cpu(u) {
        return super::portable::c_output(s, u, wc);
    }
    let n = s.dim(1)?;
    let w = wc.contiguous()?;
    s.contiguous()?
        .apply_op3(&u.contiguous()?, &w, COutput { n, w: w.clone() })
}
