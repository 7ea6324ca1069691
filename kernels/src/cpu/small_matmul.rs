//! Products of a few rows with a weight matrix, for decoding steps.
//!
//! A step multiplies `B` rows (the batch) by each weight. Going through a
//! general GEMM would repack the whole weight on every call; here every
//! weight row is read once, in place, and dotted with the `B` input rows.

use rayon::prelude::*;

use super::float::Float;

/// Output columns per parallel task.
const COLS_PER_TASK: usize = 64;

/// Multiply-adds below which the product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// `sum_i a[i] b[i]`, plainly (the compiler does not vectorize it well;
/// f32 on AVX2 takes [`block_f32_avx2`] instead).
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut s = T::default();
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// `yt[o, r] = x[r] . w[o]` for the weight rows in `w` (`yt` is output-major).
fn block<T: Float>(x: &[T], k: usize, w: &[T], yt: &mut [T]) {
    if T::block_dot(x, k, w, yt) {
        return;
    }
    let m = x.len() / k;
    for (wrow, out) in w.chunks_exact(k).zip(yt.chunks_exact_mut(m)) {
        for (o, xrow) in out.iter_mut().zip(x.chunks_exact(k)) {
            *o = dot(xrow, wrow);
        }
    }
}

/// The product of [`matmul_t`] for f32 with AVX2 + FMA. Up to four input rows share each load
/// of a weight row; each row keeps two 8-wide accumulators.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn block_f32_avx2(x: &[f32], k: usize, w: &[f32], yt: &mut [f32]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 4;
    let m = x.len() / k;
    let full = k / 16 * 16;
    for (wrow, out) in w.chunks_exact(k).zip(yt.chunks_exact_mut(m)) {
        let pb = wrow.as_ptr();
        for r0 in (0..m).step_by(ROWS) {
            let nr = ROWS.min(m - r0);
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
            let mut i = 0;
            while i < full {
                // SAFETY: i + 16 <= full <= k: inside the weight row and every input row.
                let (w0, w1) =
                    unsafe { (_mm256_loadu_ps(pb.add(i)), _mm256_loadu_ps(pb.add(i + 8))) };
                for (r, a) in acc.iter_mut().enumerate().take(nr) {
                    // SAFETY: as above, in row r0 + r < m.
                    let pa = unsafe { x.as_ptr().add((r0 + r) * k + i) };
                    let (x0, x1) = unsafe { (_mm256_loadu_ps(pa), _mm256_loadu_ps(pa.add(8))) };
                    a[0] = _mm256_fmadd_ps(x0, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(x1, w1, a[1]);
                }
                i += 16;
            }
            for (r, a) in acc.iter().enumerate().take(nr) {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds eight f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a[0], a[1])) };
                let mut s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                    + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
                let xrow = &x[(r0 + r) * k..(r0 + r + 1) * k];
                for t in full..k {
                    s += xrow[t] * wrow[t];
                }
                out[r0 + r] = s;
            }
        }
    }
}

/// `y (M, N) = x (M, K) @ w^T (+ bias)` for `w (N, K)`, all row-major.
pub fn matmul_t<T: Float>(x: &[T], k: usize, w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (m, n) = (x.len() / k, w.len() / k);
    let mut yt = vec![T::default(); n * m];
    if m * n * k < PARALLEL_WORK {
        block(x, k, w, &mut yt);
    } else {
        yt.par_chunks_mut(COLS_PER_TASK * m)
            .zip(w.par_chunks(COLS_PER_TASK * k))
            .for_each(|(yt, w)| block(x, k, w, yt));
    }
    let mut y = vec![T::default(); m * n];
    for (o, col) in yt.chunks_exact(m).enumerate() {
        let b = bias.map_or(T::default(), |b| b[o]);
        for (r, &v) in col.iter().enumerate() {
            y[r * n + o] = v + b;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 kernel (AVX2 where the CPU has it) against f64 sums.
    #[test]
    fn f32_kernel_matches_the_naive_product() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 7, 5),
            (8, 256, 130),
            (5, 47, 300),
            (2, 33, 3000),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13) % 7) as f32 * 0.1 - 0.3)
                .collect();
            let y = matmul_t(&x, k, &w, None);
            for r in 0..m {
                for o in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                        .sum();
                    let got = y[r * n + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "({m},{k},{n}) [{r},{o}]"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_the_naive_product() {
        for (m, k, n) in [(1, 1, 1), (3, 7, 5), (8, 256, 130), (2, 33, 3000)] {
            let x: Vec<f64> = (0..m * k).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
            let w: Vec<f64> = (0..n * k).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
            let b: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let y = matmul_t(&x, k, &w, Some(&b));
            for r in 0..m {
                for o in 0..n {
                    let want: f64 = b[o] + (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum::<f64>();
                    assert_eq!(y[r * n + o], want, "({m},{k},{n}) [{r},{o}]");
                }
            }
        }
    }
}
