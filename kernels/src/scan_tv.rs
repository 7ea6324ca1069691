//! The time-varying diagonal complex scan `h_t = lambda_t * h_{t-1} + u_t`
//! as a candle op with a CPU forward and a backward pass.
//!
//! Layout ("split complex", as in [`crate::scan`]): the last axis holds `2N`
//! values, the real parts of the `N` channels, then the imaginary parts. `u`,
//! `lambda` and the result are `(B, L, 2N)`, the initial state `h0` is `(B, 2N)`.
//! This is the recurrence of event-driven (asynchronous) S5, where each
//! position has its own transition `lambda_t = exp(tau_t dt A)`.
//!
//! The CPU kernel splits the work over (batch, block of channels), as the
//! time-invariant scan does. The backward pass is one fused adjoint scan that
//! produces the gradients of `u` and `lambda` together:
//! `s_t = g_t + conj(lambda_{t+1}) s_{t+1}`, `du_t = s_t`,
//! `dlambda_t = s_t conj(h_{t-1})`, `dh0 = conj(lambda_0) s_0`.
//! There is no CUDA implementation yet: on other devices [`complex_diag_scan_tv`]
//! runs the portable scan ([`crate::portable::scan`]).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu::{dispatch3, SharedMut};
use crate::scan_cpu::{for_each_block, split_complex_dims, ScanDims, BLOCK};
use crate::Real;

/// Shape of one time-varying scan problem: the same as the time-invariant one's.
pub type TvDims = ScanDims;

/// `h[b,t] = lambda[b,t] * h[b,t-1] + u[b,t]` for `t` in `0..L`, starting
/// from `h0[b]`. `u`, `lambda` and the result are `(B, L, 2N)`, `h0` is
/// `(B, 2N)`, all contiguous.
pub fn scan_tv<T: Real>(d: TvDims, lambda: &[T], u: &[T], h0: &[T]) -> Vec<T> {
    let TvDims { b, l, n } = d;
    let mut h = vec![T::default(); b * l * 2 * n];
    if b * l * n == 0 {
        return h;
    }
    let out = SharedMut::new(&mut h);
    for_each_block(d, |bi, n0, w| {
        let out = &out;
        let mut hr = [T::default(); BLOCK];
        let mut hi = [T::default(); BLOCK];
        for j in 0..w {
            hr[j] = h0[bi * 2 * n + n0 + j];
            hi[j] = h0[bi * 2 * n + n + n0 + j];
        }
        for t in 0..l {
            let row = (bi * l + t) * 2 * n;
            let (ur, ui) = (
                &u[row + n0..row + n0 + w],
                &u[row + n + n0..row + n + n0 + w],
            );
            let (lr, li) = (
                &lambda[row + n0..row + n0 + w],
                &lambda[row + n + n0..row + n + n0 + w],
            );
            for j in 0..w {
                let r = lr[j] * hr[j] - li[j] * hi[j] + ur[j];
                let i = lr[j] * hi[j] + li[j] * hr[j] + ui[j];
                hr[j] = r;
                hi[j] = i;
            }
            // SAFETY: row `t` of batch `bi`, columns n0..n0+w (and N+n0..): this
            // task's alone; the buffer outlives the loop.
            unsafe {
                out.slice(row + n0, w).copy_from_slice(&hr[..w]);
                out.slice(row + n + n0, w).copy_from_slice(&hi[..w]);
            }
        }
    });
    h
}

/// The adjoint pass: from the output gradient `g`, the transitions `lambda`
/// and the states each position was applied to, `h_prev[b,t] = h[b,t-1]`
/// (`h0` at `t = 0`), returns `[s; dlambda]` as one `(2, B, L, 2N)` buffer:
/// `s_t = g_t + conj(lambda_{t+1}) s_{t+1}` (the gradient of `u_t`) and
/// `dlambda_t = s_t conj(h_prev_t)`.
pub fn adjoint_tv<T: Real>(d: TvDims, lambda: &[T], g: &[T], h_prev: &[T]) -> Vec<T> {
    let TvDims { b, l, n } = d;
    let size = b * l * 2 * n;
    let mut out = vec![T::default(); 2 * size];
    if b * l * n == 0 {
        return out;
    }
    let ptr = SharedMut::new(&mut out);
    for_each_block(d, |bi, n0, w| {
        let ptr = &ptr;
        // carry = conj(lambda_{t+1}) s_{t+1}, zero past the end.
        let mut cr = [T::default(); BLOCK];
        let mut ci = [T::default(); BLOCK];
        let mut sr = [T::default(); BLOCK];
        let mut si = [T::default(); BLOCK];
        let mut dr = [T::default(); BLOCK];
        let mut di = [T::default(); BLOCK];
        for t in (0..l).rev() {
            let row = (bi * l + t) * 2 * n;
            let re = row + n0..row + n0 + w;
            let im = row + n + n0..row + n + n0 + w;
            let (gr, gi) = (&g[re.clone()], &g[im.clone()]);
            let (lr, li) = (&lambda[re.clone()], &lambda[im.clone()]);
            let (pr, pi) = (&h_prev[re], &h_prev[im]);
            for j in 0..w {
                let (a, c) = (gr[j] + cr[j], gi[j] + ci[j]);
                sr[j] = a;
                si[j] = c;
                // s * conj(p)
                dr[j] = a * pr[j] + c * pi[j];
                di[j] = c * pr[j] - a * pi[j];
                // conj(lambda_t) * s_t, carried to t - 1.
                cr[j] = lr[j] * a + li[j] * c;
                ci[j] = lr[j] * c - li[j] * a;
            }
            // SAFETY: as in `scan_tv`; the two halves of `out` are disjoint.
            unsafe {
                ptr.slice(row + n0, w).copy_from_slice(&sr[..w]);
                ptr.slice(row + n + n0, w).copy_from_slice(&si[..w]);
                ptr.slice(size + row + n0, w).copy_from_slice(&dr[..w]);
                ptr.slice(size + row + n + n0, w).copy_from_slice(&di[..w]);
            }
        }
    });
    out
}

/// The forward op: inputs `(u, lambda, h0)`.
#[derive(Debug, Clone, Copy)]
pub struct TvComplexScan;

/// The adjoint op used by the backward pass: inputs `(g, lambda, h_prev)`,
/// output `(2, B, L, 2N)` holding `du` then `dlambda`.
#[derive(Debug, Clone, Copy)]
struct TvComplexScanAdjoint;

impl CustomOp3 for TvComplexScan {
    fn name(&self) -> &'static str {
        "complex-diag-scan-tv"
    }

    fn cpu_fwd(
        &self,
        u: &CpuStorage,
        lu: &Layout,
        lam: &CpuStorage,
        ll: &Layout,
        h0: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = split_complex_dims(
            "time-varying complex scan",
            "u (B, L, 2N), lambda (B, L, 2N), h0 (B, 2N)",
            [lu, ll, lh],
            |b, l, n2| [vec![b, l, n2], vec![b, n2]],
        )?;
        let out = dispatch3(
            "time-varying complex scan",
            ["u", "lambda", "h0"],
            (u, lu),
            (lam, ll),
            (h0, lh),
            |u, lam, h0| scan_tv(d, lam, u, h0),
            |u, lam, h0| scan_tv(d, lam, u, h0),
        )?;
        Ok((out, lu.shape().clone()))
    }

    fn bwd(
        &self,
        _u: &Tensor,
        lambda: &Tensor,
        h0: &Tensor,
        h: &Tensor,
        grad_h: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let l = h.dim(1)?;
        let h_prev = if l > 1 {
            Tensor::cat(&[&h0.unsqueeze(1)?, &h.narrow(1, 0, l - 1)?], 1)?
        } else {
            h0.unsqueeze(1)?
        };
        let both = grad_h.contiguous()?.apply_op3_no_bwd(
            &lambda.contiguous()?,
            &h_prev.contiguous()?,
            &TvComplexScanAdjoint,
        )?;
        let (s, g_lambda) = (both.get(0)?, both.get(1)?);
        // dL/dh0 = conj(lambda_0) s_0.
        let n = h0.dim(1)? / 2;
        let (s0, l0) = (
            s.narrow(1, 0, 1)?.squeeze(1)?,
            lambda.narrow(1, 0, 1)?.squeeze(1)?,
        );
        let split = |t: &Tensor| -> Result<(Tensor, Tensor)> {
            Ok((t.narrow(D::Minus1, 0, n)?, t.narrow(D::Minus1, n, n)?))
        };
        let ((sr, si), (lr, li)) = (split(&s0)?, split(&l0)?);
        let g_h0 = Tensor::cat(
            &[
                &((&sr * &lr)? + (&si * &li)?)?,
                &((&si * &lr)? - (&sr * &li)?)?,
            ],
            D::Minus1,
        )?;
        Ok((Some(s), Some(g_lambda), Some(g_h0)))
    }
}

impl CustomOp3 for TvComplexScanAdjoint {
    fn name(&self) -> &'static str {
        "complex-diag-scan-tv-adjoint"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        lam: &CpuStorage,
        ll: &Layout,
        hp: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = split_complex_dims(
            "time-varying complex scan backward",
            "the gradient, lambda and h_prev all (B, L, 2N)",
            [lg, ll, lh],
            |b, l, n2| [vec![b, l, n2], vec![b, l, n2]],
        )?;
        let out = dispatch3(
            "time-varying complex scan backward",
            ["the gradient", "lambda", "h_prev"],
            (g, lg),
            (lam, ll),
            (hp, lh),
            |g, lam, hp| adjoint_tv(d, lam, g, hp),
            |g, lam, hp| adjoint_tv(d, lam, g, hp),
        )?;
        Ok((out, Shape::from((2, d.b, d.l, 2 * d.n))))
    }
}

/// Runs `h_t = lambda_t * h_{t-1} + u_t` over `u (B, L, 2N)` with per-position
/// transitions `lambda`, from `h0 (B, 2N)` (zeros when `None`), and returns
/// every state `(B, L, 2N)`. `lambda` may be any shape that broadcasts to
/// `(B, L, 2N)` (e.g. `(1, L, 2N)` or `(B, 1, 2N)`); gradients reduce back to it.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // One channel; lambda = i, then 2: the state rotates, then doubles.
/// let lam = Tensor::new(&[[[0f32, 1.0], [2.0, 0.0]]], &Device::Cpu)?;
/// let u = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], &Device::Cpu)?;
/// let h0 = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
/// let h = lrnnx_kernels::scan_tv::complex_diag_scan_tv(&u, &lam, Some(&h0))?;
/// assert_eq!(h.to_vec3::<f32>()?, vec![vec![vec![1.0, 1.0], vec![2.0, 2.0]]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// The fused kernel runs on CPU tensors (bf16/f16 widened to f32, states
/// returned in f32); on other devices, and under
/// [`crate::portable::with_portable`], the portable scan runs.
pub fn complex_diag_scan_tv(u: &Tensor, lambda: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    if !crate::portable::kernel_takes(u, false) {
        return crate::portable::scan::complex_scan(u, lambda, h0);
    }
    let u = &crate::portable::widen(u)?;
    let (b, _, n2) = u.dims3()?;
    if n2 % 2 != 0 {
        candle_core::bail!(
            "time-varying complex scan: u must be (B, L, 2N) with an even last axis, found {:?}",
            u.shape()
        );
    }
    let h0 = match h0 {
        Some(h) => h.to_dtype(u.dtype())?.contiguous()?,
        None => Tensor::zeros((b, n2), u.dtype(), u.device())?,
    };
    let lambda = if lambda.dims() == u.dims() {
        lambda.to_dtype(u.dtype())?.contiguous()?
    } else {
        lambda
            .to_dtype(u.dtype())?
            .broadcast_as(u.shape())
            .map_err(|_| {
                candle_core::Error::Msg(format!(
                    "time-varying complex scan: lambda {:?} does not broadcast to u {:?}",
                    lambda.shape(),
                    u.shape()
                ))
            })?
            .contiguous()?
    };
    u.contiguous()?.apply_op3(&lambda, &h0, TvComplexScan)
}

/// Whether `dtype` is supported by the scan.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_err, naive_complex_scan, rand, vec1};
    use candle_core::{Device, Var};

    /// The obviously right version, with `lambda` read at every position.
    fn naive(d: TvDims, lam: &[f64], u: &[f64], h0: &[f64]) -> Vec<f64> {
        let n = d.n;
        let at = |b, t, c| {
            let o = (b * d.l + t) * 2 * n;
            (lam[o + c], lam[o + n + c])
        };
        naive_complex_scan((d.b, d.l, n), at, u, h0, false)
    }

    #[test]
    fn matches_naive_recurrence_at_odd_shapes() {
        // (2, 300, 40) crosses the parallel threshold and leaves a partial block.
        for (b, l, n) in [(1, 1, 1), (2, 7, 3), (3, 33, 17), (2, 300, 40)] {
            let d = TvDims { b, l, n };
            let lam: Vec<f64> = rand(b * l * 2 * n, 1).iter().map(|x| x * 0.7).collect();
            let u = rand(b * l * 2 * n, 2);
            let h0 = rand(b * 2 * n, 3);
            let want = naive(d, &lam, &u, &h0);
            assert!(max_err(&scan_tv(d, &lam, &u, &h0), &want) < 1e-12);
            // Through the candle op, in f64 and f32.
            let dev = Device::Cpu;
            let t3 = |v: &Vec<f64>| Tensor::from_vec(v.clone(), (b, l, 2 * n), &dev).unwrap();
            let h0t = Tensor::from_vec(h0.clone(), (b, 2 * n), &dev).unwrap();
            let got = complex_diag_scan_tv(&t3(&u), &t3(&lam), Some(&h0t)).unwrap();
            assert!(max_err(&vec1(&got), &want) < 1e-12);
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let got = complex_diag_scan_tv(&f(&t3(&u)), &f(&t3(&lam)), Some(&f(&h0t))).unwrap();
            assert!(max_err(&vec1(&got), &want) < 1e-4);
        }
    }

    #[test]
    fn constant_lambda_matches_the_time_invariant_scan() {
        let (b, l, n) = (2, 50, 5);
        let dev = Device::Cpu;
        let lam = Tensor::from_vec(
            rand(2 * n, 4).iter().map(|x| x * 0.9).collect::<Vec<_>>(),
            2 * n,
            &dev,
        )
        .unwrap();
        let u = Tensor::from_vec(rand(b * l * 2 * n, 5), (b, l, 2 * n), &dev).unwrap();
        let a = crate::scan::complex_diag_scan(&u, &lam, None).unwrap();
        let lam_b = lam.reshape((1, 1, 2 * n)).unwrap();
        let c = complex_diag_scan_tv(&u, &lam_b, None).unwrap();
        assert!(max_err(&vec1(&a), &vec1(&c)) < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        for (b, l, n) in [(2, 6, 3), (1, 1, 2), (2, 40, 17)] {
            let u = Var::from_vec(rand(b * l * 2 * n, 6), (b, l, 2 * n), &dev).unwrap();
            let lam_v: Vec<f64> = rand(b * l * 2 * n, 7).iter().map(|x| x * 0.8).collect();
            let lam = Var::from_vec(lam_v, (b, l, 2 * n), &dev).unwrap();
            let h0 = Var::from_vec(rand(b * 2 * n, 8), (b, 2 * n), &dev).unwrap();
            let w = Tensor::from_vec(rand(b * l * 2 * n, 9), (b, l, 2 * n), &dev).unwrap();
            let loss = |u: &Tensor, lam: &Tensor, h0: &Tensor| -> Tensor {
                // Quadratic in h so that every path of the chain rule is exercised.
                let h = complex_diag_scan_tv(u, lam, Some(h0)).unwrap();
                ((&h * &w).unwrap() + h.sqr().unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let grads = loss(u.as_tensor(), lam.as_tensor(), h0.as_tensor())
                .backward()
                .unwrap();
            let eps = 1e-6;
            for which in 0..3 {
                let var = [&u, &lam, &h0][which];
                let g = vec1(grads.get(var.as_tensor()).unwrap());
                let base = vec1(var.as_tensor());
                for idx in [0, base.len() / 3, base.len() / 2 + 1, base.len() - 1] {
                    let idx = idx.min(base.len() - 1);
                    let eval = |delta: f64| {
                        let mut v = base.clone();
                        v[idx] += delta;
                        let t = Tensor::from_vec(v, var.as_tensor().shape(), &dev).unwrap();
                        let mut args = [
                            u.as_tensor().clone(),
                            lam.as_tensor().clone(),
                            h0.as_tensor().clone(),
                        ];
                        args[which] = t;
                        loss(&args[0], &args[1], &args[2])
                            .to_scalar::<f64>()
                            .unwrap()
                    };
                    let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                    assert!(
                        (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "({b},{l},{n}) input {which} idx {idx}: autograd {} vs fd {fd}",
                        g[idx]
                    );
                }
            }
        }
    }

    #[test]
    fn broadcast_lambda_gets_reduced_gradients() {
        let dev = Device::Cpu;
        let (b, l, n) = (3, 5, 2);
        let u = Tensor::from_vec(rand(b * l * 2 * n, 1), (b, l, 2 * n), &dev).unwrap();
        let lam = Var::from_vec(
            rand(l * 2 * n, 2)
                .iter()
                .map(|x| x * 0.5)
                .collect::<Vec<_>>(),
            (1, l, 2 * n),
            &dev,
        )
        .unwrap();
        let h = complex_diag_scan_tv(&u, lam.as_tensor(), None).unwrap();
        let g = h.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(lam.as_tensor()).unwrap().dims(), &[1, l, 2 * n]);
        let bad = Tensor::zeros((2, l, 2 * n), DType::F64, &dev).unwrap();
        let e = complex_diag_scan_tv(&u, &bad, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not broadcast"), "{e}");
    }
}
