//! CPU kernel of the diagonal complex scan, in the "split" layout.
//!
//! Tensors hold `2N` values on their last axis: the real parts of the `N`
//! channels, then their imaginary parts. The recurrence runs along `L`
//! independently for each of the `B * N` complex channels; work is split
//! across threads by (batch, block of channels), and within a block the inner
//! loop runs over contiguous channels so that it vectorizes.

use rayon::prelude::*;

use candle_core::{Layout, Result};

use crate::cpu::SharedMut;
use crate::Real;

/// Channels per task: wide enough to vectorize, narrow enough to keep the
/// running state in registers.
pub(crate) const BLOCK: usize = 16;

/// Below this many (batch x length x channel) updates the scan runs on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Shape of one scan problem.
#[derive(Debug, Clone, Copy)]
pub struct ScanDims {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub l: usize,
    /// Complex channels (the tensors' last axis is `2n`).
    pub n: usize,
}

/// The dims of a split-complex scan's inputs: the first is `(B, L, 2N)`, the
/// other two must have the shapes `want(B, L, 2N)` gives. The error names the
/// op (`op`), the expected shapes (`expected`) and the shapes found.
pub(crate) fn split_complex_dims(
    op: &str,
    expected: &str,
    [first, second, third]: [&Layout; 3],
    want: impl Fn(usize, usize, usize) -> [Vec<usize>; 2],
) -> Result<ScanDims> {
    let (b, l, n2) = first.shape().dims3()?;
    let [want2, want3] = want(b, l, n2);
    if n2 % 2 != 0 || second.shape().dims() != want2 || third.shape().dims() != want3 {
        candle_core::bail!(
            "{op}: expected {expected}; found {:?}, {:?}, {:?}",
            first.shape(),
            second.shape(),
            third.shape()
        );
    }
    Ok(ScanDims { b, l, n: n2 / 2 })
}

/// Runs `task` for every (batch, channel block), in parallel when the problem is large.
pub(crate) fn for_each_block(d: ScanDims, task: impl Fn(usize, usize, usize) + Sync + Send) {
    let blocks = d.n.div_ceil(BLOCK);
    let run = |i: usize| {
        let (bi, blk) = (i / blocks, i % blocks);
        let n0 = blk * BLOCK;
        task(bi, n0, BLOCK.min(d.n - n0));
    };
    // A decoding step is a few thousand flops: not worth waking the thread pool.
    if d.b * d.l * d.n < PARALLEL_THRESHOLD {
        (0..d.b * blocks).for_each(run);
    } else {
        (0..d.b * blocks).into_par_iter().for_each(run);
    }
}

/// `h[b,t] = lambda * h[b,t-1] + u[b,t]` for `t` in `0..L` (or backwards when
/// `reverse`, from `t = L-1`), starting from `h0[b]` (zeros when `None`).
/// With `conj`, `lambda` is conjugated. `u` and `h` are `(B, L, 2N)`,
/// `lambda` is `(2N)`, `h0` is `(B, 2N)`, all contiguous.
pub fn scan<T: Real>(
    dims: ScanDims,
    lambda: &[T],
    u: &[T],
    h0: Option<&[T]>,
    reverse: bool,
    conj: bool,
) -> Vec<T> {
    let ScanDims { b, l, n } = dims;
    let mut h = vec![T::default(); b * l * 2 * n];
    if b * l * n == 0 {
        return h;
    }
    // Each task owns one (batch, channel block) and writes only its columns,
    // so tasks hand out disjoint raw pointers into `h`.
    let out = SharedMut::new(&mut h);
    for_each_block(dims, |bi, n0, w| {
        let out = &out;
        let mut hr = [T::default(); BLOCK];
        let mut hi = [T::default(); BLOCK];
        let mut lr = [T::default(); BLOCK];
        let mut li = [T::default(); BLOCK];
        for j in 0..w {
            lr[j] = lambda[n0 + j];
            li[j] = if conj {
                -lambda[n + n0 + j]
            } else {
                lambda[n + n0 + j]
            };
            if let Some(h0) = h0 {
                hr[j] = h0[bi * 2 * n + n0 + j];
                hi[j] = h0[bi * 2 * n + n + n0 + j];
            }
        }
        for step in 0..l {
            let t = if reverse { l - 1 - step } else { step };
            let row = (bi * l + t) * 2 * n;
            let ur = &u[row + n0..row + n0 + w];
            let ui = &u[row + n + n0..row + n + n0 + w];
            for j in 0..w {
                let r = lr[j] * hr[j] - li[j] * hi[j] + ur[j];
                let i = lr[j] * hi[j] + li[j] * hr[j] + ui[j];
                hr[j] = r;
                hi[j] = i;
            }
            // SAFETY: row `t` of batch `bi`, columns n0..n0+w (and N+n0..): this
            // task's alone; the buffer outlives the parallel loop.
            unsafe {
                out.slice(row + n0, w).copy_from_slice(&hr[..w]);
                out.slice(row + n + n0, w).copy_from_slice(&hi[..w]);
            }
        }
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{naive_complex_scan, rand};

    /// The obviously right version, with `lambda` the same at every position.
    fn naive(
        d: ScanDims,
        lam: &[f64],
        u: &[f64],
        h0: &[f64],
        reverse: bool,
        conj: bool,
    ) -> Vec<f64> {
        let n = d.n;
        let at =
            |_: usize, _: usize, c: usize| (lam[c], if conj { -lam[n + c] } else { lam[n + c] });
        naive_complex_scan((d.b, d.l, n), at, u, h0, reverse)
    }

    #[test]
    fn matches_naive_recurrence_at_odd_shapes() {
        for (b, l, n) in [(1, 1, 1), (2, 7, 3), (3, 33, 17), (2, 5, 40)] {
            let d = ScanDims { b, l, n };
            let lam: Vec<f64> = rand(2 * n, 1).iter().map(|x| x * 0.7).collect();
            let u = rand(b * l * 2 * n, 2);
            let h0 = rand(b * 2 * n, 3);
            for reverse in [false, true] {
                for conj in [false, true] {
                    let got = scan(d, &lam, &u, Some(&h0), reverse, conj);
                    let want = naive(d, &lam, &u, &h0, reverse, conj);
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(err < 1e-12, "{b} {l} {n} rev={reverse} conj={conj}: {err}");
                }
            }
        }
    }
}
