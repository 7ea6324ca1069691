//! `Bu[t,n] = u_t^T Q_n u_t` (S7's `B_t^T u_t`) with half the GEMM work of
//! materialising `B`, for long inputs.
//!
//! With `Q_n[h,k] = Wb[h*N+n, k]`, only the symmetric part of each `Q_n`
//! matters. Split the `H` coordinates into blocks `I_0, I_1, ...` of
//! [`BLOCK`]; block `i` takes the pairs `(h, k)` with `h` in `I_i` and
//! `k >= start(I_i)`, through the folded weight
//! ```text
//! M_i[(h,n), k] = Q_n[h,k]                 k in I_i
//!               = Q_n[h,k] + Q_n[k,h]      k after I_i
//! Bu[t,n] = sum_i sum_{h in I_i} u[t,h] (u[t, start(I_i)..] @ M_i^T)[t, (h,n)]
//! ```
//! which covers every pair once. With `m` blocks the GEMMs do
//! `(m+1)/(2m)` of the `H^2 N` multiply-adds per token (5/8 for `H = 256`).

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{tensor, with_cpu_slice, Float};

use super::contract::{accumulate, add_weighted_rows, bu_custom_op, dot_from, outer, BuOp};

/// Coordinates per block.
pub const BLOCK: usize = 64;

/// Tokens per GEMM chunk.
const CHUNK: usize = 1024;

/// One block of the folded form: `M (width*N, H - start)`.
#[derive(Debug, Clone)]
struct Folded {
    start: usize,
    width: usize,
    m: Tensor,
}

/// The folded op on `(u (T, H), Wb (H*N, H))`; see the module docs.
#[derive(Debug, Clone)]
pub struct BQuad {
    n: usize,
    blocks: Vec<Folded>,
}

/// Runs `f` on a CPU tensor's contiguous slice.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    with_cpu_slice(t, "S7 quadratic form buffer", f)
}

/// The blocks `(start, width)` of `0..h`.
fn blocks(h: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..h).step_by(BLOCK).map(move |s| (s, BLOCK.min(h - s)))
}

fn fold<T: Float>(wb: &[T], h: usize, n: usize) -> Result<Vec<Folded>> {
    blocks(h)
        .map(|(start, width)| {
            let kk = h - start;
            let mut m = vec![T::default(); width * n * kk];
            m.par_chunks_mut(kk).enumerate().for_each(|(row, out)| {
                let (hh, nn) = (start + row / n, row % n);
                let src = &wb[(hh * n + nn) * h + start..(hh * n + nn + 1) * h];
                out.copy_from_slice(src);
                for (kl, o) in out.iter_mut().enumerate().skip(width) {
                    let k = start + kl;
                    *o += wb[(k * n + nn) * h + hh];
                }
            });
            Ok(Folded {
                start,
                width,
                m: tensor(m, (width * n, kk))?,
            })
        })
        .collect()
}

/// The adjoint of [`fold`]: `dWb` from the gradients of the `M_i`.
fn unfold<T: Float>(dms: &[Vec<T>], h: usize, n: usize) -> Vec<T> {
    let mut dw = vec![T::default(); h * n * h];
    for ((start, width), dm) in blocks(h).zip(dms) {
        let kk = h - start;
        for row in 0..width * n {
            let (hh, nn) = (start + row / n, row % n);
            let src = &dm[row * kk..(row + 1) * kk];
            for (kl, &v) in src.iter().enumerate() {
                let k = start + kl;
                let o = (hh * n + nn) * h + k;
                dw[o] += v;
                if kl >= width {
                    let o = (k * n + nn) * h + hh;
                    dw[o] += v;
                }
            }
        }
    }
    dw
}

impl BQuad {
    /// Folds `wb (H*N, H)`.
    pub fn new(wb: &Tensor, n: usize) -> Result<Self> {
        let (hn, h) = wb.dims2()?;
        if hn != h * n {
            candle_core::bail!(
                "S7 B input: expected Wb ({}, {h}), found {:?}",
                h * n,
                wb.dims()
            );
        }
        let blocks = match wb.dtype() {
            DType::F32 => with_slice::<f32, _>(wb, |w| fold(w, h, n))?,
            DType::F64 => with_slice::<f64, _>(wb, |w| fold(w, h, n))?,
            other => candle_core::bail!("S7 B input: unsupported dtype {other:?}"),
        };
        Ok(Self { n, blocks })
    }

    /// `Bu` of the chunk `uc (tc, H)` added into `out (tc, N)`.
    fn chunk_fwd<T: Float>(&self, uc: &Tensor, us: &[T], h: usize, out: &mut [T]) -> Result<()> {
        let n = self.n;
        for blk in &self.blocks {
            let kk = h - blk.start;
            let p = uc.narrow(1, blk.start, kk)?.matmul(&blk.m.t()?)?;
            with_slice::<T, _>(&p, |p| {
                let wn = blk.width * n;
                out.par_chunks_mut(n).enumerate().for_each(|(i, o)| {
                    let ui = &us[i * h + blk.start..i * h + blk.start + blk.width];
                    add_weighted_rows(o, ui, &p[i * wn..(i + 1) * wn]);
                });
                Ok(())
            })?;
        }
        Ok(())
    }
}

impl BuOp for BQuad {
    fn n(&self) -> usize {
        self.n
    }

    fn fwd_into<T: Float>(&self, u: &[T], t: usize, h: usize, out: &mut [T]) -> Result<()> {
        let n = self.n;
        for c0 in (0..t).step_by(CHUNK) {
            let tc = CHUNK.min(t - c0);
            let us = &u[c0 * h..(c0 + tc) * h];
            let uc = Tensor::from_slice(us, (tc, h), &Device::Cpu)?;
            self.chunk_fwd(&uc, us, h, &mut out[c0 * n..(c0 + tc) * n])?;
        }
        Ok(())
    }

    /// `(du, dWb)` from `g = dL/dBu (T, N)`.
    fn bwd_typed<T: Float>(&self, u: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (t, h) = u.dims2()?;
        let n = self.n;
        let mut dms: Vec<Option<Tensor>> = vec![None; self.blocks.len()];
        let mut du = vec![T::default(); t * h];
        with_slice::<T, _>(u, |us| {
            with_slice::<T, _>(g, |gs| {
                for c0 in (0..t).step_by(CHUNK) {
                    let tc = CHUNK.min(t - c0);
                    let uc_s = &us[c0 * h..(c0 + tc) * h];
                    let gc = &gs[c0 * n..(c0 + tc) * n];
                    let uc = Tensor::from_slice(uc_s, (tc, h), &Device::Cpu)?;
                    let duc = &mut du[c0 * h..(c0 + tc) * h];
                    for (blk, dm) in self.blocks.iter().zip(dms.iter_mut()) {
                        let (start, width, kk) = (blk.start, blk.width, h - blk.start);
                        let wn = width * n;
                        // G[i, (h,n)] = u[i, start+h] g[i,n].
                        let mut gq = vec![T::default(); tc * wn];
                        gq.par_chunks_mut(wn).enumerate().for_each(|(i, row)| {
                            let ui = &uc_s[i * h + start..i * h + start + width];
                            outer(row, ui, &gc[i * n..(i + 1) * n]);
                        });
                        let gq = tensor(gq, (tc, wn))?;
                        let u_ge = uc.narrow(1, start, kk)?;
                        let part = gq.t()?.matmul(&u_ge)?;
                        accumulate(dm, part)?;
                        // Through the factor u[start..]: G @ M; through u[h in block]: sum_n g P.
                        let d_ge = gq.matmul(&blk.m)?;
                        let p = u_ge.matmul(&blk.m.t()?)?;
                        with_slice::<T, _>(&d_ge, |d_ge| {
                            with_slice::<T, _>(&p, |p| {
                                duc.par_chunks_mut(h).enumerate().for_each(|(i, o)| {
                                    let o = &mut o[start..];
                                    for (o, &v) in o.iter_mut().zip(&d_ge[i * kk..(i + 1) * kk]) {
                                        *o += v;
                                    }
                                    let gi = &gc[i * n..(i + 1) * n];
                                    for (hl, o) in o[..width].iter_mut().enumerate() {
                                        let row = &p[i * wn + hl * n..i * wn + (hl + 1) * n];
                                        *o += dot_from(T::default(), row, gi);
                                    }
                                });
                                Ok(())
                            })
                        })?;
                    }
                }
                Ok(())
            })
        })?;
        let mut dm_vecs = Vec::with_capacity(dms.len());
        for (blk, dm) in self.blocks.iter().zip(dms) {
            dm_vecs.push(match dm {
                Some(dm) => with_slice::<T, _>(&dm, |s| Ok(s.to_vec()))?,
                None => vec![T::default(); blk.width * n * (h - blk.start)],
            });
        }
        let dw = unfold(&dm_vecs, h, n);
        Ok((tensor(du, (t, h))?, tensor(dw, (h * n, h))?))
    }
}

bu_custom_op!(BQuad, "s7-b-quadratic-form");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bilinear::BInput;
    use candle_core::Var;
    use lrnnx_testing::{max_err, vec1};

    /// The folded form against the plain `B^T u`, values and gradients, over
    /// several blocks (one partial) and GEMM chunks (one partial).
    #[test]
    fn folded_form_equals_the_plain_one() {
        let (t, h, n) = (2 * CHUNK + 77, 2 * BLOCK + 22, 3);
        let dev = Device::Cpu;
        let u = Var::from_tensor(&Tensor::randn(0f64, 1.0, (t, h), &dev).unwrap()).unwrap();
        let wb = Var::from_tensor(&Tensor::randn(0f64, 0.1, (h * n, h), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f64, 1.0, (t, n), &dev).unwrap();
        let plain = u
            .as_tensor()
            .apply_op2(
                wb.as_tensor(),
                BInput {
                    n,
                    w: wb.as_tensor().clone(),
                },
            )
            .unwrap();
        let folded = u
            .as_tensor()
            .apply_op2(wb.as_tensor(), BQuad::new(wb.as_tensor(), n).unwrap())
            .unwrap();
        assert!(max_err(&vec1(&plain), &vec1(&folded)) < 1e-10);
        let gp = (plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = (folded * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("u", &u), ("Wb", &wb)] {
            let (a, b) = (
                vec1(gp.get(v.as_tensor()).unwrap()),
                vec1(gf.get(v.as_tensor()).unwrap()),
            );
            let err = max_err(&a, &b);
            assert!(err < 1e-9, "d{name}: {err}");
        }
    }
}
