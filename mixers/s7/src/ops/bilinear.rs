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
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{contiguous, tensor, with_cpu_slice, Float};

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

/// Runs `f` on a CPU tensor's contiguous slice.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    with_cpu_slice(t, "S7 bilinear buffer", f)
}

/// Checks `u (T, H)` and `w (H*N, H)` and returns `(T, H)`.
fn check_uw(u: &Shape, w: &Shape, n: usize, what: &str) -> Result<(usize, usize)> {
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

/// `Bu[t,n] = sum_h (u Wb^T)[t, h*N+n] u[t,h]` on `(u (T, H), Wb (H*N, H))`.
#[derive(Debug, Clone)]
pub struct BInput {
    /// State size `N`.
    pub n: usize,
    /// The weight block, the op's second input (kept here for the GEMM).
    pub w: Tensor,
}

impl BInput {
    fn fwd<T: Float>(&self, u: &[T], t: usize, h: usize) -> Result<Vec<T>> {
        let n = self.n;
        let mut out = vec![T::default(); t * n];
        for (c0, tc) in chunks(t) {
            let p = gemm_nt(&u[c0 * h..(c0 + tc) * h], tc, h, &self.w)?;
            with_slice::<T, _>(&p, |p| {
                out[c0 * n..(c0 + tc) * n]
                    .par_chunks_mut(n)
                    .enumerate()
                    .for_each(|(i, o)| {
                        let ui = &u[(c0 + i) * h..(c0 + i + 1) * h];
                        let pi = &p[i * h * n..(i + 1) * h * n];
                        for (hh, &uh) in ui.iter().enumerate() {
                            for (o, &v) in o.iter_mut().zip(&pi[hh * n..(hh + 1) * n]) {
                                *o += uh * v;
                            }
                        }
                    });
                Ok(())
            })?;
        }
        Ok(out)
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
                    let mut gb = vec![T::default(); tc * h * n];
                    gb.par_chunks_mut(h * n).enumerate().for_each(|(i, row)| {
                        let (ui, gi) = (&uc[i * h..(i + 1) * h], &gc[i * n..(i + 1) * n]);
                        for (hh, &uh) in ui.iter().enumerate() {
                            for (r, &gv) in row[hh * n..(hh + 1) * n].iter_mut().zip(gi) {
                                *r = uh * gv;
                            }
                        }
                    });
                    let gb = tensor(gb, (tc, h * n))?;
                    let uct = Tensor::from_slice(uc, (tc, h), &Device::Cpu)?;
                    let part = gb.t()?.matmul(&uct)?;
                    dw = Some(match dw.take() {
                        Some(acc) => (acc + part)?,
                        None => part,
                    });
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
                                        let mut acc = du2[i * h + hh];
                                        for (&pv, &gv) in row.iter().zip(gi) {
                                            acc += pv * gv;
                                        }
                                        *o = acc;
                                    }
                                });
                            Ok(())
                        })
                    })?;
                }
                Ok(())
            })
        })?;
        let dw = match dw {
            Some(dw) => dw,
            None => self.w.zeros_like()?,
        };
        Ok((tensor(du, (t, h))?, dw))
    }
}

impl CustomOp2 for BInput {
    fn name(&self) -> &'static str {
        "s7-b-input"
    }

    fn cpu_fwd(
        &self,
        u: &CpuStorage,
        lu: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, h) = check_uw(lu.shape(), lw.shape(), self.n, "S7 B input")?;
        let out = match (u, w) {
            (CpuStorage::F32(u), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.fwd(contiguous(u, lu, "u")?, t, h)?)
            }
            (CpuStorage::F64(u), CpuStorage::F64(_)) => {
                CpuStorage::F64(self.fwd(contiguous(u, lu, "u")?, t, h)?)
            }
            _ => candle_core::bail!(
                "S7 B input: expected f32 or f64 throughout, found {:?}, {:?}",
                u.dtype(),
                w.dtype()
            ),
        };
        Ok((out, Shape::from((t, self.n))))
    }

    fn bwd(
        &self,
        u: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (du, dw) = match u.dtype() {
            DType::F32 => self.bwd_typed::<f32>(u, g)?,
            DType::F64 => self.bwd_typed::<f64>(u, g)?,
            other => candle_core::bail!("S7 B input: unsupported dtype {other:?}"),
        };
        Ok((Some(du), Some(dw)))
    }
}

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
        for (c0, tc) in chunks(t) {
            let p = gemm_nt(&u[c0 * h..(c0 + tc) * h], tc, h, &self.w)?;
            with_slice::<T, _>(&p, |p| {
                out[c0 * h..(c0 + tc) * h]
                    .par_chunks_mut(h)
                    .enumerate()
                    .for_each(|(i, o)| {
                        let si = &s[(c0 + i) * n..(c0 + i + 1) * n];
                        for (hh, o) in o.iter_mut().enumerate() {
                            let row = &p[(i * h + hh) * n..(i * h + hh + 1) * n];
                            let mut acc = T::default();
                            for (&pv, &sv) in row.iter().zip(si) {
                                acc += pv * sv;
                            }
                            *o = acc;
                        }
                    });
                Ok(())
            })?;
        }
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
                        let mut gcm = vec![T::default(); tc * h * n];
                        gcm.par_chunks_mut(h * n).enumerate().for_each(|(i, row)| {
                            let (gi, si) = (&gc[i * h..(i + 1) * h], &sc[i * n..(i + 1) * n]);
                            for (hh, &gv) in gi.iter().enumerate() {
                                for (r, &sv) in row[hh * n..(hh + 1) * n].iter_mut().zip(si) {
                                    *r = gv * sv;
                                }
                            }
                        });
                        let gcm = tensor(gcm, (tc, h * n))?;
                        let uct = Tensor::from_slice(uc, (tc, h), &Device::Cpu)?;
                        let part = gcm.t()?.matmul(&uct)?;
                        dw = Some(match dw.take() {
                            Some(acc) => (acc + part)?,
                            None => part,
                        });
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
                                    for (hh, &gv) in gc[i * h..(i + 1) * h].iter().enumerate() {
                                        let row = &p[(i * h + hh) * n..(i * h + hh + 1) * n];
                                        for (o, &pv) in o.iter_mut().zip(row) {
                                            *o += gv * pv;
                                        }
                                    }
                                });
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
        })?;
        let dw = match dw {
            Some(dw) => dw,
            None => self.w.zeros_like()?,
        };
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

/// `Bu (T, N)` from `u (T, H)` and the `B` block `wb (H*N, H)` of x_proj.
pub fn b_input(u: &Tensor, wb: &Tensor, n: usize) -> Result<Tensor> {
    let w = wb.contiguous()?;
    let u = u.contiguous()?;
    if u.dim(0)? >= FOLD_MIN_TOKENS {
        u.apply_op2(&w, super::quad::BQuad::new(&w, n)?)
    } else {
        u.apply_op2(&w, BInput { n, w: w.clone() })
    }
}

/// `yc (T, H)` from the states `s (T, N)`, `u (T, H)` and the `C` block `wc (H*N, H)`.
pub fn c_output(s: &Tensor, u: &Tensor, wc: &Tensor) -> Result<Tensor> {
    let n = s.dim(1)?;
    let w = wc.contiguous()?;
    s.contiguous()?
        .apply_op3(&u.contiguous()?, &w, COutput { n, w: w.clone() })
}
