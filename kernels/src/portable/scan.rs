//! Linear recurrences `h_t = a_t h_{t-1} + u_t` along axis 1 of `(B, L, C)`
//! tensors, by the log-depth Hillis–Steele scan: after round `k` position `t`
//! holds the composition of the maps over `(t - 2^k, t]`, so `ceil(log2 L)`
//! rounds of a shift, a multiply and an add finish it. `O(L log L)` work and
//! memory for the backward pass, `O(log L)` launches: the right trade on a GPU
//! for the lengths these layers run at, and exact up to rounding.
//!
//! Both scans widen to the accumulation dtype ([`super::accumulation_dtype`])
//! and return the states in it.

use candle_core::{Result, Tensor};

use super::widen;

/// `t (A, L, C)` moved `s` positions later along axis 1, the first `s` filled with `fill`.
fn shift(t: &Tensor, s: usize, fill: f64) -> Result<Tensor> {
    let (a, l, c) = t.dims3()?;
    let head = (Tensor::ones((a, s, c), t.dtype(), t.device())? * fill)?;
    Tensor::cat(&[&head, &t.narrow(1, 0, l - s)?], 1)
}

/// `a` as `(A, L, C)` with `A` 1 or `batch`: a `(C)` transition is the same at
/// every position and in every batch.
fn transitions(a: &Tensor, b: usize, l: usize, c: usize, what: &str) -> Result<Tensor> {
    let a = widen(a)?;
    let shaped = match a.rank() {
        1 => a.reshape((1, 1, c))?.broadcast_as((1, l, c)),
        3 if a.dim(0)? == b || a.dim(0)? == 1 => a.broadcast_as((a.dim(0)?, l, c)),
        _ => Err(candle_core::Error::Msg(String::new())),
    };
    shaped
        .and_then(|t| t.contiguous())
        .map_err(|_| {
            candle_core::Error::Msg(format!(
                "{what}: expected transitions of shape ({c}), (1, {l}, {c}) or ({b}, {l}, {c}), found {:?}",
                a.shape()
            ))
        })
}

/// The inputs with the initial state folded into position 0: `u_0 + a_0 h0`.
fn fold_initial(u: &Tensor, a0: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    let Some(h0) = h0 else {
        return Ok(u.clone());
    };
    let l = u.dim(1)?;
    let h0 = widen(h0)?.to_dtype(u.dtype())?.unsqueeze(1)?;
    let first = (u.narrow(1, 0, 1)? + a0.broadcast_mul(&h0)?)?;
    if l == 1 {
        return Ok(first);
    }
    Tensor::cat(&[&first, &u.narrow(1, 1, l - 1)?], 1)
}

/// The real scan: `u (B, L, C)`, `a` of shape `(C)`, `(1, L, C)` or
/// `(B, L, C)`, `h0 (B, C)` (zeros when `None`). Returns every state `(B, L, C)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu)?; // (1, 3, 1)
/// let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu)?;
/// let h = lrnnx_kernels::portable::scan::real_scan(&u, &a, None)?;
/// assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 1.5, 4.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn real_scan(u: &Tensor, a: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    let u = widen(u)?;
    let (b, l, c) = u.dims3()?;
    if l == 0 {
        return Ok(u);
    }
    let mut a = transitions(a, b, l, c, "real scan")?.to_dtype(u.dtype())?;
    let mut h = fold_initial(&u, &a.narrow(1, 0, 1)?, h0)?;
    let mut s = 1;
    while s < l {
        h = (&h + a.broadcast_mul(&shift(&h, s, 0.0)?)?)?;
        if 2 * s < l {
            a = (&a * shift(&a, s, 1.0)?)?;
        }
        s *= 2;
    }
    Ok(h)
}

/// A split-complex tensor `(.., 2N)` as its real and imaginary halves.
fn halves(t: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = t.dim(candle_core::D::Minus1)? / 2;
    Ok((
        t.narrow(candle_core::D::Minus1, 0, n)?,
        t.narrow(candle_core::D::Minus1, n, n)?,
    ))
}

/// The complex scan in the kernels' split layout (the last axis holds the `N`
/// real parts, then the `N` imaginary parts): `u (B, L, 2N)`, `lambda` of
/// shape `(2N)`, `(1, L, 2N)` or `(B, L, 2N)`, `h0 (B, 2N)`. Returns every
/// state `(B, L, 2N)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // One channel, lambda = i: the state rotates by 90 degrees each step.
/// let lam = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// let u = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], &Device::Cpu)?;
/// let h = lrnnx_kernels::portable::scan::complex_scan(&u, &lam, None)?;
/// assert_eq!(h.to_vec3::<f32>()?, vec![vec![vec![1.0, 0.0], vec![0.0, 1.0]]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn complex_scan(u: &Tensor, lambda: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    let u = widen(u)?;
    let (b, l, n2) = u.dims3()?;
    if n2 % 2 != 0 {
        candle_core::bail!(
            "complex scan: u must be (B, L, 2N) with an even last axis, found {:?}",
            u.shape()
        );
    }
    if l == 0 {
        return Ok(u);
    }
    let lam = transitions(lambda, b, l, n2, "complex scan")?.to_dtype(u.dtype())?;
    let (mut ar, mut ai) = halves(&lam)?;
    let (ur, ui) = halves(&u)?;
    let (mut hr, mut hi) = match h0 {
        None => (ur, ui),
        Some(h0) => {
            let (h0r, h0i) = halves(&widen(h0)?.to_dtype(u.dtype())?)?;
            let (a0r, a0i) = (ar.narrow(1, 0, 1)?, ai.narrow(1, 0, 1)?);
            // a0 * h0, complex.
            let (h0r, h0i) = (h0r.unsqueeze(1)?, h0i.unsqueeze(1)?);
            let pr = (a0r.broadcast_mul(&h0r)? - a0i.broadcast_mul(&h0i)?)?;
            let pi = (a0r.broadcast_mul(&h0i)? + a0i.broadcast_mul(&h0r)?)?;
            let z = Tensor::zeros_like(&pr)?;
            let fold = |x: &Tensor, p: &Tensor| -> Result<Tensor> {
                if l == 1 {
                    return x + p;
                }
                let rest = z.broadcast_as((b, l - 1, n2 / 2))?;
                x + Tensor::cat(&[p, &rest], 1)?
            };
            (fold(&ur, &pr)?, fold(&ui, &pi)?)
        }
    };
    let mut s = 1;
    while s < l {
        let (pr, pi) = (shift(&hr, s, 0.0)?, shift(&hi, s, 0.0)?);
        let nr = (&hr + (ar.broadcast_mul(&pr)? - ai.broadcast_mul(&pi)?)?)?;
        let ni = (&hi + (ar.broadcast_mul(&pi)? + ai.broadcast_mul(&pr)?)?)?;
        (hr, hi) = (nr, ni);
        if 2 * s < l {
            let (qr, qi) = (shift(&ar, s, 1.0)?, shift(&ai, s, 0.0)?);
            let nr = ((&ar * &qr)? - (&ai * &qi)?)?;
            let ni = ((&ar * &qi)? + (&ai * &qr)?)?;
            (ar, ai) = (nr, ni);
        }
        s *= 2;
    }
    Tensor::cat(&[&hr, &hi], candle_core::D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use lrnnx_testing::{max_err, randn, vec1 as values};

    /// The recurrence stepped plainly, in f64: `a` is `(B, L, C)`.
    fn stepped(u: &[f64], a: &[f64], h0: &[f64], (b, l, c): (usize, usize, usize)) -> Vec<f64> {
        let mut h = vec![0.0; b * l * c];
        for bi in 0..b {
            for ci in 0..c {
                let mut s = h0[bi * c + ci];
                for t in 0..l {
                    let i = (bi * l + t) * c + ci;
                    s = a[i] * s + u[i];
                    h[i] = s;
                }
            }
        }
        h
    }

    #[test]
    fn real_scan_matches_the_stepped_recurrence_at_odd_lengths() {
        for (b, l, c) in [(1, 1, 1), (2, 3, 5), (3, 17, 4), (1, 64, 3), (2, 100, 7)] {
            let u = randn(&[b, l, c], 1, DType::F64);
            let a = (randn(&[b, l, c], 2, DType::F64).tanh().unwrap() * 0.99).unwrap();
            let h0 = randn(&[b, c], 3, DType::F64);
            let got = values(&real_scan(&u, &a, Some(&h0)).unwrap());
            let want = stepped(&values(&u), &values(&a), &values(&h0), (b, l, c));
            let err = max_err(&got, &want);
            assert!(err < 1e-12, "({b},{l},{c}): {err:e}");
        }
    }

    #[test]
    fn real_scan_broadcasts_a_shared_transition() {
        let (b, l, c) = (3, 9, 4);
        let u = randn(&[b, l, c], 4, DType::F64);
        let a = (randn(&[c], 5, DType::F64).tanh().unwrap() * 0.9).unwrap();
        let full = a
            .reshape((1, 1, c))
            .unwrap()
            .broadcast_as((b, l, c))
            .unwrap();
        let got = values(&real_scan(&u, &a, None).unwrap());
        let zeros = vec![0.0; b * c];
        let want = stepped(
            &values(&u),
            &values(&full.contiguous().unwrap()),
            &zeros,
            (b, l, c),
        );
        assert!(max_err(&got, &want) < 1e-12);
    }

    #[test]
    fn complex_scan_matches_the_fused_kernel() {
        for (b, l, n) in [(1, 1, 1), (2, 5, 3), (3, 33, 8), (2, 70, 5)] {
            let u = randn(&[b, l, 2 * n], 6, DType::F64);
            let h0 = randn(&[b, 2 * n], 7, DType::F64);
            // Time-varying transitions inside the unit disk.
            let lam = (randn(&[b, l, 2 * n], 8, DType::F64).tanh().unwrap() * 0.7).unwrap();
            let want = crate::scan_tv::complex_diag_scan_tv(&u, &lam, Some(&h0)).unwrap();
            let got = complex_scan(&u, &lam, Some(&h0)).unwrap();
            let err = max_err(&values(&got), &values(&want));
            assert!(err < 1e-12, "tv ({b},{l},{n}): {err:e}");
            let lam = (randn(&[2 * n], 9, DType::F64).tanh().unwrap() * 0.7).unwrap();
            let want = crate::scan::complex_diag_scan(&u, &lam, Some(&h0)).unwrap();
            let got = complex_scan(&u, &lam, Some(&h0)).unwrap();
            let err = max_err(&values(&got), &values(&want));
            assert!(err < 1e-12, "lti ({b},{l},{n}): {err:e}");
        }
    }

    #[test]
    fn bf16_inputs_accumulate_in_f32() {
        let u = randn(&[2, 40, 3], 10, DType::F32);
        let a = (randn(&[3], 11, DType::F32).tanh().unwrap() * 0.95).unwrap();
        let h = real_scan(&u.to_dtype(DType::BF16).unwrap(), &a, None).unwrap();
        assert_eq!(h.dtype(), DType::F32);
        let exact = real_scan(&u, &a, None).unwrap();
        // Only the inputs were rounded, each by at most 2^-8 of itself, and
        // every state sums them with weights |a|^k: the error is bounded by
        // 2^-8 max|u| sum_k max|a|^k.
        let max_a = values(&a).iter().fold(0f64, |m, x| m.max(x.abs()));
        let max_u = values(&u).iter().fold(0f64, |m, x| m.max(x.abs()));
        let bound = 2f64.powi(-8) * max_u / (1.0 - max_a);
        let err = max_err(&values(&h), &values(&exact));
        assert!(err > 0.0 && err <= bound, "{err} vs bound {bound}");
    }
}
