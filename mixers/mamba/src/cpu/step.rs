//! One decoding step, fused on slices: `in_proj` (small-batch matrix-vector
//! products, no packing), the convolution window update + conv + silu,
//! `x_proj`, the scan over one position (the very kernel the forward uses,
//! started from the carried state), and `out_proj`.

use candle_core::{DType, Tensor};

use crate::cpu::recurrence::{self, Consts, Dims, Params, Rule, ScanInputs, Strided};
use lrnnx_kernels::cpu::cpu_slice;
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::{Dispatch, Simd, LANES};
use lrnnx_kernels::cpu::simd_kernel::{run_kernel, Schedule, SimdKernel};
use lrnnx_kernels::cpu::SharedMut;
use lrnnx_kernels::depthwise_conv::conv_step;

/// The layer's parameters as the step reads them.
#[derive(Debug, Clone, Copy)]
pub struct StepWeights<'a> {
    /// `in_proj.weight (2D, H)`.
    pub in_w: &'a Tensor,
    /// `in_proj.bias (2D)`.
    pub in_b: Option<&'a Tensor>,
    /// `conv1d.weight (D, 1, W)`.
    pub conv_w: &'a Tensor,
    /// `conv1d.bias (D)`.
    pub conv_b: Option<&'a Tensor>,
    /// `x_proj.weight (R + 2N, D)`.
    pub x_proj: &'a Tensor,
    /// `A_log (D, N)`.
    pub a_log: &'a Tensor,
    /// `D (D)`.
    pub skip: &'a Tensor,
    /// `dt_proj.weight (D, R)`.
    pub dt_w: &'a Tensor,
    /// `dt_proj.bias (D)`.
    pub dt_b: &'a Tensor,
    /// `dtA_proj.bias (D)`.
    pub dta_b: &'a Tensor,
    /// `out_proj.weight (H, D)`.
    pub out_w: &'a Tensor,
    /// `out_proj.bias (H)`.
    pub out_b: Option<&'a Tensor>,
}

/// What a step returns: `out (B, H)`, the new `conv_state (B, D, W)` and
/// `lrnn_state` (lane layout `(B, ceil(D / 16), N, 16)`).
pub struct StepOut {
    /// The output.
    pub out: Tensor,
    /// The new convolution window.
    pub conv_state: Tensor,
    /// The new recurrent state.
    pub h: Tensor,
}

/// Runs one step for `x (B, H)` from `conv_state (B, D, W)` and `h` (lane layout);
/// `its (B)` switches on event mode. Everything must share the weights' dtype.
pub fn step(
    rule: Rule,
    wts: &StepWeights<'_>,
    x: &Tensor,
    conv_state: &Tensor,
    h: &Tensor,
    its: Option<&Tensor>,
) -> candle_core::Result<StepOut> {
    match wts.in_w.dtype() {
        DType::F32 => typed::<f32>(rule, wts, x, conv_state, h, its),
        DType::F64 => typed::<f64>(rule, wts, x, conv_state, h, its),
        dt => candle_core::bail!("Mamba step: unsupported dtype {dt:?} (f32 or f64)"),
    }
}

fn typed<T: Dispatch + candle_core::WithDType>(
    rule: Rule,
    wts: &StepWeights<'_>,
    x: &Tensor,
    conv_state: &Tensor,
    h: &Tensor,
    its: Option<&Tensor>,
) -> candle_core::Result<StepOut> {
    let dtype = wts.in_w.dtype();
    let prep = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(dtype)?.contiguous() };
    let (x, cs, h0) = (prep(x)?, prep(conv_state)?, prep(h)?);
    let its = its.map(prep).transpose()?;
    let (b, hm) = x.dims2()?;
    let (d2, _) = wts.in_w.dims2()?;
    let d = d2 / 2;
    let (k, _) = wts.x_proj.dims2()?;
    let (_, n) = wts.a_log.dims2()?;
    let (_, r) = wts.dt_w.dims2()?;
    let taps = wts.conv_w.elem_count() / d.max(1);
    if cs.dims() != [b, d, taps] {
        candle_core::bail!(
            "Mamba step: expected conv_state ({b}, {d}, {taps}), found {:?}",
            cs.dims()
        );
    }
    let groups = d.div_ceil(LANES);
    if h0.dims() != [b, groups, n, LANES] {
        candle_core::bail!(
            "Mamba step: expected lrnn_state ({b}, {groups}, {n}, {LANES}), found {:?}",
            h0.dims()
        );
    }
    macro_rules! sl {
        ($t:expr, $what:expr) => {{
            let (s, l) = $t.storage_and_layout();
            (s, l, $what)
        }};
    }
    // Read guards for every tensor, then their slices.
    let g_x = sl!(x, "step input");
    let g_cs = sl!(cs, "conv_state");
    let g_h = sl!(h0, "lrnn_state");
    let g_inw = sl!(wts.in_w, "in_proj.weight");
    let g_cw = sl!(wts.conv_w, "conv1d.weight");
    let g_xp = sl!(wts.x_proj, "x_proj.weight");
    let g_al = sl!(wts.a_log, "A_log");
    let g_d = sl!(wts.skip, "D");
    let g_dw = sl!(wts.dt_w, "dt_proj.weight");
    let g_db = sl!(wts.dt_b, "dt_proj.bias");
    let g_ab = sl!(wts.dta_b, "dtA_proj.bias");
    let g_ow = sl!(wts.out_w, "out_proj.weight");
    let g_inb = wts.in_b.map(|t| sl!(t, "in_proj.bias"));
    let g_cb = wts.conv_b.map(|t| sl!(t, "conv1d.bias"));
    let g_ob = wts.out_b.map(|t| sl!(t, "out_proj.bias"));
    let g_its = its.as_ref().map(|t| sl!(t, "integration_timesteps"));
    let get = slice_of::<T>;
    let opt = opt_slice_of::<T>;
    let its_s = opt(&g_its)?.unwrap_or(&[]);
    if !its_s.is_empty() && its_s.len() != b {
        candle_core::bail!(
            "Mamba step: integration_timesteps must hold {b} values, found {}",
            its_s.len()
        );
    }
    // in_proj.
    let xz = matvec(get(&g_x)?, get(&g_inw)?, opt(&g_inb)?, b, hm, 2 * d);
    // conv window, conv + silu, x_proj.
    let mut uz = vec![T::ZERO; b * 2 * d];
    let mut xdbl = vec![T::ZERO; b * k];
    let mut state = vec![T::ZERO; b * d * taps];
    run_kernel(Prep {
        d,
        k,
        taps,
        b,
        xz: &xz,
        cs: get(&g_cs)?,
        w: get(&g_cw)?,
        bias: opt(&g_cb)?,
        xp: get(&g_xp)?,
        uz: SharedMut::new(&mut uz),
        xdbl: SharedMut::new(&mut xdbl),
        state: SharedMut::new(&mut state),
    });
    // The scan over one position.
    let dims = Dims { b, l: 1, d, n, r };
    let consts = Consts::from_params(
        &dims,
        Params {
            a_log: Strided::whole(get(&g_al)?, n),
            skip: Strided::whole(get(&g_d)?, 1),
            dt_w: Strided::whole(get(&g_dw)?, r),
            dt_b: Strided::whole(get(&g_db)?, 1),
            dta_b: Strided::whole(get(&g_ab)?, 1),
        },
    );
    let inputs = ScanInputs {
        dims,
        uz: &uz,
        xdbl: &xdbl,
        its: its_s,
    };
    let out = recurrence::forward_with(rule, inputs, &consts, Some(get(&g_h)?), false, true);
    // out_proj.
    let y = matvec(&out.y, get(&g_ow)?, opt(&g_ob)?, b, d, hm);
    let dev = x.device();
    Ok(StepOut {
        out: Tensor::from_vec(y, (b, hm), dev)?,
        conv_state: Tensor::from_vec(state, (b, d, taps), dev)?,
        h: Tensor::from_vec(out.h_last.unwrap_or_default(), (b, groups, n, LANES), dev)?,
    })
}

type Guard<'a> = (
    candle_core::StorageRef<'a>,
    &'a candle_core::Layout,
    &'static str,
);

fn slice_of<'a, T: Float>(g: &'a Guard<'_>) -> candle_core::Result<&'a [T]> {
    cpu_slice::<T>(&g.0, g.1, g.2)
}

fn opt_slice_of<'a, T: Float>(g: &'a Option<Guard<'_>>) -> candle_core::Result<Option<&'a [T]>> {
    g.as_ref().map(|g| slice_of::<T>(g)).transpose()
}

/// Output rows per matrix-vector task.
const ROWS: usize = 64;
/// Batch rows sharing one pass over a weight row.
const BATCH: usize = 8;

/// `y (B, O) = x (B, I) @ w^T (+ bias)` for `w (O, I)`, `B` small: every
/// weight row is read once for all batch rows (no packing).
fn matvec<T: Dispatch>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    b: usize,
    i: usize,
    o: usize,
) -> Vec<T> {
    let mut y = vec![T::ZERO; b * o];
    if b * o > 0 {
        run_kernel(MatVec {
            x,
            w,
            bias,
            b,
            i,
            o,
            y: SharedMut::new(&mut y),
        });
    }
    y
}

struct MatVec<'a, T> {
    x: &'a [T],
    w: &'a [T],
    bias: Option<&'a [T]>,
    b: usize,
    i: usize,
    o: usize,
    y: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for MatVec<'_, T> {
    fn schedule(&self) -> Schedule {
        Schedule {
            tasks: self.o.div_ceil(ROWS),
            parallel: self.b * self.i * self.o >= 1 << 23,
        }
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let (b, i, o) = (self.b, self.i, self.o);
        let full = i / LANES * LANES;
        for j in task * ROWS..((task + 1) * ROWS).min(o) {
            let wr = &self.w[j * i..(j + 1) * i];
            let bias = self.bias.map_or(T::ZERO, |bv| bv[j]);
            for b0 in (0..b).step_by(BATCH) {
                let nb = BATCH.min(b - b0);
                // Rows past the batch repeat the first one; their sums are dropped.
                let rows: [&[T]; BATCH] = std::array::from_fn(|q| {
                    let bq = if q < nb { b0 + q } else { b0 };
                    &self.x[bq * i..(bq + 1) * i]
                });
                let mut acc = [S::zero(); BATCH];
                for c in (0..full).step_by(LANES) {
                    let wv = S::load(&wr[c..]);
                    for q in 0..BATCH {
                        acc[q] = S::fma(wv, S::load(&rows[q][c..]), acc[q]);
                    }
                }
                if full < i {
                    let t = i - full;
                    let wv = S::load_part(&wr[full..], t);
                    for q in 0..BATCH {
                        acc[q] = S::fma(wv, S::load_part(&rows[q][full..], t), acc[q]);
                    }
                }
                for (q, a) in acc.iter().enumerate().take(nb) {
                    // SAFETY: output column j belongs to this task.
                    let dst = unsafe { self.y.slice((b0 + q) * o + j, 1) };
                    dst[0] = S::hsum(*a) + bias;
                }
            }
        }
    }
}

/// One batch row per task: conv window, conv + silu, `x_proj`.
struct Prep<'a, T> {
    d: usize,
    k: usize,
    taps: usize,
    b: usize,
    xz: &'a [T],
    cs: &'a [T],
    w: &'a [T],
    bias: Option<&'a [T]>,
    xp: &'a [T],
    uz: SharedMut<T>,
    xdbl: SharedMut<T>,
    state: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for Prep<'_, T> {
    fn schedule(&self) -> Schedule {
        Schedule {
            tasks: self.b,
            parallel: self.b * self.d * self.k >= 1 << 20,
        }
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, bi: usize) {
        let (d, k, taps) = (self.d, self.k, self.taps);
        let x = &self.xz[bi * 2 * d..(bi + 1) * 2 * d];
        // SAFETY: batch row bi of each output belongs to this task.
        let (u, xd, st) = unsafe {
            (
                self.uz.slice(bi * 2 * d, 2 * d),
                self.xdbl.slice(bi * k, k),
                self.state.slice(bi * d * taps, d * taps),
            )
        };
        for ch in 0..d {
            let old = &self.cs[(bi * d + ch) * taps..(bi * d + ch + 1) * taps];
            let new = &mut st[ch * taps..(ch + 1) * taps];
            let wk = &self.w[ch * taps..(ch + 1) * taps];
            // Same order as the forward conv: bias, then taps 0..W, fused.
            let bias = self.bias.map_or(T::ZERO, |b| b[ch]);
            u[ch] = conv_step(old, x[ch], wk, bias, new);
        }
        // silu, vectorized as in the forward conv.
        for d0 in (0..d).step_by(LANES) {
            let w = LANES.min(d - d0);
            let pre = S::load_part(&u[d0..], w);
            S::store_part(S::mul(pre, S::sigmoid(pre)), &mut u[d0..], w);
        }
        u[d..].copy_from_slice(&x[d..]);
        let uu = &u[..d];
        let full = d / LANES * LANES;
        for (row, out) in xd.iter_mut().enumerate() {
            let wr = &self.xp[row * d..(row + 1) * d];
            let mut acc = [T::ZERO; LANES];
            for (wc, uc) in wr[..full]
                .chunks_exact(LANES)
                .zip(uu[..full].chunks_exact(LANES))
            {
                for j in 0..LANES {
                    acc[j] = wc[j].fma(uc[j], acc[j]);
                }
            }
            let mut s = T::ZERO;
            for v in acc {
                s += v;
            }
            for (wv, uv) in wr[full..].iter().zip(&uu[full..]) {
                s = wv.fma(*uv, s);
            }
            *out = s;
        }
    }
}
