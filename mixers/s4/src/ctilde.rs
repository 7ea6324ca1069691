//! lrnnx stores S4's `C` as `C~ = C (I - Ā^l)` ("C tilde", `l = l_kernel`):
//! its kernel algorithm needs the truncated generating function. This module
//! recovers the true `C = C~ (I - Ā^l)^{-1}` with dense f64 matrices in the
//! conjugate-augmented basis (as lrnnx's `_setup_step` does).

use num_complex::Complex64;

/// A dense square complex matrix, row-major.
#[derive(Debug, Clone)]
struct Mat {
    n: usize,
    a: Vec<Complex64>,
}

impl Mat {
    fn eye(n: usize) -> Self {
        let mut a = vec![Complex64::default(); n * n];
        for i in 0..n {
            a[i * n + i] = Complex64::new(1.0, 0.0);
        }
        Self { n, a }
    }

    fn at(&self, i: usize, j: usize) -> Complex64 {
        self.a[i * self.n + j]
    }

    fn matmul(&self, o: &Mat) -> Mat {
        let n = self.n;
        let mut a = vec![Complex64::default(); n * n];
        for i in 0..n {
            for k in 0..n {
                let x = self.at(i, k);
                if x == Complex64::default() {
                    continue;
                }
                for j in 0..n {
                    a[i * n + j] += x * o.at(k, j);
                }
            }
        }
        Mat { n, a }
    }

    fn transpose(&self) -> Mat {
        let n = self.n;
        let mut a = vec![Complex64::default(); n * n];
        for i in 0..n {
            for j in 0..n {
                a[j * n + i] = self.at(i, j);
            }
        }
        Mat { n, a }
    }

    fn pow(&self, mut e: usize) -> Mat {
        let mut base = self.clone();
        let mut out = Mat::eye(self.n);
        while e > 0 {
            if e & 1 == 1 {
                out = out.matmul(&base);
            }
            e >>= 1;
            if e > 0 {
                base = base.matmul(&base);
            }
        }
        out
    }

    /// Solves `self X = rhs` (`rhs` with `m` columns, row-major) by Gaussian
    /// elimination with partial pivoting; `None` if singular.
    fn solve(&self, rhs: &[Complex64], m: usize) -> Option<Vec<Complex64>> {
        let n = self.n;
        let mut a = self.a.clone();
        let mut b = rhs.to_vec();
        for col in 0..n {
            let piv = (col..n).max_by(|&i, &j| {
                a[i * n + col]
                    .norm_sqr()
                    .total_cmp(&a[j * n + col].norm_sqr())
            })?;
            if a[piv * n + col].norm_sqr() == 0.0 {
                return None;
            }
            if piv != col {
                for j in 0..n {
                    a.swap(piv * n + j, col * n + j);
                }
                for j in 0..m {
                    b.swap(piv * m + j, col * m + j);
                }
            }
            let inv = a[col * n + col].inv();
            for i in col + 1..n {
                let f = a[i * n + col] * inv;
                if f == Complex64::default() {
                    continue;
                }
                for j in col..n {
                    a[i * n + j] = a[i * n + j] - f * a[col * n + j];
                }
                for j in 0..m {
                    b[i * m + j] = b[i * m + j] - f * b[col * m + j];
                }
            }
        }
        for col in (0..n).rev() {
            let inv = a[col * n + col].inv();
            for j in 0..m {
                let mut acc = b[col * m + j];
                for k in col + 1..n {
                    acc -= a[col * n + k] * b[k * m + j];
                }
                b[col * m + j] = acc * inv;
            }
        }
        Some(b)
    }
}

fn aug(v: &[Complex64]) -> Vec<Complex64> {
    v.iter()
        .copied()
        .chain(v.iter().map(|z| z.conj()))
        .collect()
}

/// The dense discrete transition `Ā = (I - M/2)^{-1} (I + M/2)`, `M = dt
/// (diag(Λa) - pa pa^H)`, in the augmented basis (`2 N/2` square).
fn abar(lam: &[Complex64], p: &[Complex64], dt: &[f64]) -> Option<Mat> {
    let (la, pa) = (aug(lam), aug(p));
    let dta: Vec<f64> = dt.iter().chain(dt.iter()).copied().collect();
    let n = la.len();
    let mut lhs = Mat::eye(n);
    let mut rhs = Mat::eye(n);
    for i in 0..n {
        for j in 0..n {
            let mut m = pa[i] * pa[j].conj() * (-1.0);
            if i == j {
                m += la[i];
            }
            let half = m * (0.5 * dta[i]);
            lhs.a[i * n + j] -= half;
            rhs.a[i * n + j] += half;
        }
    }
    let a = lhs.solve(&rhs.a, n)?;
    Some(Mat { n, a })
}

/// The true `C (channels, N/2)` of one feature from the stored `C~` and
/// `l_kernel`: `C = C~ (I - Ā^l)^{-1}` (conjugate-augmented, first half kept).
/// `None` if `I - Ā^l` is singular.
pub fn true_c(
    lam: &[Complex64],
    p: &[Complex64],
    dt: &[f64],
    c_tilde: &[Vec<Complex64>],
    l_kernel: usize,
) -> Option<Vec<Vec<Complex64>>> {
    let n2 = lam.len();
    let a = abar(lam, p, dt)?;
    let al = a.pow(l_kernel);
    let mut m = Mat::eye(2 * n2);
    for (z, w) in m.a.iter_mut().zip(&al.a) {
        *z -= *w;
    }
    // C (I - Ā^l) = C~  <=>  (I - Ā^l)^T C^T = C~^T.
    let mt = m.transpose();
    let ch = c_tilde.len();
    let mut rhs = vec![Complex64::default(); 2 * n2 * ch];
    for (ci, c) in c_tilde.iter().enumerate() {
        for (i, z) in aug(c).into_iter().enumerate() {
            rhs[i * ch + ci] = z;
        }
    }
    let sol = mt.solve(&rhs, ch)?;
    Some(
        (0..ch)
            .map(|ci| (0..n2).map(|i| sol[i * ch + ci]).collect())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_round_trip() {
        let lam = [
            Complex64::new(-0.5, -3.0),
            Complex64::new(-0.5, -0.7),
            Complex64::new(-0.4, -1.5),
        ];
        let p = [
            Complex64::new(0.3, -1.0),
            Complex64::new(-0.2, 0.5),
            Complex64::new(0.6, 0.1),
        ];
        let dt = [0.05, 0.05, 0.05];
        let c = [vec![
            Complex64::new(1.0, 0.2),
            Complex64::new(-0.3, 0.8),
            Complex64::new(0.5, -0.5),
        ]];
        let l = 11;
        // C~ = C (I - Ā^l), first half.
        let a = abar(&lam, &p, &dt).unwrap().pow(l);
        let ca = aug(&c[0]);
        let n = ca.len();
        let ct: Vec<Complex64> = (0..n)
            .map(|j| {
                ca.iter()
                    .enumerate()
                    .fold(ca[j], |acc, (i, &z)| acc - z * a.at(i, j))
            })
            .collect();
        let back = true_c(&lam, &p, &dt, &[ct[..3].to_vec()], l).unwrap();
        for (x, y) in back[0].iter().zip(&c[0]) {
            assert!((x.re - y.re).abs() < 1e-12 && (x.im - y.im).abs() < 1e-12);
        }
    }
}
