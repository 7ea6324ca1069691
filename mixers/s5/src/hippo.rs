//! `make_DPLR_HiPPO` of the S5 code base (used by lrnnx's LTV S5 init):
//! the normal part of HiPPO-LegS, diagonalized.
//!
//! `S = A_legs + P P^T` is `-1/2 I` plus a real skew-symmetric matrix. numpy's
//! `eigh(-1j * S)` reads only the lower triangle and the real part of the
//! diagonal, i.e. it diagonalizes the Hermitian matrix `-1j * skew(S)`. We do
//! the same with [`lrnnx_kernels::linalg::eigh`] (f64), and return
//! `Lambda = mean(diag S) + 1j * w` (eigenvalues `w` ascending) and the unitary `V`.

use lrnnx_framework::{Error, Result};
use lrnnx_kernels::linalg::eigh;
use num_complex::Complex64 as C64;

/// `make_DPLR_HiPPO(n)`: `(Lambda (n), V (n x n row-major))` with
/// `Lambda = -1/2 + 1j * w`, `w` ascending.
pub fn make_dplr_hippo(n: usize) -> Result<(Vec<C64>, Vec<C64>)> {
    let mut s = vec![C64::default(); n * n];
    for i in 0..n {
        for j in 0..n {
            let pij = ((i as f64 + 0.5) * (j as f64 + 0.5)).sqrt();
            let legs = if i > j {
                -((2 * i + 1) as f64).sqrt() * ((2 * j + 1) as f64).sqrt()
            } else if i == j {
                -((2 * i + 1) as f64) + i as f64
            } else {
                0.0
            };
            // -1j * S
            s[i * n + j] = C64::new(0.0, -(legs + pij));
        }
    }
    // mean(diag S) = -1/2 for every n (diag S = -(i + 1) + (i + 1/2)).
    let (w, v) =
        eigh(&s, n).map_err(|e| Error::Config(format!("HiPPO init at d_state = {n}: {e}")))?;
    let lambda = w.iter().map(|&wi| C64::new(-0.5, wi)).collect();
    Ok((lambda, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_the_hippo_matrix() {
        for n in [1, 2, 5, 8, 16] {
            let (lam, v) = make_dplr_hippo(n).unwrap();
            // Rebuild the skew part K of S: -1j K = V diag(w) V^H, so K = 1j V diag(w) V^H.
            for i in 0..n {
                for j in 0..n {
                    let mut acc = C64::default();
                    for k in 0..n {
                        acc += v[i * n + k] * v[j * n + k].conj() * lam[k].im;
                    }
                    let k_ij = C64::new(-acc.im, acc.re); // 1j * acc
                    let want = if i == j {
                        0.0
                    } else {
                        let sgn = if i > j { -1.0 } else { 1.0 };
                        sgn * 0.5 * ((2 * i + 1) as f64).sqrt() * ((2 * j + 1) as f64).sqrt()
                    };
                    assert!(
                        (k_ij.re - want).abs() < 1e-9,
                        "n={n} ({i},{j}) {k_ij:?} vs {want}"
                    );
                    assert!(k_ij.im.abs() < 1e-9);
                    // Unitary.
                    let mut dot = C64::default();
                    for k in 0..n {
                        dot += v[k * n + i].conj() * v[k * n + j];
                    }
                    let e = if i == j { 1.0 } else { 0.0 };
                    assert!((dot.re - e).abs() < 1e-10 && dot.im.abs() < 1e-10);
                }
            }
            // Ascending imaginary parts, in +- pairs, real part -1/2.
            for k in 1..n {
                assert!(lam[k].im >= lam[k - 1].im);
            }
            for k in 0..n {
                assert!((lam[k].im + lam[n - 1 - k].im).abs() < 1e-8);
                assert_eq!(lam[k].re, -0.5);
            }
        }
    }
}
