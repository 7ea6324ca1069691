//! CPU kernels of the fused selective scan (forward and backward), on slices.
//!
//! Per batch row `b` and channel `d` (of `D`), with `N` state entries:
//!
//! ```text
//! s_t     = dt_proj.bias[d] + sum_r dt_proj.weight[d, r] * dt_low_t[r]
//! delta_t = softplus(s_t);   dtA_t = delta_t, or its_t * softplus(dtA_proj.bias[d]) (event mode)
//! A[n]    = -exp(A_log[d, n])
//! h_t[n]  = Abar(dtA_t, A[n]) * h_{t-1}[n] + gain(delta_t, A[n]) * B_t[n] * u_t
//! y_t     = (sum_n C_t[n] h_t[n] + D[d] u_t) * silu(z_t)
//! ```
//!
//! Inputs: `uz (B, L, 2D)` = `[u | z]`, `xdbl (B, L, R + 2N)` = `[dt_low | B | C]`
//! (x_proj's output, read in place), the parameter pack `(D, N + R + 3)` =
//! `[A_log | D | dt_proj.weight | dt_proj.bias | dtA_proj.bias]`, and in
//! event mode `its (B, L)`.
//!
//! Work is split over (batch, block of channels). Inside a task the vector
//! code (the crate's `simd` module) runs over [`LANES`] adjacent channels at once,
//! with the `N`-vector state of each channel in a small task-local buffer.
//! The `(B, L, D, N)` tensor of states is never formed: the forward saves
//! the state every [`CHUNK`] positions (when a backward will follow), and the
//! backward recomputes each chunk from its checkpoint, then runs the adjoint
//! recurrence backwards through it.

use crate::exec::{run_tasks_on, threads, Kernel, SendPtr};
use crate::math::Float;
use crate::simd::{dispatch, Dispatch, Simd, SimdFn};

pub use crate::simd::LANES;

/// Positions between saved states.
pub const CHUNK: usize = 32;
/// Channel groups per block in the backward (keeps the chunk buffers in L2).
const GROUP_BLOCK: usize = 2;
/// Below this many state updates a scan runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 18;

/// The discretization rule of the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `exp(dtA A)`, gain `delta` (Euler).
    Mamba,
    /// `exp(dtA A)`, gain `expm1(delta A) / A`.
    Zoh,
    /// `(1 + dtA A / 2) / (1 - dtA A / 2)`, gain `delta / (1 - delta A / 2)`.
    Bilinear,
    /// `exp(dtA A)`, gain 1.
    Dirac,
}

const MAMBA: u8 = 0;
const ZOH: u8 = 1;
const BILINEAR: u8 = 2;
const DIRAC: u8 = 3;

impl Rule {
    fn code(self) -> u8 {
        match self {
            Rule::Mamba => MAMBA,
            Rule::Zoh => ZOH,
            Rule::Bilinear => BILINEAR,
            Rule::Dirac => DIRAC,
        }
    }
}

/// Sizes of one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub l: usize,
    /// Channels `D` (d_inner).
    pub d: usize,
    /// State size `N`.
    pub n: usize,
    /// Step rank `R`.
    pub r: usize,
}

impl Dims {
    /// Width of `xdbl`'s rows, `R + 2N`.
    pub fn k(&self) -> usize {
        self.r + 2 * self.n
    }
    /// Width of the parameter pack, `N + R + 3`.
    pub fn p(&self) -> usize {
        self.n + self.r + 3
    }
    /// Channel groups of `LANES`.
    pub fn groups(&self) -> usize {
        self.d.div_ceil(LANES)
    }
    /// `D` rounded up to whole groups.
    pub fn dp(&self) -> usize {
        self.groups() * LANES
    }
    /// Saved chunks.
    pub fn chunks(&self) -> usize {
        self.l.div_ceil(CHUNK)
    }
    /// Length of the checkpoint buffer.
    pub fn ck_len(&self) -> usize {
        self.b * self.chunks() * self.dp() * self.n
    }
}

/// Per-channel constants, grouped by `LANES` channels (padded channels are inert).
#[derive(Debug, Clone)]
pub struct Consts<T> {
    /// `(G, N, LANES)`: `A = -exp(A_log)`.
    pub a: Vec<T>,
    /// `(G, R, LANES)`: `dt_proj.weight`.
    pub wt: Vec<T>,
    /// `(Dp)`: `dt_proj.bias`.
    pub bias: Vec<T>,
    /// `(Dp)`: the skip `D`.
    pub skip: Vec<T>,
    /// `(Dp)`: `softplus(dtA_proj.bias)`.
    pub spa: Vec<T>,
    /// `(Dp)`: `dtA_proj.bias` (for its gradient).
    pub abias: Vec<T>,
}

/// Column `offset` of a row-major matrix with rows of `stride` elements:
/// element `(ch, k)` is `data[ch * stride + offset + k]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a, T> {
    /// The data.
    pub data: &'a [T],
    /// Row length.
    pub stride: usize,
    /// First column.
    pub offset: usize,
}

impl<'a, T: Copy> Strided<'a, T> {
    /// A whole matrix with rows of `stride` (a vector: stride 1).
    pub fn whole(data: &'a [T], stride: usize) -> Self {
        Self {
            data,
            stride,
            offset: 0,
        }
    }
    #[inline(always)]
    fn at(&self, ch: usize, k: usize) -> T {
        self.data[ch * self.stride + self.offset + k]
    }
}

/// Where the per-channel parameters are read from.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a, T> {
    /// `A_log (D, N)`.
    pub a_log: Strided<'a, T>,
    /// `D (D)`.
    pub skip: Strided<'a, T>,
    /// `dt_proj.weight (D, R)`.
    pub dt_w: Strided<'a, T>,
    /// `dt_proj.bias (D)`.
    pub dt_b: Strided<'a, T>,
    /// `dtA_proj.bias (D)`.
    pub dta_b: Strided<'a, T>,
}

impl<'a, T: Copy> Params<'a, T> {
    /// The columns of `pack (D, N + R + 3)`.
    pub fn packed(dims: &Dims, pack: &'a [T]) -> Self {
        let (n, r, p) = (dims.n, dims.r, dims.p());
        let col = |offset| Strided {
            data: pack,
            stride: p,
            offset,
        };
        Self {
            a_log: col(0),
            skip: col(n),
            dt_w: col(n + 1),
            dt_b: col(n + 1 + r),
            dta_b: col(n + 2 + r),
        }
    }
}

impl<T: Dispatch> Consts<T> {
    /// Unpacks `pack (D, N + R + 3)`.
    pub fn new(dims: &Dims, pack: &[T]) -> Self {
        Self::from_params(dims, Params::packed(dims, pack))
    }

    /// Reads the parameters from wherever they are.
    pub fn from_params(dims: &Dims, src: Params<'_, T>) -> Self {
        let (n, r, dp) = (dims.n, dims.r, dims.dp());
        let mut c = Consts {
            a: vec![-T::ONE; n * dp],
            wt: vec![T::ZERO; r * dp],
            bias: vec![T::ZERO; dp],
            skip: vec![T::ZERO; dp],
            spa: vec![T::ZERO; dp],
            abias: vec![T::ZERO; dp],
        };
        dispatch(UnpackCall {
            dims: *dims,
            src,
            out: &mut c,
        });
        c
    }
}

struct UnpackCall<'a, 'b, T> {
    dims: Dims,
    src: Params<'a, T>,
    out: &'b mut Consts<T>,
}

impl<T: Float> SimdFn<T> for UnpackCall<'_, '_, T> {
    type Out = ();
    fn call<S: Simd<E = T>>(self) {
        let c = &mut *self.out;
        let k = Unpack::<S> {
            dims: self.dims,
            src: self.src,
            a: SendPtr(c.a.as_mut_ptr()),
            wt: SendPtr(c.wt.as_mut_ptr()),
            bias: SendPtr(c.bias.as_mut_ptr()),
            skip: SendPtr(c.skip.as_mut_ptr()),
            spa: SendPtr(c.spa.as_mut_ptr()),
            abias: SendPtr(c.abias.as_mut_ptr()),
        };
        run_tasks_on::<S, _>(&k, 1, false);
    }
}

struct Unpack<'a, S: Simd> {
    dims: Dims,
    src: Params<'a, S::E>,
    a: SendPtr<S::E>,
    wt: SendPtr<S::E>,
    bias: SendPtr<S::E>,
    skip: SendPtr<S::E>,
    spa: SendPtr<S::E>,
    abias: SendPtr<S::E>,
}

impl<S: Simd> Kernel for Unpack<'_, S> {
    #[inline(always)]
    fn run(&self, _task: usize) {
        let (d, n, r, dp) = (self.dims.d, self.dims.n, self.dims.r, self.dims.dp());
        // SAFETY: the single task owns every buffer.
        let (a, wt, bias, skip, spa, abias) = unsafe {
            (
                self.a.slice(0, n * dp),
                self.wt.slice(0, r * dp),
                self.bias.slice(0, dp),
                self.skip.slice(0, dp),
                self.spa.slice(0, dp),
                self.abias.slice(0, dp),
            )
        };
        let s = &self.src;
        let mut tmp = [S::E::ZERO; LANES];
        for g in 0..self.dims.groups() {
            let d0 = g * LANES;
            let w = LANES.min(d - d0);
            for k in 0..n {
                for (j, v) in tmp.iter_mut().enumerate() {
                    *v = if j < w {
                        s.a_log.at(d0 + j, k)
                    } else {
                        S::E::ZERO
                    };
                }
                // Padded lanes: A = -exp(0) = -1, inert.
                S::store(S::neg(S::exp(S::load(&tmp))), &mut a[(g * n + k) * LANES..]);
            }
            for k in 0..r {
                for j in 0..w {
                    wt[(g * r + k) * LANES + j] = s.dt_w.at(d0 + j, k);
                }
            }
            for j in 0..w {
                skip[d0 + j] = s.skip.at(d0 + j, 0);
                bias[d0 + j] = s.dt_b.at(d0 + j, 0);
                abias[d0 + j] = s.dta_b.at(d0 + j, 0);
            }
            S::store(S::softplus(S::load(&abias[d0..])), &mut spa[d0..]);
        }
    }
}

/// `(delta, dtA, softplus'(s))` of group `g` at one position.
#[inline(always)]
fn delta_of<S: Simd, const EVENT: bool>(
    c: &Consts<S::E>,
    r: usize,
    g: usize,
    dtl: &[S::E],
    its: S::E,
) -> (S::V, S::V, S::V) {
    let d0 = g * LANES;
    let mut s = S::load(&c.bias[d0..]);
    for (w, &x) in c.wt[g * r * LANES..(g + 1) * r * LANES]
        .chunks_exact(LANES)
        .zip(dtl)
    {
        s = S::fma(S::load(w), S::splat(x), s);
    }
    let delta = S::softplus(s);
    let dta = if EVENT {
        S::mul(S::splat(its), S::load(&c.spa[d0..]))
    } else {
        delta
    };
    (delta, dta, s)
}

/// `(Abar, gain)` of one state entry for every lane.
#[inline(always)]
fn disc<S: Simd, const RULE: u8, const EVENT: bool>(
    dta: S::V,
    delta: S::V,
    a: S::V,
) -> (S::V, S::V) {
    let one = S::c(1.0);
    match RULE {
        MAMBA => (S::exp(S::mul(dta, a)), delta),
        ZOH => {
            let (em1, e) = S::expm1_exp(S::mul(delta, a));
            let abar = if EVENT { S::exp(S::mul(dta, a)) } else { e };
            (abar, S::div(em1, a))
        }
        BILINEAR => {
            let half = S::c(0.5);
            let x = S::mul(half, S::mul(dta, a));
            let abar = S::div(S::add(one, x), S::sub(one, x));
            (
                abar,
                S::div(delta, S::sub(one, S::mul(half, S::mul(delta, a)))),
            )
        }
        _ => (S::exp(S::mul(dta, a)), one),
    }
}

/// The input term `gain * B[n] * u` (`du = delta * u` precomputed for the Euler rule).
#[inline(always)]
fn input<S: Simd, const RULE: u8>(gain: S::V, bn: S::E, u: S::V, du: S::V) -> S::V {
    match RULE {
        MAMBA => S::mul(S::splat(bn), du),
        DIRAC => S::mul(S::splat(bn), u),
        _ => S::mul(gain, S::mul(S::splat(bn), u)),
    }
}

/// Splits `groups` into `blocks` near-equal ranges.
fn block_range(groups: usize, blocks: usize, blk: usize) -> (usize, usize) {
    (groups * blk / blocks, groups * (blk + 1) / blocks)
}

/// Blocks of channels per batch row, so that there are at least `min_tasks` tasks.
fn blocks_for(dims: &Dims, min_tasks: usize) -> usize {
    min_tasks
        .div_ceil(dims.b.max(1))
        .clamp(1, dims.groups().max(1))
}

/// Inputs shared by the forward and backward kernels.
#[derive(Clone, Copy)]
pub struct ScanInputs<'a, T> {
    /// Sizes.
    pub dims: Dims,
    /// `(B, L, 2D)`: `[u | z]`.
    pub uz: &'a [T],
    /// `(B, L, R + 2N)`: `[dt_low | B | C]`.
    pub xdbl: &'a [T],
    /// `(B, L)` event timesteps, or empty.
    pub its: &'a [T],
}

struct Fwd<'a, S: Simd, const RULE: u8, const EVENT: bool> {
    x: ScanInputs<'a, S::E>,
    c: &'a Consts<S::E>,
    h0: Option<&'a [S::E]>,
    blocks: usize,
    y: SendPtr<S::E>,
    ck: Option<SendPtr<S::E>>,
    hout: Option<SendPtr<S::E>>,
}

impl<S: Simd, const RULE: u8, const EVENT: bool> Kernel for Fwd<'_, S, RULE, EVENT> {
    #[inline(always)]
    fn run(&self, task: usize) {
        let dims = self.x.dims;
        let (l, d, n, r, k) = (dims.l, dims.d, dims.n, dims.r, dims.k());
        let (bi, blk) = (task / self.blocks, task % self.blocks);
        let (g0, g1) = block_range(dims.groups(), self.blocks, blk);
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
                    y: SendPtr(self.out.y.as_mut_ptr()),
                    ck: self.out.ck.as_mut().map(|v| SendPtr(v.as_mut_ptr())),
                    hout: self.out.h_last.as_mut().map(|v| SendPtr(v.as_mut_ptr())),
                };
                run_tasks_on::<S, _>(&k, dims.b * blocks, parallel);
            }};
        }
        match (self.rule.code(), !self.x.its.is_empty()) {
            (MAMBA, false) => go!(MAMBA, false),
            (MAMBA, true) => go!(MAMBA, true),
            (ZOH, false) => go!(ZOH, false),
            (ZOH, true) => go!(ZOH, true),
            (BILINEAR, false) => go!(BILINEAR, false),
            (BILINEAR, true) => go!(BILINEAR, true),
            (_, false) => go!(DIRAC, false),
            (_, true) => go!(DIRAC, true),
        }
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

struct Bwd<'a, S: Simd, const RULE: u8, const EVENT: bool> {
    x: ScanInputs<'a, S::E>,
    c: &'a Consts<S::E>,
    g: &'a [S::E],
    ck: &'a [S::E],
    blocks: usize,
    duz: SendPtr<S::E>,
    /// `(blocks, B, L, K)`.
    dx: SendPtr<S::E>,
    /// `(B, N + R + 3, Dp)`: dA, dD, dW (R rows), dbias, dspa.
    dpar: SendPtr<S::E>,
}

impl<S: Simd, const RULE: u8, const EVENT: bool> Kernel for Bwd<'_, S, RULE, EVENT> {
    #[inline(always)]
    fn run(&self, task: usize) {
        let dims = self.x.dims;
        let (b, l, d, n, r, k, dp) = (dims.b, dims.l, dims.d, dims.n, dims.r, dims.k(), dims.dp());
        let (bi, blk) = (task / self.blocks, task % self.blocks);
        let (g0, g1) = block_range(dims.groups(), self.blocks, blk);
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
                                MAMBA => {
                                    // gain = delta: sum lb over n, apply after the loop.
                                    sb = S::add(sb, lb);
                                    let db = S::mul(lv, dlu);
                                    S::store(
                                        S::add(S::load(&dbx[sl.clone()]), db),
                                        &mut dbx[sl.clone()],
                                    );
                                }
                                DIRAC => {
                                    sb = S::add(sb, lb);
                                    let db = S::mul(lv, u);
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
                    duz: SendPtr(self.duz.as_mut_ptr()),
                    dx: SendPtr(self.dx.as_mut_ptr()),
                    dpar: SendPtr(self.dpar.as_mut_ptr()),
                };
                run_tasks_on::<S, _>(&kern, dims.b * self.blocks, self.parallel);
            }};
        }
        match (self.rule.code(), !self.x.its.is_empty()) {
            (MAMBA, false) => go!(MAMBA, false),
            (MAMBA, true) => go!(MAMBA, true),
            (ZOH, false) => go!(ZOH, false),
            (ZOH, true) => go!(ZOH, true),
            (BILINEAR, false) => go!(BILINEAR, false),
            (BILINEAR, true) => go!(BILINEAR, true),
            (_, false) => go!(DIRAC, false),
            (_, true) => go!(DIRAC, true),
        }
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
