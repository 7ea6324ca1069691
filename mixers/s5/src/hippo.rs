//! `make_DPLR_HiPPO` of the S5 code base (used by lrnnx's LTV S5 init):
//! the normal part of HiPPO-LegS, diagonalized.
//!
//! `S = A_legs + P P^T` is `-1/2 I` plus a real skew-symmetric matrix. numpy's
//! `eigh(-1j * S)` reads only the lower triangle and the real part of the
//! diagonal, i.e. it diagonalizes the Hermitian matrix `-1j * skew(S)`. We do
//! the same with cyclic complex Jacobi rotations (f64), and return
//! `Lambda = mean(diag S) + 1j * w` (eigenvalues `w` ascending) and the unitary `V`.

/// A complex number in f64 (just what the Jacobi sweep needs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct C64 {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl C64 {
    /// `re + i im`.
    pub fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    fn conj(self) -> C64 {
        C64::new(self.re, -self.im)
    }
    fn scale(self, k: f64) -> C64 {
        C64::new(self.re * k, self.im * k)
    }
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
    fn norm(self) -> f64 {
        self.re.hypot(self.im)
    }
}

/// Eigen-decomposition of a Hermitian matrix `h` (`n x n`, row-major; only
/// the lower triangle and the real diagonal are read): eigenvalues ascending
/// and the eigenvectors as the columns of a row-major `n x n` unitary matrix.
pub fn eigh(n: usize, h: &[C64]) -> (Vec<f64>, Vec<C64>) {
    // Hermitian completion from the lower triangle.
    let mut a = vec![C64::default(); n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = if i == j {
                C64::new(h[i * n + i].re, 0.0)
            } else {
                h[i * n + j]
            };
            a[i * n + j] = v;
            a[j * n + i] = v.conj();
        }
    }
    let mut v = vec![C64::default(); n * n];
    for i in 0..n {
        v[i * n + i] = C64::new(1.0, 0.0);
    }
    let total: f64 = a.iter().map(|z| z.norm().powi(2)).sum::<f64>().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].norm().powi(2))
            .sum();
        if off <= 1e-30 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                let r = apq.norm();
                if r <= 1e-300 {
                    continue;
                }
                // Phase: column q times w, row q times conj(w), with w = conj(a_pq)/|a_pq|,
                // so that a_pq becomes real and positive (V follows the columns).
                let w = apq.conj().scale(1.0 / r);
                for k in 0..n {
                    a[k * n + q] = a[k * n + q].mul(w);
                    v[k * n + q] = v[k * n + q].mul(w);
                }
                for k in 0..n {
                    a[q * n + k] = a[q * n + k].mul(w.conj());
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
                    a[k * n + p] = kp.scale(c).add(kq.scale(-s));
                    a[k * n + q] = kp.scale(s).add(kq.scale(c));
                    let (vp, vq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = vp.scale(c).add(vq.scale(-s));
                    v[k * n + q] = vp.scale(s).add(vq.scale(c));
                }
                for k in 0..n {
                    let (pk, qk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = pk.scale(c).add(qk.scale(-s));
                    a[q * n + k] = pk.scale(s).add(qk.scale(c));
                }
                a[p * n + q] = C64::default();
                a[q * n + p] = C64::default();
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i * n + i].re.total_cmp(&a[j * n + j].re));
    let w: Vec<f64> = order.iter().map(|&i| a[i * n + i].re).collect();
    let mut vs = vec![C64::default(); n * n];
    for (col, &src) in order.iter().enumerate() {
        for k in 0..n {
            vs[k * n + col] = v[k * n + src];
        }
    }
    (w, vs)
}

/// `make_DPLR_HiPPO(n)`: `(Lambda (n), V (n x n row-major))` with
/// `Lambda = -1/2 + 1j * w`, `w` ascending.
pub fn make_dplr_hippo(n: usize) -> (Vec<C64>, Vec<C64>) {
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
    let (w, v) = eigh(n, &s);
    let lambda = w.iter().map(|&wi| C64::new(-0.5, wi)).collect();
    (lambda, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_the_hippo_matrix() {
        for n in [1, 2, 5, 8, 16] {
            let (lam, v) = make_dplr_hippo(n);
            // Rebuild the skew part K of S: -1j K = V diag(w) V^H, so K = 1j V diag(w) V^H.
            for i in 0..n {
                for j in 0..n {
                    let mut acc = C64::default();
                    for k in 0..n {
                        acc = acc.add(v[i * n + k].mul(v[j * n + k].conj()).scale(lam[k].im));
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
                        dot = dot.add(v[k * n + i].conj().mul(v[k * n + j]));
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
