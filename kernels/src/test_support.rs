//! Helpers shared by the kernels' unit tests: seeded random vectors, tensor
//! values, error measures, and the obviously right complex recurrence.

use candle_core::{DType, Tensor};

/// `n` values uniform in `[-1, 1)` from a 64-bit LCG seeded with `seed`.
pub fn rand(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Every element of a CPU tensor as `f64`, flattened.
pub fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `max |a - b|` over the common length.
pub fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The obviously right complex scan `h_t = lambda * h_{t-1} + u_t`, one
/// channel at a time with complex numbers spelled out, on split-complex
/// `u (B, L, 2N)` from `h0 (B, 2N)`; `lam(b, t, c)` is channel `c`'s
/// `lambda` (real, imaginary) at batch `b`, position `t`. `reverse` runs
/// from `t = L-1` down.
pub fn naive_complex_scan(
    (bs, l, n): (usize, usize, usize),
    lam: impl Fn(usize, usize, usize) -> (f64, f64),
    u: &[f64],
    h0: &[f64],
    reverse: bool,
) -> Vec<f64> {
    let mut h = vec![0.0; u.len()];
    for b in 0..bs {
        for c in 0..n {
            let (mut xr, mut xi) = (h0[b * 2 * n + c], h0[b * 2 * n + n + c]);
            let ts: Vec<usize> = if reverse {
                (0..l).rev().collect()
            } else {
                (0..l).collect()
            };
            for t in ts {
                let o = (b * l + t) * 2 * n;
                let (lr, li) = lam(b, t, c);
                let nr = lr * xr - li * xi + u[o + c];
                let ni = lr * xi + li * xr + u[o + n + c];
                xr = nr;
                xi = ni;
                h[o + c] = xr;
                h[o + n + c] = xi;
            }
        }
    }
    h
}
