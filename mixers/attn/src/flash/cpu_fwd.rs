//! The forward kernel on the CPU: one task per `(batch, head, query block)`
//! walks the key blocks it may see, keeping the running maximum, sum and
//! context of its rows (the online softmax); no score matrix beyond one
//! `QUERY_BLOCK x KEY_BLOCK` tile exists.

use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::Simd;
use lrnnx_kernels::cpu::simd_kernel::{Schedule, SimdKernel};
use lrnnx_kernels::cpu::SharedMut;

use super::blocks::{lanes_up, matmul, neg_inf, online_softmax_row, pack, Mat};
use super::dims::{Dims, HeadsView, QueryBlock, KEY_BLOCK, QUERY_BLOCK};

/// The forward kernel's inputs and its output `[o (B, Lq, h, d) | lse (B, h, Lq)]`.
pub(crate) struct Forward<'a, T> {
    pub dims: Dims,
    pub q: (&'a [T], HeadsView),
    pub k: (&'a [T], HeadsView),
    pub v: (&'a [T], HeadsView),
    pub out: SharedMut<T>,
}

impl<T: Float + Send + Sync> SimdKernel<T> for Forward<'_, T> {
    fn schedule(&self) -> Schedule {
        let d = &self.dims;
        let tasks = d.b * d.h * d.query_blocks();
        Schedule {
            tasks,
            parallel: d.lq * d.lk * d.d * d.h * d.b > 1 << 16,
        }
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let dm = self.dims;
        let QueryBlock {
            b,
            h,
            kh,
            q0,
            rows,
            kend,
        } = dm.query_block(task);
        let d = dm.d;
        let scale = T::c(dm.scale);
        let (qs, qv) = self.q;
        let (ks, kv) = self.k;
        let (vs, vv) = self.v;
        let dp = lanes_up(d);
        let qm = Mat::rows(qs, qv.at(b, h, q0), qv.pos);
        let mut s = vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK];
        let mut kt = vec![T::ZERO; d * KEY_BLOCK];
        let mut vb = vec![T::ZERO; KEY_BLOCK * dp];
        let mut acc = vec![T::ZERO; rows * dp];
        let mut m = vec![neg_inf::<T>(); rows];
        let mut l = vec![T::ZERO; rows];
        for k0 in (0..kend).step_by(KEY_BLOCK) {
            let cols = KEY_BLOCK.min(kend - k0);
            let cw = lanes_up(cols);
            let kb = Mat::rows(ks, kv.at(b, kh, k0), kv.pos);
            pack(kb.t(), d, cols, &mut kt, cw);
            matmul::<S>(rows, cw, d, &mut s, KEY_BLOCK, false, qm, (&kt, cw));
            for i in 0..rows {
                let row = &mut s[i * KEY_BLOCK..(i + 1) * KEY_BLOCK];
                let vis = dm.keys_for(q0 + i).saturating_sub(k0).min(cols);
                if vis == 0 {
                    row.fill(T::ZERO);
                    continue;
                }
                let corr = online_softmax_row::<S>(row, vis, scale, &mut m[i], &mut l[i]);
                if corr != T::ONE {
                    acc[i * dp..(i + 1) * dp]
                        .iter_mut()
                        .for_each(|a| *a *= corr);
                }
            }
            pack(
                Mat::rows(vs, vv.at(b, kh, k0), vv.pos),
                cols,
                d,
                &mut vb,
                dp,
            );
            let pm = Mat::rows(&s, 0, KEY_BLOCK);
            matmul::<S>(rows, dp, cols, &mut acc, dp, true, pm, (&vb, dp));
        }
        for i in 0..rows {
            let qi = q0 + i;
            // SAFETY: row (b, qi, h) of o and lse[b, h, qi] belong to this task alone.
            let (o, lse) = unsafe {
                (
                    self.out.slice(dm.o_row(b, qi, h), d),
                    self.out.slice(dm.lse_at(b, h, qi), 1),
                )
            };
            if l[i] > T::ZERO {
                let inv = T::ONE / l[i];
                for (o, a) in o.iter_mut().zip(&acc[i * dp..i * dp + d]) {
                    *o = *a * inv;
                }
                // l >= 1: the maximum itself contributes e^0.
                lse[0] = m[i] + (l[i] - T::ONE).ln_1p();
            } else {
                // A query that sees no key (only without a causal alignment) gets zeros.
                o.fill(T::ZERO);
                lse[0] = neg_inf();
            }
        }
    }
}
