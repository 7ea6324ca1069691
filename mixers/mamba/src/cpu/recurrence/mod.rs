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

use lrnnx_kernels::cpu::exec::{run_tasks_on, Kernel};
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::{dispatch, Dispatch, Simd, SimdFn};
use lrnnx_kernels::cpu::SharedMut;

/// Calls the local macro `$go!(RULE, EVENT)` with the rule code and the event
/// flag as constants, so each (rule, event) pair runs its own monomorphized kernel.
macro_rules! with_rule_consts {
    ($rule:expr, $event:expr, $go:ident) => {
        match ($rule.code(), $event) {
            (MAMBA, false) => $go!(MAMBA, false),
            (MAMBA, true) => $go!(MAMBA, true),
            (ZOH, false) => $go!(ZOH, false),
            (ZOH, true) => $go!(ZOH, true),
            (BILINEAR, false) => $go!(BILINEAR, false),
            (BILINEAR, true) => $go!(BILINEAR, true),
            (_, false) => $go!(DIRAC, false),
            (_, true) => $go!(DIRAC, true),
        }
    };
}

mod bwd;
mod fwd;

pub use bwd::backward;
pub use fwd::{forward, forward_with};
pub use lrnnx_kernels::cpu::simd::LANES;

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
            a: SharedMut::new(&mut c.a),
            wt: SharedMut::new(&mut c.wt),
            bias: SharedMut::new(&mut c.bias),
            skip: SharedMut::new(&mut c.skip),
            spa: SharedMut::new(&mut c.spa),
            abias: SharedMut::new(&mut c.abias),
        };
        run_tasks_on::<S, _>(&k, 1, false);
    }
}

struct Unpack<'a, S: Simd> {
    dims: Dims,
    src: Params<'a, S::E>,
    a: SharedMut<S::E>,
    wt: SharedMut<S::E>,
    bias: SharedMut<S::E>,
    skip: SharedMut<S::E>,
    spa: SharedMut<S::E>,
    abias: SharedMut<S::E>,
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

/// What task `task` of a scan split into `blocks` blocks per batch row works
/// on: `(batch row, block, first group, end group)`.
#[inline(always)]
fn task_blocks(dims: &Dims, blocks: usize, task: usize) -> (usize, usize, usize, usize) {
    let (bi, blk) = (task / blocks, task % blocks);
    let (g0, g1) = block_range(dims.groups(), blocks, blk);
    (bi, blk, g0, g1)
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
