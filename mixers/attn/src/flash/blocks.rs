//! The two pieces of a CPU flash-attention tile: small matrix products on
//! blocks (register tiles of broadcast-times-vector FMAs on packed operands)
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

/// `x` rounded up to whole vectors.
#[inline(always)]
pub(crate) fn lanes_up(x: usize) -> usize {
    x.div_ceil(LANES) * LANES
}

/// Copies the `rows x cols` matrix `src` into `dst` row-major with row
/// stride `ld >= cols`, zeroing columns `cols..ld` (so that whole vectors
/// can be loaded from every row).
pub(crate) fn pack<T: Float>(src: Mat<'_, T>, rows: usize, cols: usize, dst: &mut [T], ld: usize) {
    src.check(rows, cols);
    for r in 0..rows {
        let out = &mut dst[r * ld..(r + 1) * ld];
        let at = src.off + r * src.rs;
        if src.cs == 1 {
            out[..cols].copy_from_slice(&src.data[at..at + cols]);
        } else {
            for (c, o) in out[..cols].iter_mut().enumerate() {
                *o = src.data[at + c * src.cs];
            }
        }
        out[cols..].fill(T::ZERO);
    }
}

/// `dst (m x n, row stride ldd) = [dst +] a (m x k) . b (k x n)`, with `b`
/// row-major (row stride `ldb`) and `n` a multiple of [`LANES`]: register
/// tiles of 4 rows by up to 4 vectors, `a`'s elements broadcast.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn matmul<S: Simd>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [S::E],
    ldd: usize,
    accumulate: bool,
    a: Mat<'_, S::E>,
    (b, ldb): (&[S::E], usize),
) {
    assert!(
        n.is_multiple_of(LANES),
        "flash attention: a product {n} wide"
    );
    if m == 0 || n == 0 {
        return;
    }
    a.check(m, k);
    assert!(
        k == 0 || (k - 1) * ldb + n <= b.len(),
        "flash attention right operand"
    );
    assert!(
        (m - 1) * ldd + n <= dst.len(),
        "flash attention output block"
    );
    let mut t = Tile {
        k,
        dst,
        ldd,
        accumulate,
        a,
        b,
        ldb,
    };
    let mut c0 = 0;
    while c0 < n {
        let nv = ((n - c0) / LANES).min(4);
        match nv {
            4 => t.panel::<S, 4>(m, c0),
            3 => t.panel::<S, 3>(m, c0),
            2 => t.panel::<S, 2>(m, c0),
            _ => t.panel::<S, 1>(m, c0),
        }
        c0 += nv * LANES;
    }
}

/// One product of [`matmul`], its operands checked.
struct Tile<'a, 'd, T> {
    k: usize,
    dst: &'d mut [T],
    ldd: usize,
    accumulate: bool,
    a: Mat<'a, T>,
    b: &'a [T],
    ldb: usize,
}

impl<T: Float> Tile<'_, '_, T> {
    /// Columns `c0 .. c0 + NV * LANES` of every row.
    #[inline(always)]
    fn panel<S: Simd<E = T>, const NV: usize>(&mut self, m: usize, c0: usize) {
        let mut r0 = 0;
        while r0 + 4 <= m {
            self.rows::<S, NV, 4>(r0, c0);
            r0 += 4;
        }
        while r0 < m {
            self.rows::<S, NV, 1>(r0, c0);
            r0 += 1;
        }
    }

    /// Rows `r0 .. r0 + R`, columns `c0 .. c0 + NV * LANES`.
    #[inline(always)]
    fn rows<S: Simd<E = T>, const NV: usize, const R: usize>(&mut self, r0: usize, c0: usize) {
        let mut acc = [[S::zero(); NV]; R];
        let a = &self.a;
        for kk in 0..self.k {
            let brow = &self.b[kk * self.ldb + c0..kk * self.ldb + c0 + NV * LANES];
            let bv: [S::V; NV] = std::array::from_fn(|v| S::load(&brow[v * LANES..]));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = S::splat(a.data[a.off + (r0 + r) * a.rs + kk * a.cs]);
                for (x, &bv) in acc.iter_mut().zip(&bv) {
                    *x = S::fma(av, bv, *x);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (r0 + r) * self.ldd + c0;
            let row = &mut self.dst[at..at + NV * LANES];
            for (v, &x) in acc.iter().enumerate() {
                let out = &mut row[v * LANES..];
                let x = if self.accumulate {
                    S::add(S::load(out), x)
                } else {
                    x
                };
                S::store(x, out);
            }
        }
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
