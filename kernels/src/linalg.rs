//! Dense linear algebra for the mixers' initialisations, in f64: the
//! Hermitian eigen-decomposition [`eigh`] behind the HiPPO/DPLR inits of the
//! S4 family and S5.

use num_complex::Complex64;

/// Most cyclic Jacobi sweeps [`eigh`] runs before it gives up (a finite
/// Hermitian matrix converges quadratically, in well under 20).
pub const MAX_SWEEPS: usize = 100;

/// Why [`eigh`] returned no decomposition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinalgError {
    /// The matrix does not have `n * n` entries.
    #[error("eigh: expected a {n} x {n} matrix ({} values), found {found} values", n * n)]
    NotSquare {
        /// The order the caller gave.
        n: usize,
        /// The number of values passed.
        found: usize,
    },
    /// The off-diagonal part did not vanish within [`MAX_SWEEPS`] sweeps.
    #[error(
        "eigh: expected convergence within {sweeps} Jacobi sweeps, found an off-diagonal \
         norm of {off:e} left (matrix norm {norm:e}); is every entry finite?"
    )]
    NotConverged {
        /// Sweeps run.
        sweeps: usize,
        /// Frobenius norm of the off-diagonal part left.
        off: f64,
        /// Frobenius norm of the matrix.
        norm: f64,
    },
}

/// Eigen-decomposition of the Hermitian matrix `h` (`n x n`, row-major) by
/// cyclic complex Jacobi rotations, as numpy's / torch's `eigh`: only the
/// lower triangle and the real part of the diagonal are read.
///
/// Returns the eigenvalues in ascending order and the eigenvectors as the
/// columns of a row-major `n x n` unitary matrix `V` (`h V = V diag(w)`).
/// Each eigenvector is only defined up to a phase (and, for a repeated
/// eigenvalue, up to a rotation within its eigenspace): callers that need a
/// canonical phase fix it themselves.
///
/// ```
/// use lrnnx_kernels::linalg::eigh;
/// use num_complex::Complex64 as C;
/// // [[2, -i], [i, 2]] has eigenvalues 1 and 3.
/// let h = [C::new(2.0, 0.0), C::new(0.0, -1.0), C::new(0.0, 1.0), C::new(2.0, 0.0)];
/// let (w, _v) = eigh(&h, 2)?;
/// assert!((w[0] - 1.0).abs() < 1e-14 && (w[1] - 3.0).abs() < 1e-14);
/// # Ok::<(), lrnnx_kernels::linalg::LinalgError>(())
/// ```
pub fn eigh(h: &[Complex64], n: usize) -> Result<(Vec<f64>, Vec<Complex64>), LinalgError> {
    if h.len() != n * n {
        return Err(LinalgError::NotSquare { n, found: h.len() });
    }
    // Hermitian completion from the lower triangle.
    let mut a = vec![Complex64::default(); n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = if i == j {
                Complex64::new(h[i * n + i].re, 0.0)
            } else {
                h[i * n + j]
            };
            a[i * n + j] = v;
            a[j * n + i] = v.conj();
        }
    }
    let mut v = vec![Complex64::default(); n * n];
    for i in 0..n {
        v[i * n + i] = Complex64::new(1.0, 0.0);
    }
    let squared_norm: f64 = a.iter().map(|z| z.norm().powi(2)).sum();
    let total = squared_norm.max(1e-300);
    let off_diagonal = |a: &[Complex64]| -> f64 {
        (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].norm().powi(2))
            .sum()
    };
    let mut converged = false;
    for _sweep in 0..MAX_SWEEPS {
        if off_diagonal(&a) <= 1e-30 * total {
            converged = true;
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    // The last sweep may have finished the job.
    let off = off_diagonal(&a);
    let settled = off <= 1e-30 * total;
    if !converged && !settled {
        return Err(LinalgError::NotConverged {
            sweeps: MAX_SWEEPS,
            off: off.sqrt(),
            norm: squared_norm.sqrt(),
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i * n + i].re.total_cmp(&a[j * n + j].re));
    let w: Vec<f64> = order.iter().map(|&i| a[i * n + i].re).collect();
    let mut vs = vec![Complex64::default(); n * n];
    for (col, &src) in order.iter().enumerate() {
        for k in 0..n {
            vs[k * n + col] = v[k * n + src];
        }
    }
    Ok((w, vs))
}

/// One Jacobi rotation on the `(p, q)` plane: zeroes `a[p, q]` and `a[q, p]`
/// by `A <- U^H A U`, `V <- V U`.
fn rotate(a: &mut [Complex64], v: &mut [Complex64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    let r = apq.norm();
    if r <= 1e-300 {
        return;
    }
    // Phase: column q times w, row q times conj(w), with w = conj(a_pq)/|a_pq|,
    // so that a_pq becomes real and positive (V follows the columns).
    let w = apq.conj() * (1.0 / r);
    for k in 0..n {
        a[k * n + q] *= w;
        v[k * n + q] *= w;
    }
    for k in 0..n {
        a[q * n + k] *= w.conj();
    }
    // Real Jacobi rotation on the now real symmetric 2x2 block.
    let (app, aqq) = (a[p * n + p].re, a[q * n + q].re);
    let theta = (aqq - app) / (2.0 * r);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let t = if theta == 0.0 { 1.0 } else { t };
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..n {
        let (kp, kq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = kp * c + kq * (-s);
        a[k * n + q] = kp * s + kq * c;
        let (vp, vq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = vp * c + vq * (-s);
        v[k * n + q] = vp * s + vq * c;
    }
    for k in 0..n {
        let (pk, qk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = pk * c + qk * (-s);
        a[q * n + k] = pk * s + qk * c;
    }
    a[p * n + q] = Complex64::default();
    a[q * n + p] = Complex64::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded uniform draw in `[-0.5, 0.5)`.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// A random Hermitian `n x n` matrix, row-major.
    fn random_hermitian(n: usize, seed: u64) -> Vec<Complex64> {
        let mut seed = seed;
        let mut a = vec![Complex64::default(); n * n];
        for i in 0..n {
            a[i * n + i] = Complex64::new(uniform(&mut seed), 0.0);
            for j in 0..i {
                let z = Complex64::new(uniform(&mut seed), uniform(&mut seed));
                a[i * n + j] = z;
                a[j * n + i] = z.conj();
            }
        }
        a
    }

    /// The slow check: `A v_k = w_k v_k` for every column, `V^H V = I`, `w` ascending.
    fn assert_decomposes(a: &[Complex64], n: usize, w: &[f64], v: &[Complex64], what: &str) {
        assert_eq!((w.len(), v.len()), (n, n * n), "{what}: output sizes");
        assert!(w.windows(2).all(|p| p[0] <= p[1]), "{what}: {w:?}");
        for k in 0..n {
            for i in 0..n {
                let av: Complex64 = (0..n).map(|j| a[i * n + j] * v[j * n + k]).sum();
                let err = (av - v[i * n + k] * w[k]).norm();
                assert!(err < 1e-12, "{what}: (A v_{k})_{i} off by {err}");
            }
            for l in 0..n {
                let dot: Complex64 = (0..n).map(|i| v[i * n + k].conj() * v[i * n + l]).sum();
                let want = if k == l { 1.0 } else { 0.0 };
                let err = (dot - want).norm();
                assert!(err < 1e-12, "{what}: (V^H V)_{k}{l} off by {err}");
            }
        }
    }

    #[test]
    fn decomposes_random_hermitian_matrices_of_odd_and_even_sizes() {
        for (n, seed) in [
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 4),
            (7, 5),
            (8, 6),
            (13, 7),
            (31, 8),
        ] {
            let a = random_hermitian(n, seed);
            let (w, v) = eigh(&a, n).unwrap();
            assert_decomposes(&a, n, &w, &v, &format!("n = {n}"));
            // The trace is the sum of the eigenvalues.
            let trace: f64 = (0..n).map(|i| a[i * n + i].re).sum();
            assert!((w.iter().sum::<f64>() - trace).abs() < 1e-12, "n = {n}");
        }
    }

    #[test]
    fn decomposes_matrices_with_repeated_eigenvalues() {
        // U diag(d) U^H with U unitary (the eigenvectors of a random matrix).
        for n in [3, 5, 9] {
            let (_, u) = eigh(&random_hermitian(n, 40 + n as u64), n).unwrap();
            let d: Vec<f64> = (0..n).map(|i| (i / 2) as f64 - 1.0).collect();
            let mut a = vec![Complex64::default(); n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..n)
                        .map(|k| u[i * n + k] * d[k] * u[j * n + k].conj())
                        .sum();
                }
            }
            let (w, v) = eigh(&a, n).unwrap();
            assert_decomposes(&a, n, &w, &v, &format!("repeated, n = {n}"));
            for (got, want) in w.iter().zip(&d) {
                assert!((got - want).abs() < 1e-12, "n = {n}: {w:?} vs {d:?}");
            }
        }
    }

    #[test]
    fn reads_only_the_lower_triangle_and_the_real_diagonal() {
        let n = 5;
        let a = random_hermitian(n, 9);
        let mut noisy = a.clone();
        for i in 0..n {
            noisy[i * n + i].im = 3.0;
            for j in i + 1..n {
                noisy[i * n + j] = Complex64::new(100.0, -7.0);
            }
        }
        assert_eq!(eigh(&noisy, n).unwrap(), eigh(&a, n).unwrap());
    }

    #[test]
    fn names_a_wrong_size_and_a_non_finite_matrix() {
        let e = eigh(&[Complex64::default(); 5], 2).unwrap_err();
        assert_eq!(e, LinalgError::NotSquare { n: 2, found: 5 });
        assert!(e.to_string().contains("2 x 2") && e.to_string().contains("found 5"));
        let mut a = random_hermitian(3, 1);
        a[3] = Complex64::new(f64::NAN, 0.0);
        let e = eigh(&a, 3).unwrap_err();
        assert!(matches!(e, LinalgError::NotConverged { .. }), "{e}");
        assert!(eigh(&[], 0).unwrap() == (vec![], vec![]));
    }
}
