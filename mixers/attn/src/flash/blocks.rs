//! The two pieces of a CPU flash-attention tile: small matrix products on
//! strided blocks (through the `gemm` crate, single-threaded inside a task)
//! and the softmax passes over one row of scores.

use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::{Simd, LANES};

use super::dims::KEY_BLOCK;

/// A strided matrix inside a slice: element `(r, c)` at `off + r * rs + c * cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows x cols` at `off` with row stride `rs`.
    pub fn rows(data: &'a [T], off: usize, rs: usize) -> Self {
        Self {
            data,
            off,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element of an `r x c` matrix lies in the slice
    /// (an internal invariant of the kernels, not a user-input check).
    fn check(&self, r: usize, c: usize) {
        if r > 0 && c > 0 {
            let last = self.off + (r - 1) * self.rs + (c - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "flash attention block ends at {last}, outside {} elements",
                self.data.len()
            );
        }
    }
}

/// `dst (m x n, row stride ldd) = [dst +] a (m x k) . b (k x n)`.
pub(crate) fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ldd: usize,
    accumulate: bool,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldd + n <= dst.len(),
        "flash attention output block"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldd..r * ldd + n].fill(T::ZERO);
            }
        }
        return;
    }
    a.check(m, k);
    b.check(k, n);
    // SAFETY: every element read or written lies inside its slice (checked
    // above), `dst` is borrowed mutably and the inputs immutably, so they do
    // not overlap; strides fit in isize as slice offsets do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The largest of `v`'s lanes.
#[inline(always)]
fn hmax<S: Simd>(v: S::V) -> S::E {
    let mut lanes = [S::E::ZERO; LANES];
    S::store(v, &mut lanes);
    lanes[1..]
        .iter()
        .fold(lanes[0], |m, &x| if x > m { x } else { m })
}

/// `-inf` in `T`.
#[inline(always)]
pub(crate) fn neg_inf<T: Float>() -> T {
    T::c(f64::NEG_INFINITY)
}

/// Masks a score row for the vector passes: `s[vis..]` (to the next lane
/// boundary) becomes `-inf`; returns the lanes in use.
#[inline(always)]
fn mask_tail<T: Float>(s: &mut [T], vis: usize) -> usize {
    let used = vis.div_ceil(LANES) * LANES;
    s[vis..used].fill(neg_inf());
    used
}

/// One step of the online softmax on a row of raw scores `s[..KEY_BLOCK]`
/// (`q . k`), of which the first `vis` are visible: `s` becomes
/// `exp(scale s - m')` (0 where masked) with `m'` the running maximum of the
/// scaled scores, `m` and the running sum `l` are updated, and the factor
/// that rescales what was summed before is returned. `vis > 0`.
#[inline(always)]
pub(crate) fn online_softmax_row<S: Simd>(
    s: &mut [S::E],
    vis: usize,
    scale: S::E,
    m: &mut S::E,
    l: &mut S::E,
) -> S::E {
    let used = mask_tail(s, vis);
    let sc = S::splat(scale);
    let mut mx = S::splat(*m);
    for c in (0..used).step_by(LANES) {
        mx = S::max(mx, S::mul(S::load(&s[c..]), sc));
    }
    let m_new = hmax::<S>(mx);
    let (ninf, zero) = (S::splat(neg_inf()), S::zero());
    let mv = S::splat(m_new);
    let mut sum = S::zero();
    for c in (0..used).step_by(LANES) {
        let x = S::mul(S::load(&s[c..]), sc);
        let p = S::sel_gt(x, ninf, S::exp(S::sub(x, mv)), zero);
        sum = S::add(sum, p);
        S::store(p, &mut s[c..]);
    }
    s[used..KEY_BLOCK].fill(S::E::ZERO);
    let corr = if *m == neg_inf() {
        S::E::ZERO
    } else {
        (*m - m_new).exp_()
    };
    *l = *l * corr + S::hsum(sum);
    *m = m_new;
    corr
}

/// The softmax row again from its log-sum-exp: `s[..KEY_BLOCK]` (raw
/// scores, the first `vis` visible) becomes `exp(scale s - lse)`, 0 where
/// masked.
#[inline(always)]
pub(crate) fn probabilities_row<S: Simd>(s: &mut [S::E], vis: usize, scale: S::E, lse: S::E) {
    let used = mask_tail(s, vis);
    let (sc, lv) = (S::splat(scale), S::splat(lse));
    let (ninf, zero) = (S::splat(neg_inf()), S::zero());
    for c in (0..used).step_by(LANES) {
        let x = S::mul(S::load(&s[c..]), sc);
        let p = S::sel_gt(x, ninf, S::exp(S::sub(x, lv)), zero);
        S::store(p, &mut s[c..]);
    }
    s[used..KEY_BLOCK].fill(S::E::ZERO);
}

/// The score gradient of one row: `dp[..KEY_BLOCK]` (`dO . v`) becomes
/// `scale p (dp - delta)`, with `delta = dO . O` of the row.
#[inline(always)]
pub(crate) fn score_grad_row<S: Simd>(dp: &mut [S::E], p: &[S::E], delta: S::E, scale: S::E) {
    let (dv, sc) = (S::splat(delta), S::splat(scale));
    for c in (0..KEY_BLOCK).step_by(LANES) {
        let g = S::mul(S::mul(S::load(&p[c..]), S::sub(S::load(&dp[c..]), dv)), sc);
        S::store(g, &mut dp[c..]);
    }
}

/// `a . b` of two rows, with `LANES` partial sums.
#[inline(always)]
pub(crate) fn dot_row<S: Simd>(a: &[S::E], b: &[S::E]) -> S::E {
    let n = a.len().min(b.len());
    let mut acc = S::zero();
    let mut c = 0;
    while c + LANES <= n {
        acc = S::fma(S::load(&a[c..]), S::load(&b[c..]), acc);
        c += LANES;
    }
    let mut tail = S::hsum(acc);
    for i in c..n {
        tail += a[i] * b[i];
    }
    tail
}
