//! The forward scan kernel.

use super::*;
use lrnnx_kernels::cpu::exec::threads;

struct Fwd<'a, S: Simd, const RULE: u8, const EVENT: bool> {
    x: ScanInputs<'a, S::E>,
    c: &'a Consts<S::E>,
    h0: Option<&'a [S::E]>,
    blocks: usize,
    y: SharedMut<S::E>,
    ck: Option<SharedMut<S::E>>,
    hout: Option<SharedMut<S::E>>,
}

impl<S: Simd, const RULE: u8, const EVENT: bool> Kernel for Fwd<'_, S, RULE, EVENT> {
    #[inline(always)]
    fn run(&self, task: usize) {
        let dims = self.x.dims;
        let (l, d, n, r, k) = (dims.l, dims.d, dims.n, dims.r, dims.k());
        let (bi, _, g0, g1) = task_blocks(&dims, self.blocks, task);
        let ng = g1 - g0;
        let gs = n * LANES;
        let c = self.c;
        let zero = S::E::ZERO;
        let mut h = vec![zero; ng * gs];
        // States in lane layout (B, G, N, LANES): this task's groups are contiguous.
        let span = (bi * dims.groups() + g0) * gs..(bi * dims.groups() + g1) * gs;
        if let Some(h0) = self.h0 {
            h.copy_from_slice(&h0[span.clone()]);
        }
        for t in 0..l {
            let row = bi * l + t;
            let xd = &self.x.xdbl[row * k..(row + 1) * k];
            let (dtl, bv, cv) = (&xd[..r], &xd[r..r + n], &xd[r + n..r + 2 * n]);
            let its = if EVENT { self.x.its[row] } else { zero };
            let urow = &self.x.uz[row * 2 * d..(row + 1) * 2 * d];
            // SAFETY: row `row` of y, channels of this task's groups only.
            let yrow = unsafe { self.y.slice(row * d, d) };
            let save = (t + 1) % CHUNK == 0 || t + 1 == l;
            for gi in 0..ng {
                let g = g0 + gi;
                let d0 = g * LANES;
                let w = LANES.min(d - d0);
                let (delta, dta, _) = delta_of::<S, EVENT>(c, r, g, dtl, its);
                let u = S::load_part(&urow[d0..], w);
                let z = S::load_part(&urow[d + d0..], w);
                let du = S::mul(delta, u);
                let hg = &mut h[gi * gs..(gi + 1) * gs];
                let ag = &c.a[g * gs..(g + 1) * gs];
                let mut ys = S::zero();
                for ((hn, an), (&bn, &cn)) in hg
                    .chunks_exact_mut(LANES)
                    .zip(ag.chunks_exact(LANES))
                    .zip(bv.iter().zip(cv))
                {
                    let (abar, gain) = disc::<S, RULE, EVENT>(dta, delta, S::load(an));
                    let hv = S::fma(abar, S::load(hn), input::<S, RULE>(gain, bn, u, du));
                    S::store(hv, hn);
                    ys = S::fma(hv, S::splat(cn), ys);
                }
                let gate = S::mul(z, S::sigmoid(z));
                let out = S::mul(S::fma(S::load(&c.skip[d0..]), u, ys), gate);
                S::store_part(out, &mut yrow[d0..], w);
                if save {
                    if let Some(ck) = &self.ck {
                        let at = ((bi * dims.chunks() + t / CHUNK) * dims.groups() + g) * gs;
                        // SAFETY: this task's group of chunk t / CHUNK of batch bi.
                        unsafe { ck.slice(at, gs) }.copy_from_slice(hg);
                    }
                }
            }
        }
        if let Some(hout) = &self.hout {
            // SAFETY: this task's groups of batch bi.
            unsafe { hout.slice(span.start, span.len()) }.copy_from_slice(&h);
        }
    }
}

/// What a forward returns: `y (B, L, D)`, the checkpoints (when asked for)
/// and the last state `(B, D, N)` (when asked for).
pub struct FwdOut<T> {
    /// Outputs.
    pub y: Vec<T>,
    /// States after each chunk, `(B, chunks, G, N, LANES)`.
    pub ck: Option<Vec<T>>,
    /// Last state, `(B, G, N, LANES)` (see [`forward`]).
    pub h_last: Option<Vec<T>>,
}

struct FwdCall<'a, T> {
    rule: Rule,
    x: ScanInputs<'a, T>,
    c: &'a Consts<T>,
    h0: Option<&'a [T]>,
    out: &'a mut FwdOut<T>,
}

impl<T: Float> SimdFn<T> for FwdCall<'_, T> {
    type Out = ();
    fn call<S: Simd<E = T>>(self) {
        let dims = self.x.dims;
        let parallel = dims.b * dims.l * dims.d * dims.n >= PARALLEL_MIN;
        let blocks = blocks_for(&dims, if parallel { 4 * threads() } else { 1 });
        macro_rules! go {
            ($rule:expr, $event:expr) => {{
                let k = Fwd::<S, { $rule }, { $event }> {
                    x: self.x,
                    c: self.c,
                    h0: self.h0,
                    blocks,
                    y: SharedMut::new(&mut self.out.y),
                    ck: self.out.ck.as_mut().map(|v| SharedMut::new(v)),
                    hout: self.out.h_last.as_mut().map(|v| SharedMut::new(v)),
                };
                run_tasks_on::<S, _>(&k, dims.b * blocks, parallel);
            }};
        }
        with_rule_consts!(self.rule, !self.x.its.is_empty(), go);
    }
}

/// Runs the forward scan. `h0` is the initial state (zeros when `None`).
///
/// States are in lane layout `(B, G, N, LANES)`, `G = ceil(D / LANES)`: the
/// state `h[n]` of channel `d = LANES g + j` is at `[b, g, n, j]` (padded
/// channels hold zeros).
pub fn forward<T: Dispatch>(
    rule: Rule,
    x: ScanInputs<'_, T>,
    pack: &[T],
    h0: Option<&[T]>,
    save: bool,
    want_last: bool,
) -> FwdOut<T> {
    forward_with(rule, x, &Consts::new(&x.dims, pack), h0, save, want_last)
}

/// [`forward`] with the per-channel constants already unpacked.
pub fn forward_with<T: Dispatch>(
    rule: Rule,
    x: ScanInputs<'_, T>,
    c: &Consts<T>,
    h0: Option<&[T]>,
    save: bool,
    want_last: bool,
) -> FwdOut<T> {
    let dims = x.dims;
    let mut out = FwdOut {
        y: vec![T::ZERO; dims.b * dims.l * dims.d],
        ck: save.then(|| vec![T::ZERO; dims.ck_len()]),
        h_last: want_last.then(|| vec![T::ZERO; dims.b * dims.dp() * dims.n]),
    };
    if dims.b * dims.d * dims.n == 0 || (dims.l == 0 && out.h_last.is_none()) {
        return out;
    }
    dispatch(FwdCall {
        rule,
        x,
        c,
        h0,
        out: &mut out,
    });
    out
}
