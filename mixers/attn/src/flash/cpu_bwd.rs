//! The backward kernels on the CPU, from the forward's log-sum-exp (the
//! probabilities are recomputed a tile at a time, never stored):
//!
//! 1. [`RowDeltas`]: `delta_i = dO_i . O_i` per query row.
//! 2. [`KeyGrads`]: one task per `(batch, KV head, key block)` sums `dK`
//!    and `dV` of its keys over every query (of every head of its group)
//!    that sees them, so no two tasks write the same gradient.
//! 3. [`QueryGrads`]: one task per `(batch, head, query block)` sums `dQ`
//!    over the key blocks it sees.

use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::Simd;
use lrnnx_kernels::cpu::simd_kernel::{Schedule, SimdKernel};
use lrnnx_kernels::cpu::SharedMut;

use super::blocks::{dot_row, lanes_up, matmul, pack, probabilities_row, score_grad_row, Mat};
use super::dims::{Dims, HeadsView, QueryBlock, KEY_BLOCK, QUERY_BLOCK};

/// What every backward kernel reads: the inputs, the forward's
/// `[o | lse]`, the context's gradient `dO (B, Lq, h, d)` and, once
/// computed, `delta (B, h, Lq)`.
pub(crate) struct Saved<'a, T> {
    pub dims: Dims,
    pub q: (&'a [T], HeadsView),
    pub k: (&'a [T], HeadsView),
    pub v: (&'a [T], HeadsView),
    pub res: &'a [T],
    pub dout: &'a [T],
    pub delta: &'a [T],
}

fn schedule(dims: &Dims, tasks: usize) -> Schedule {
    Schedule {
        tasks,
        parallel: dims.lq * dims.lk * dims.d * dims.h * dims.b > 1 << 15,
    }
}

impl<T: Float> Saved<'_, T> {
    /// `dO` and `O` of query block `(b, h, q0..q0+rows)` as `rows x d` matrices.
    fn dout_rows(&self, b: usize, h: usize, q0: usize) -> Mat<'_, T> {
        Mat::rows(
            self.dout,
            self.dims.o_row(b, q0, h),
            self.dims.h * self.dims.d,
        )
    }

    /// The probabilities and score gradients of one tile: query rows
    /// `q0..q0+rows` of head `h`, keys `k0..k0+cols` given transposed and
    /// padded to `cw` columns (`kt`, `vt`: `d x cw`), into `p` and `ds`
    /// (`QUERY_BLOCK x KEY_BLOCK`, row stride `KEY_BLOCK`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tile<S: Simd<E = T>>(
        &self,
        b: usize,
        h: usize,
        (q0, rows): (usize, usize),
        (k0, cols): (usize, usize),
        (kt, vt, cw): (&[T], &[T], usize),
        p: &mut [T],
        ds: &mut [T],
    ) {
        let dm = self.dims;
        let (d, scale) = (dm.d, T::c(dm.scale));
        let (qs, qv) = self.q;
        let qm = Mat::rows(qs, qv.at(b, h, q0), qv.pos);
        matmul::<S>(rows, cw, d, p, KEY_BLOCK, false, qm, (kt, cw));
        let dom = self.dout_rows(b, h, q0);
        matmul::<S>(rows, cw, d, ds, KEY_BLOCK, false, dom, (vt, cw));
        for i in 0..rows {
            let qi = q0 + i;
            let (pr, dr) = (
                &mut p[i * KEY_BLOCK..(i + 1) * KEY_BLOCK],
                &mut ds[i * KEY_BLOCK..(i + 1) * KEY_BLOCK],
            );
            let vis = dm.keys_for(qi).saturating_sub(k0).min(cols);
            if vis == 0 {
                pr.fill(T::ZERO);
                dr.fill(T::ZERO);
                continue;
            }
            probabilities_row::<S>(pr, vis, scale, self.res[dm.lse_at(b, h, qi)]);
            let delta = self.delta[(b * dm.h + h) * dm.lq + qi];
            score_grad_row::<S>(dr, pr, delta, scale);
        }
    }

    /// Key block `k0..k0+cols` of KV head `kh` transposed into `kt`, `vt`
    /// (`d x cw`, `cw` = `cols` rounded up to whole vectors); returns `cw`.
    fn transposed_keys(
        &self,
        b: usize,
        kh: usize,
        (k0, cols): (usize, usize),
        kt: &mut [T],
        vt: &mut [T],
    ) -> usize {
        let cw = lanes_up(cols);
        let (ks, kv) = self.k;
        let (vs, vv) = self.v;
        pack(
            Mat::rows(ks, kv.at(b, kh, k0), kv.pos).t(),
            self.dims.d,
            cols,
            kt,
            cw,
        );
        pack(
            Mat::rows(vs, vv.at(b, kh, k0), vv.pos).t(),
            self.dims.d,
            cols,
            vt,
            cw,
        );
        cw
    }
}

/// Step 1: `delta[b, h, i] = dO[b, i, h] . O[b, i, h]`.
pub(crate) struct RowDeltas<'a, T> {
    pub saved: &'a Saved<'a, T>,
    pub out: SharedMut<T>,
}

impl<T: Float + Send + Sync> SimdKernel<T> for RowDeltas<'_, T> {
    fn schedule(&self) -> Schedule {
        let dm = &self.saved.dims;
        schedule(dm, dm.b * dm.h)
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let s = self.saved;
        let dm = s.dims;
        let (b, h) = (task / dm.h, task % dm.h);
        // SAFETY: delta[b, h, ..] belongs to this task alone.
        let out = unsafe { self.out.slice(task * dm.lq, dm.lq) };
        for (i, o) in out.iter_mut().enumerate() {
            let at = dm.o_row(b, i, h);
            *o = dot_row::<S>(&s.dout[at..at + dm.d], &s.res[at..at + dm.d]);
        }
    }
}

/// Step 2: `dK`, `dV (B, Lk, hkv, d)` in one buffer, `dK` first.
pub(crate) struct KeyGrads<'a, T> {
    pub saved: &'a Saved<'a, T>,
    pub out: SharedMut<T>,
}

impl<T: Float + Send + Sync> SimdKernel<T> for KeyGrads<'_, T> {
    fn schedule(&self) -> Schedule {
        let dm = &self.saved.dims;
        schedule(dm, dm.b * dm.hkv * dm.key_blocks())
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let s = self.saved;
        let dm = s.dims;
        let (bk, kb) = (task / dm.key_blocks(), task % dm.key_blocks());
        let (b, kh) = (bk / dm.hkv, bk % dm.hkv);
        let k0 = kb * KEY_BLOCK;
        let cols = KEY_BLOCK.min(dm.lk - k0);
        let d = dm.d;
        let dp = lanes_up(d);
        let mut dk = vec![T::ZERO; cols * dp];
        let mut dv = vec![T::ZERO; cols * dp];
        let mut p = vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK];
        let mut ds = vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK];
        let (mut kt, mut vt) = (vec![T::ZERO; d * KEY_BLOCK], vec![T::ZERO; d * KEY_BLOCK]);
        let (mut qb, mut dob) = (
            vec![T::ZERO; QUERY_BLOCK * dp],
            vec![T::ZERO; QUERY_BLOCK * dp],
        );
        let cw = s.transposed_keys(b, kh, (k0, cols), &mut kt, &mut vt);
        let (qs, qv) = s.q;
        let first = dm.first_query_for(k0) / QUERY_BLOCK * QUERY_BLOCK;
        for h in kh * dm.group()..(kh + 1) * dm.group() {
            for q0 in (first..dm.lq).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(dm.lq - q0);
                s.tile::<S>(
                    b,
                    h,
                    (q0, rows),
                    (k0, cols),
                    (&kt, &vt, cw),
                    &mut p,
                    &mut ds,
                );
                pack(s.dout_rows(b, h, q0), rows, d, &mut dob, dp);
                pack(Mat::rows(qs, qv.at(b, h, q0), qv.pos), rows, d, &mut qb, dp);
                let pt = Mat::rows(&p, 0, KEY_BLOCK).t();
                matmul::<S>(cols, dp, rows, &mut dv, dp, true, pt, (&dob, dp));
                let dst = Mat::rows(&ds, 0, KEY_BLOCK).t();
                matmul::<S>(cols, dp, rows, &mut dk, dp, true, dst, (&qb, dp));
            }
        }
        let dv_start = dm.b * dm.lk * dm.hkv * d;
        for j in 0..cols {
            let row = ((b * dm.lk + k0 + j) * dm.hkv + kh) * d;
            // SAFETY: rows (b, k0 + j, kh) of dK and dV belong to this task alone.
            let (ok, ov) = unsafe { (self.out.slice(row, d), self.out.slice(dv_start + row, d)) };
            ok.copy_from_slice(&dk[j * dp..j * dp + d]);
            ov.copy_from_slice(&dv[j * dp..j * dp + d]);
        }
    }
}

/// Step 3: `dQ (B, Lq, h, d)`.
pub(crate) struct QueryGrads<'a, T> {
    pub saved: &'a Saved<'a, T>,
    pub out: SharedMut<T>,
}

impl<T: Float + Send + Sync> SimdKernel<T> for QueryGrads<'_, T> {
    fn schedule(&self) -> Schedule {
        let dm = &self.saved.dims;
        schedule(dm, dm.b * dm.h * dm.query_blocks())
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let s = self.saved;
        let dm = s.dims;
        let QueryBlock {
            b,
            h,
            kh,
            q0,
            rows,
            kend,
        } = dm.query_block(task);
        let d = dm.d;
        let dp = lanes_up(d);
        let mut dq = vec![T::ZERO; rows * dp];
        let mut p = vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK];
        let mut ds = vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK];
        let (mut kt, mut vt) = (vec![T::ZERO; d * KEY_BLOCK], vec![T::ZERO; d * KEY_BLOCK]);
        let mut kb = vec![T::ZERO; KEY_BLOCK * dp];
        let (ks, kv) = s.k;
        for k0 in (0..kend).step_by(KEY_BLOCK) {
            let cols = KEY_BLOCK.min(kend - k0);
            let cw = s.transposed_keys(b, kh, (k0, cols), &mut kt, &mut vt);
            s.tile::<S>(
                b,
                h,
                (q0, rows),
                (k0, cols),
                (&kt, &vt, cw),
                &mut p,
                &mut ds,
            );
            pack(
                Mat::rows(ks, kv.at(b, kh, k0), kv.pos),
                cols,
                d,
                &mut kb,
                dp,
            );
            let dsm = Mat::rows(&ds, 0, KEY_BLOCK);
            matmul::<S>(rows, dp, cols, &mut dq, dp, true, dsm, (&kb, dp));
        }
        for i in 0..rows {
            // SAFETY: row (b, q0 + i, h) of dQ belongs to this task alone.
            let o = unsafe { self.out.slice(dm.o_row(b, q0 + i, h), d) };
            o.copy_from_slice(&dq[i * dp..i * dp + d]);
        }
    }
}
