//! The backward scan kernel: per chunk, recompute the states from the
//! checkpoint, then run the adjoint recurrence backwards through it.

use super::*;
use lrnnx_kernels::cpu::exec::threads;

struct Bwd<'a, S: Simd, const RULE: u8, const EVENT: bool> {
    x: ScanInputs<'a, S::E>,
    c: &'a Consts<S::E>,
    g: &'a [S::E],
    ck: &'a [S::E],
    blocks: usize,
    duz: SharedMut<S::E>,
    /// `(blocks, B, L, K)`.
    dx: SharedMut<S::E>,
    /// `(B, N + R + 3, Dp)`: dA, dD, dW (R rows), dbias, dspa.
    dpar: SharedMut<S::E>,
}

impl<S: Simd, const RULE: u8, const EVENT: bool> Kernel for Bwd<'_, S, RULE, EVENT> {
    #[inline(always)]
    fn run(&self, task: usize) {
        let dims = self.x.dims;
        let (b, l, d, n, r, k, dp) = (dims.b, dims.l, dims.d, dims.n, dims.r, dims.k(), dims.dp());
        let (bi, blk, g0, g1) = task_blocks(&dims, self.blocks, task);
        let ng = g1 - g0;
        let gs = n * LANES;
        let c = self.c;
        let zero = S::E::ZERO;
        let one = S::c(1.0);
        let half = S::c(0.5);
        let needs_gain = RULE == ZOH || RULE == BILINEAR;
        // Per-channel gradient accumulators (lanes of this task's groups).
        let mut acc_a = vec![zero; ng * gs];
        let mut acc_w = vec![zero; ng * r * LANES];
        let mut acc_d = vec![zero; ng * LANES];
        let mut acc_b = vec![zero; ng * LANES];
        let mut acc_s = vec![zero; ng * LANES];
        // Adjoint carried backwards: Abar_{t+1} lambda_{t+1}.
        let mut lam = vec![zero; ng * gs];
        let gb = GROUP_BLOCK.min(ng.max(1));
        let mut hbuf = vec![zero; (CHUNK + 1) * gb * gs];
        let mut abuf = vec![zero; CHUNK * gb * gs];
        let mut cbuf = vec![zero; if needs_gain { CHUNK * gb * gs } else { 0 }];
        let mut sbuf = vec![zero; CHUNK * gb * LANES];
        // Lane-wise partial sums of d xdbl over this task's channels.
        let mut dxl = vec![zero; CHUNK * k * LANES];
        for ci in (0..dims.chunks()).rev() {
            let t0 = ci * CHUNK;
            let len = CHUNK.min(l - t0);
            dxl.iter_mut().for_each(|v| *v = zero);
            for gb0 in (0..ng).step_by(gb) {
                let nbg = gb.min(ng - gb0);
                // Entering state of the chunk.
                for q in 0..nbg {
                    let dst = &mut hbuf[q * gs..(q + 1) * gs];
                    if ci == 0 {
                        dst.iter_mut().for_each(|v| *v = zero);
                    } else {
                        let at =
                            ((bi * dims.chunks() + ci - 1) * dims.groups() + g0 + gb0 + q) * gs;
                        dst.copy_from_slice(&self.ck[at..at + gs]);
                    }
                }
                // Recompute the chunk's states (as the forward does).
                for tt in 0..len {
                    let row = bi * l + t0 + tt;
                    let xd = &self.x.xdbl[row * k..(row + 1) * k];
                    let (dtl, bv) = (&xd[..r], &xd[r..r + n]);
                    let its = if EVENT { self.x.its[row] } else { zero };
                    let urow = &self.x.uz[row * 2 * d..(row + 1) * 2 * d];
                    for q in 0..nbg {
                        let g = g0 + gb0 + q;
                        let d0 = g * LANES;
                        let w = LANES.min(d - d0);
                        let (delta, dta, s) = delta_of::<S, EVENT>(c, r, g, dtl, its);
                        S::store(s, &mut sbuf[(tt * gb + q) * LANES..]);
                        let u = S::load_part(&urow[d0..], w);
                        let du = S::mul(delta, u);
                        let at = (tt * gb + q) * gs;
                        let (prev, next) = hbuf.split_at_mut(at + gb * gs);
                        let hp_rows = &prev[at..at + gs];
                        let hn_rows = &mut next[..gs];
                        let ag = &c.a[g * gs..(g + 1) * gs];
                        for (e, ((hp, hn), an)) in hp_rows
                            .chunks_exact(LANES)
                            .zip(hn_rows.chunks_exact_mut(LANES))
                            .zip(ag.chunks_exact(LANES))
                            .enumerate()
                        {
                            let (abar, gain) = disc::<S, RULE, EVENT>(dta, delta, S::load(an));
                            let hv =
                                S::fma(abar, S::load(hp), input::<S, RULE>(gain, bv[e], u, du));
                            S::store(hv, hn);
                            S::store(abar, &mut abuf[at + e * LANES..]);
                            if needs_gain {
                                S::store(gain, &mut cbuf[at + e * LANES..]);
                            }
                        }
                    }
                }
                // Adjoint pass backwards through the chunk.
                for tt in (0..len).rev() {
                    let row = bi * l + t0 + tt;
                    let xd = &self.x.xdbl[row * k..(row + 1) * k];
                    let (dtl, bv, cv) = (&xd[..r], &xd[r..r + n], &xd[r + n..r + 2 * n]);
                    let its = if EVENT { self.x.its[row] } else { zero };
                    let urow = &self.x.uz[row * 2 * d..(row + 1) * 2 * d];
                    let grow = &self.g[row * d..(row + 1) * d];
                    // SAFETY: row `row` of duz, this task's channels only.
                    let drow = unsafe { self.duz.slice(row * 2 * d, 2 * d) };
                    let dxt = &mut dxl[tt * k * LANES..(tt + 1) * k * LANES];
                    for q in 0..nbg {
                        let gi = gb0 + q;
                        let g = g0 + gi;
                        let d0 = g * LANES;
                        let w = LANES.min(d - d0);
                        let s = S::load(&sbuf[(tt * gb + q) * LANES..]);
                        let delta = S::softplus(s);
                        let dta = if EVENT {
                            S::mul(S::splat(its), S::load(&c.spa[d0..]))
                        } else {
                            delta
                        };
                        let u = S::load_part(&urow[d0..], w);
                        let z = S::load_part(&urow[d + d0..], w);
                        let gout = S::load_part(&grow[d0..], w);
                        let skip = S::load(&c.skip[d0..]);
                        let sz = S::sigmoid(z);
                        let gy = S::mul(gout, S::mul(z, sz));
                        let dlu = S::mul(delta, u);
                        let mut du = S::mul(gy, skip);
                        let mut ys = S::zero();
                        let mut ddelta = S::zero();
                        let mut ddta = S::zero();
                        let mut sb = S::zero();
                        let at = (tt * gb + q) * gs;
                        let hp_rows = &hbuf[at..at + gs];
                        let hn_rows = &hbuf[at + gb * gs..at + gb * gs + gs];
                        let ab_rows = &abuf[at..at + gs];
                        let gn_rows = if needs_gain {
                            &cbuf[at..at + gs]
                        } else {
                            ab_rows
                        };
                        let ag = &c.a[g * gs..(g + 1) * gs];
                        let lg = &mut lam[gi * gs..(gi + 1) * gs];
                        let accg = &mut acc_a[gi * gs..(gi + 1) * gs];
                        let (dbx, dcx) =
                            dxt[r * LANES..(r + 2 * n) * LANES].split_at_mut(n * LANES);
                        for e in 0..n {
                            let sl = e * LANES..(e + 1) * LANES;
                            let an = S::load(&ag[sl.clone()]);
                            let (bn, cn) = (bv[e], cv[e]);
                            let hn = S::load(&hn_rows[sl.clone()]);
                            let hp = S::load(&hp_rows[sl.clone()]);
                            let ab = S::load(&ab_rows[sl.clone()]);
                            let lv = S::fma(gy, S::splat(cn), S::load(&lg[sl.clone()]));
                            ys = S::fma(hn, S::splat(cn), ys);
                            S::store(
                                S::fma(gy, hn, S::load(&dcx[sl.clone()])),
                                &mut dcx[sl.clone()],
                            );
                            // A side: Abar(dtA * A).
                            let dab = match RULE {
                                BILINEAR => {
                                    let q = S::div(one, S::sub(one, S::mul(half, S::mul(dta, an))));
                                    S::mul(q, q)
                                }
                                _ => ab,
                            };
                            let gx = S::mul(S::mul(lv, hp), dab);
                            ddta = S::fma(gx, an, ddta);
                            let mut da = S::mul(gx, dta);
                            // Input side: gain(delta, A) * B * u.
                            let lb = S::mul(lv, S::splat(bn));
                            match RULE {
                                MAMBA | DIRAC => {
                                    // gain = delta (Mamba) or 1 (Dirac): sum lb over n,
                                    // apply after the loop.
                                    sb = S::add(sb, lb);
                                    let db = S::mul(lv, if RULE == MAMBA { dlu } else { u });
                                    S::store(
                                        S::add(S::load(&dbx[sl.clone()]), db),
                                        &mut dbx[sl.clone()],
                                    );
                                }
                                _ => {
                                    let gain = S::load(&gn_rows[sl.clone()]);
                                    du = S::fma(lb, gain, du);
                                    let db = S::mul(S::mul(lv, gain), u);
                                    S::store(
                                        S::add(S::load(&dbx[sl.clone()]), db),
                                        &mut dbx[sl.clone()],
                                    );
                                    let gg = S::mul(lb, u);
                                    if RULE == ZOH {
                                        let x = S::mul(delta, an);
                                        ddelta = S::fma(gg, S::fma(gain, an, one), ddelta);
                                        da = S::fma(
                                            S::mul(S::mul(gg, delta), delta),
                                            S::phi2(x),
                                            da,
                                        );
                                    } else {
                                        let qb = S::div(
                                            one,
                                            S::sub(one, S::mul(half, S::mul(delta, an))),
                                        );
                                        let q2 = S::mul(qb, qb);
                                        ddelta = S::fma(gg, q2, ddelta);
                                        da = S::fma(
                                            S::mul(S::mul(S::mul(gg, half), delta), delta),
                                            q2,
                                            da,
                                        );
                                    }
                                }
                            }
                            S::store(
                                S::add(S::load(&accg[sl.clone()]), da),
                                &mut accg[sl.clone()],
                            );
                            S::store(S::mul(ab, lv), &mut lg[sl]);
                        }
                        match RULE {
                            MAMBA => {
                                du = S::fma(sb, delta, du);
                                ddelta = S::mul(sb, u);
                            }
                            DIRAC => du = S::add(du, sb),
                            _ => {}
                        }
                        let yd = S::fma(skip, u, ys);
                        let dz = S::mul(
                            S::mul(S::mul(gout, yd), sz),
                            S::fma(z, S::sub(one, sz), one),
                        );
                        let ad = &mut acc_d[gi * LANES..(gi + 1) * LANES];
                        S::store(S::fma(gy, u, S::load(ad)), ad);
                        let dd = if EVENT { ddelta } else { S::add(ddelta, ddta) };
                        let ds = S::mul(dd, S::softplus_grad(s));
                        if EVENT {
                            let asg = &mut acc_s[gi * LANES..(gi + 1) * LANES];
                            S::store(S::fma(ddta, S::splat(its), S::load(asg)), asg);
                        }
                        let abg = &mut acc_b[gi * LANES..(gi + 1) * LANES];
                        S::store(S::add(S::load(abg), ds), abg);
                        let wg = &c.wt[g * r * LANES..(g + 1) * r * LANES];
                        let awg = &mut acc_w[gi * r * LANES..(gi + 1) * r * LANES];
                        for (((aw, wt), dl), &xv) in awg
                            .chunks_exact_mut(LANES)
                            .zip(wg.chunks_exact(LANES))
                            .zip(dxt[..r * LANES].chunks_exact_mut(LANES))
                            .zip(dtl)
                        {
                            S::store(S::fma(ds, S::splat(xv), S::load(aw)), aw);
                            S::store(S::fma(ds, S::load(wt), S::load(dl)), dl);
                        }
                        S::store_part(du, &mut drow[d0..], w);
                        S::store_part(dz, &mut drow[d + d0..], w);
                    }
                }
            }
            // Sum the lanes of d xdbl into this task's rows.
            for tt in 0..len {
                let row = (blk * b + bi) * l + t0 + tt;
                // SAFETY: block blk's partial rows of batch bi belong to this task.
                let dst = unsafe { self.dx.slice(row * k, k) };
                for (v, src) in dst
                    .iter_mut()
                    .zip(dxl[tt * k * LANES..(tt + 1) * k * LANES].chunks_exact(LANES))
                {
                    *v = S::hsum(S::load(src));
                }
            }
        }
        // Per-channel gradients of batch bi.
        let rows = n + r + 3;
        for gi in 0..ng {
            let d0 = (g0 + gi) * LANES;
            let put = |row: usize, v: &[S::E]| {
                // SAFETY: this task's channels of batch bi's partial.
                let dst = unsafe { self.dpar.slice((bi * rows + row) * dp + d0, LANES) };
                dst.copy_from_slice(&v[..LANES]);
            };
            for e in 0..n {
                put(e, &acc_a[gi * gs + e * LANES..]);
            }
            put(n, &acc_d[gi * LANES..]);
            for e in 0..r {
                put(n + 1 + e, &acc_w[(gi * r + e) * LANES..]);
            }
            put(n + 1 + r, &acc_b[gi * LANES..]);
            put(n + 2 + r, &acc_s[gi * LANES..]);
        }
    }
}

/// Gradients of a scan: `d uz (B, L, 2D)`, `d xdbl (B, L, R + 2N)`, `d pack (D, N + R + 3)`.
pub struct BwdOut<T> {
    /// Gradient of `[u | z]`.
    pub duz: Vec<T>,
    /// Gradient of `[dt_low | B | C]`.
    pub dxdbl: Vec<T>,
    /// Gradient of the parameter pack.
    pub dpack: Vec<T>,
}

struct BwdCall<'a, T> {
    rule: Rule,
    x: ScanInputs<'a, T>,
    c: &'a Consts<T>,
    ck: &'a [T],
    g: &'a [T],
    blocks: usize,
    parallel: bool,
    duz: &'a mut [T],
    dx: &'a mut [T],
    dpar: &'a mut [T],
}

impl<T: Float> SimdFn<T> for BwdCall<'_, T> {
    type Out = ();
    fn call<S: Simd<E = T>>(self) {
        let dims = self.x.dims;
        macro_rules! go {
            ($rule:expr, $event:expr) => {{
                let kern = Bwd::<S, { $rule }, { $event }> {
                    x: self.x,
                    c: self.c,
                    g: self.g,
                    ck: self.ck,
                    blocks: self.blocks,
                    duz: SharedMut::new(&mut *self.duz),
                    dx: SharedMut::new(&mut *self.dx),
                    dpar: SharedMut::new(&mut *self.dpar),
                };
                run_tasks_on::<S, _>(&kern, dims.b * self.blocks, self.parallel);
            }};
        }
        with_rule_consts!(self.rule, !self.x.its.is_empty(), go);
    }
}

/// Runs the backward scan from the checkpoints `ck` of [`forward`] and the output gradient `g (B, L, D)`.
pub fn backward<T: Dispatch>(
    rule: Rule,
    x: ScanInputs<'_, T>,
    pack: &[T],
    ck: &[T],
    g: &[T],
) -> BwdOut<T> {
    let dims = x.dims;
    let (b, l, d, n, r, k, dp) = (dims.b, dims.l, dims.d, dims.n, dims.r, dims.k(), dims.dp());
    let c = Consts::new(&dims, pack);
    let mut duz = vec![T::ZERO; b * l * 2 * d];
    let rows = n + r + 3;
    let parallel = b * l * d * n >= PARALLEL_MIN;
    let blocks = blocks_for(&dims, if parallel { 2 * threads() } else { 1 });
    let mut dx = vec![T::ZERO; blocks * b * l * k];
    let mut dpar = vec![T::ZERO; b * rows * dp];
    if b * l * d * n > 0 {
        dispatch(BwdCall {
            rule,
            x,
            c: &c,
            ck,
            g,
            blocks,
            parallel,
            duz: &mut duz,
            dx: &mut dx,
            dpar: &mut dpar,
        });
    }
    // Sum the channel blocks' partials of d xdbl.
    let mut dxdbl = dx;
    if blocks > 1 {
        let len = b * l * k;
        let (first, rest) = dxdbl.split_at_mut(len);
        for part in rest.chunks(len) {
            for (a, v) in first.iter_mut().zip(part) {
                *a += *v;
            }
        }
        dxdbl.truncate(len);
    }
    // Sum the batch partials of the per-channel gradients, and chain to the packed parameters.
    let p = dims.p();
    let mut dpack = vec![T::ZERO; d * p];
    for ch in 0..d {
        let (g, j) = (ch / LANES, ch % LANES);
        let sum = |row: usize| {
            let mut s = T::ZERO;
            for bi in 0..b {
                s += dpar[(bi * rows + row) * dp + ch];
            }
            s
        };
        let out = &mut dpack[ch * p..(ch + 1) * p];
        for (e, o) in out[..n].iter_mut().enumerate() {
            // A = -exp(A_log): dA/dA_log = A.
            *o = sum(e) * c.a[(g * n + e) * LANES + j];
        }
        out[n] = sum(n);
        for e in 0..r {
            out[n + 1 + e] = sum(n + 1 + e);
        }
        out[n + 1 + r] = sum(n + 1 + r);
        out[n + 2 + r] = sum(n + 2 + r) * c.abias[ch].softplus_grad();
    }
    BwdOut { duz, dxdbl, dpack }
}
