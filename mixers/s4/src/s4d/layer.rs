//! The S4D layer: parameters, discretization, forward by scan or by
//! convolution, step, kernel.

use crate::ssm::{f64_values, SsmBlock};
use candle_core::{DType, Device, Tensor, D};
use lrnnx_framework::{
    Complex, Discretization, Family, ForwardOpts, Lti, Mixer, MixerConfig, MixerState,
    ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::{accumulation_dtype, use_fused_cpu, widen};
use lrnnx_kernels::scan::complex_diag_scan;
use rayon::prelude::*;

use super::config::S4dDisc;
use super::powers;
use super::vandermonde::vandermonde;
use super::S4dConfig;
pub use crate::ssm::ForwardMode;

/// Below this length `forward_mode = "auto"` runs the recurrence, from it on
/// the convolution. Measured on two (shared) CPU cores at B in {1, 8, 32},
/// H in {64, 256}, N in {4, 16, 64}: the two are within noise up to 4
/// positions, and the convolution is faster from there on (8x at B = 8,
/// H = 256, N = 64, L = 128).
pub const AUTO_CONV_FROM: usize = 4;

/// Largest number of elements of one intermediate tensor of the scan path;
/// longer problems are split into groups of features.
const CHUNK_ELEMS: usize = 1 << 24;

/// The discrete diagonal system, `(H, N/2)` complex (`C` is `(channels, H, N/2)`).
#[derive(Debug, Clone)]
struct Discrete {
    da: Complex,
    db: Complex,
    c: Complex,
}

impl Discrete {
    /// The system in `dtype` (the accumulation dtype of the compute dtype).
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let cast = |z: &Complex| -> Result<Complex> {
            Ok(Complex::new(z.re.to_dtype(dtype)?, z.im.to_dtype(dtype)?))
        };
        Ok(Self {
            da: cast(&self.da)?,
            db: cast(&self.db)?,
            c: cast(&self.c)?,
        })
    }
}

impl ScanSys {
    /// The system in `dtype`.
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            lam: self.lam.to_dtype(dtype)?,
            db: self.db.to_dtype(dtype)?,
            c: self.c.to_dtype(dtype)?,
        })
    }
}

/// The same system in the scan's split layout (see [`S4d::scan_sys`]).
#[derive(Debug, Clone)]
struct ScanSys {
    lam: Tensor,
    db: Tensor,
    c: Tensor,
}

/// lrnnx's `S4D`: a diagonal state-space kernel (`S4DKernel`) inside the
/// S4 block. Parameters `inv_dt`, `A_real`, `A_imag`, `B`, `C` (also under
/// `layer.kernel.*`), `D`, `output_linear.0.*` (and the gate / bottleneck
/// linears when configured).
///
/// ```text
/// dtA = dt A;  zoh: dA = exp(dtA), dB = B (exp(dtA) - 1)/A
///              bilinear: dA = (1 + dtA/2)/(1 - dtA/2), dB = B dt/(1 - dtA/2)
/// s_t = dA s_{t-1} + dB x_t;   y_ssm = 2 Re(C s_t)
/// ```
#[derive(Debug)]
pub struct S4d {
    block: SsmBlock<S4dDisc>,
    zoh: bool,
}

impl S4d {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: S4dConfig, pb: &ParamBuilder) -> Result<Self> {
        Ok(Self {
            zoh: cfg.disc.is_zoh(),
            block: SsmBlock::new(super::NAME, d_model, cfg, pb)?,
        })
    }

    /// Overrides the forward mode (e.g. to compare scan and convolution).
    pub fn set_forward_mode(&mut self, mode: ForwardMode) {
        self.block.mode = mode;
    }

    /// Complex modes per feature, `N/2`.
    pub fn n2(&self) -> usize {
        self.block.n2
    }

    fn discrete(&self) -> Result<Discrete> {
        let ssm = &self.block.ssm;
        let dt = ssm.dt()?;
        let (lr, li) = ssm.lambda()?;
        let lam = Complex::new(lr, li);
        let dta = lam.mul_real(&dt)?;
        let (br, bi) = ssm.b()?;
        let b = Complex::new(br, bi);
        let (da, db) = if self.zoh {
            let da = dta.exp()?;
            let db = b.mul(&da.add_scalar(-1.0)?.div(&lam)?)?;
            (da, db)
        } else {
            let half = dta.scale(0.5)?;
            let den = half.scale(-1.0)?.add_scalar(1.0)?;
            let da = half.add_scalar(1.0)?.div(&den)?;
            let db = b.mul_real(&dt)?.div(&den)?;
            (da, db)
        };
        let (cr, ci) = ssm.c()?;
        Ok(Discrete {
            da,
            db,
            c: Complex::new(cr, ci),
        })
    }

    /// The scan's view of the system: `lam`, `dB` as `(2, H, N/2)` (real
    /// parts, then imaginary parts) and `(2 Re C, -2 Im C)` as `(channels, 2, H, N/2)`,
    /// so that `y = sum over (2, N/2) of C * s`.
    fn scan_sys(&self, d: &Discrete) -> Result<ScanSys> {
        Ok(ScanSys {
            lam: Tensor::stack(&[&d.da.re, &d.da.im], 0)?,
            db: Tensor::stack(&[&d.db.re, &d.db.im], 0)?,
            c: Tensor::stack(&[(&d.c.re * 2.0)?, (&d.c.im * -2.0)?], 1)?,
        })
    }

    /// Features per group so that one intermediate stays under [`CHUNK_ELEMS`].
    fn group(&self, rows: usize) -> usize {
        let per_feature = rows * 2 * self.block.n2 * self.block.channels().max(1);
        (CHUNK_ELEMS / per_feature.max(1)).clamp(1, self.block.d_model.max(1))
    }

    /// States `(B, L, 2, hc, N/2)` (real parts, then imaginary parts) of
    /// features `h0..h0+hc`, from `x (B, L, H)` and the start `s0 (B, 2, H, N/2)`.
    fn scan_states(
        &self,
        x: &Tensor,
        sys: &ScanSys,
        h0: usize,
        hc: usize,
        s0: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let n2 = self.block.n2;
        let xc = x.narrow(2, h0, hc)?.reshape((b, l, 1, hc, 1))?;
        let u = xc
            .broadcast_mul(&sys.db.narrow(1, h0, hc)?)?
            .reshape((b, l, 2 * hc * n2))?;
        let lam = sys.lam.narrow(1, h0, hc)?.flatten_all()?;
        let init = match s0 {
            Some(s) => Some(s.narrow(2, h0, hc)?.reshape((b, 2 * hc * n2))?),
            None => None,
        };
        let s = complex_diag_scan(&u, &lam, init.as_ref())?;
        Ok(s.reshape((b, l, 2, hc, n2))?)
    }

    /// `2 Re(C s)`: states `(B, L, 2, hc, N/2)` to outputs `(B, L, channels, hc)`.
    fn readout(&self, s: &Tensor, sys: &ScanSys, h0: usize, hc: usize) -> Result<Tensor> {
        let c = sys.c.narrow(2, h0, hc)?;
        Ok(s.unsqueeze(2)?.broadcast_mul(&c)?.sum(D::Minus1)?.sum(3)?)
    }

    /// The recurrence over `x (B, L, H)` from `s0`: `(y (B, L, channels, H)`
    /// in `x`'s dtype, last state `(B, 2, H, N/2)` in its accumulation dtype).
    /// The system and the state are cast to that dtype, `x` widened to it.
    fn run_scan(&self, x: &Tensor, sys: &ScanSys, s0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let dtype = x.dtype();
        let acc = accumulation_dtype(dtype);
        let (x, sys) = (&widen(x)?, &sys.to_dtype(acc)?);
        let s0 = s0.map(|s| s.to_dtype(acc)).transpose()?;
        let s0 = s0.as_ref();
        let (b, l, h) = x.dims3()?;
        let g = self.group(b * l);
        let (mut ys, mut last) = (Vec::new(), Vec::new());
        let mut h0 = 0;
        while h0 < h {
            let hc = g.min(h - h0);
            let s = self.scan_states(x, sys, h0, hc, s0)?;
            ys.push(self.readout(&s, sys, h0, hc)?);
            last.push(s.narrow(1, l - 1, 1)?.squeeze(1)?);
            h0 += hc;
        }
        if ys.len() == 1 {
            return Ok((ys.remove(0).to_dtype(dtype)?, last.remove(0).contiguous()?));
        }
        Ok((
            Tensor::cat(&ys, 3)?.to_dtype(dtype)?,
            Tensor::cat(&last, 2)?,
        ))
    }

    /// The kernel `(channels*H, len)` (row `c*H + h`): `2 Re(C dB dA^l)`, in
    /// `d`'s dtype: by the fused CPU op when `fused`, else from candle ops.
    fn kernel_of(&self, d: &Discrete, len: usize, fused: bool) -> Result<Tensor> {
        let w = d.c.mul(&d.db)?;
        let rows = self.block.channels() * self.block.d_model;
        if !fused {
            return Ok(powers::kernel(&w, &d.da, len)?.reshape((rows, len))?);
        }
        let w = Tensor::stack(&[&w.re, &w.im], 3)?;
        let z = Tensor::stack(&[&d.da.re, &d.da.im], 2)?;
        Ok(vandermonde(&w, &z, len)?.reshape((rows, len))?)
    }

    /// The SSM part over a whole sequence, by `mode`; also the last state when `want_state`.
    fn ssm_forward(
        &self,
        x: &Tensor,
        s0: Option<&Tensor>,
        want_state: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let l = x.dim(1)?;
        let fused = use_fused_cpu(x);
        let d = self.discrete()?.to_dtype(accumulation_dtype(x.dtype()))?;
        let mode = self
            .block
            .pick(l, x.device().is_cpu() && l >= AUTO_CONV_FROM)?;
        if mode == ForwardMode::Scan || s0.is_some() {
            let (y, s) = self.run_scan(x, &self.scan_sys(&d)?, s0)?;
            return Ok((y, Some(s)));
        }
        let y = self
            .block
            .conv(x, &self.kernel_of(&d, self.block.taps(l), fused)?)?;
        let s = match (want_state, fused) {
            (false, _) => None,
            (true, true) => Some(final_state(x, &d)?),
            // Off the fused path the state comes from the (portable) scan.
            (true, false) => Some(self.run_scan(x, &self.scan_sys(&d)?, None)?.1),
        };
        Ok((y, s))
    }
}

/// One step on the CPU in plain loops (decoding is latency-bound: a handful
/// of small candle ops cost more than the arithmetic): `x (B, H)`, the
/// scan-layout system, `s0 (B, 2, H, N/2)`; returns `(y (B, channels, H), s)`.
fn step_cpu(x: &Tensor, sys: &ScanSys, s0: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, h) = x.dims2()?;
    let c = sys.c.dim(0)?;
    let n2 = sys.lam.dim(2)?;
    let (xs, lam, db, cc, mut s) = (
        f64_values(x)?,
        f64_values(&sys.lam)?,
        f64_values(&sys.db)?,
        f64_values(&sys.c)?,
        f64_values(s0)?,
    );
    let hn = h * n2;
    let mut y = vec![0.0; b * c * h];
    for bi in 0..b {
        let (re, im) = (bi * 2 * hn, (bi * 2 + 1) * hn);
        for hi in 0..h {
            let u = xs[bi * h + hi];
            for n in 0..n2 {
                let k = hi * n2 + n;
                let (sr, si) = (s[re + k], s[im + k]);
                let nr = lam[k] * sr - lam[hn + k] * si + db[k] * u;
                let ni = lam[k] * si + lam[hn + k] * sr + db[hn + k] * u;
                s[re + k] = nr;
                s[im + k] = ni;
                for ci in 0..c {
                    y[(bi * c + ci) * h + hi] +=
                        cc[ci * 2 * hn + k] * nr + cc[(ci * 2 + 1) * hn + k] * ni;
                }
            }
        }
    }
    let dt = x.dtype();
    Ok((
        Tensor::from_vec(y, (b, c, h), x.device())?.to_dtype(dt)?,
        Tensor::from_vec(s, s0.shape(), s0.device())?.to_dtype(s0.dtype())?,
    ))
}

/// The state after `x (B, L, H)` from zero, `(B, 2, H, N/2)`: `s = dA s + dB x_t`
/// run in registers (f64), in parallel over batch and features. For prefill
/// after a convolution forward; no autograd.
fn final_state(x: &Tensor, d: &Discrete) -> Result<Tensor> {
    let (b, l, h) = x.dims3()?;
    let (xs, ar, ai, br, bi) = (
        f64_values(x)?,
        f64_values(&d.da.re)?,
        f64_values(&d.da.im)?,
        f64_values(&d.db.re)?,
        f64_values(&d.db.im)?,
    );
    let n2 = ar.len() / h.max(1);
    let per: Vec<Vec<(f64, f64)>> = (0..b * h)
        .into_par_iter()
        .map(|task| {
            let (bi_, hi) = (task / h, task % h);
            let mut s = vec![(0.0, 0.0); n2];
            for t in 0..l {
                let u = xs[(bi_ * l + t) * h + hi];
                for (n, z) in s.iter_mut().enumerate() {
                    let k = hi * n2 + n;
                    *z = (
                        ar[k] * z.0 - ai[k] * z.1 + br[k] * u,
                        ar[k] * z.1 + ai[k] * z.0 + bi[k] * u,
                    );
                }
            }
            s
        })
        .collect();
    let mut out = vec![0.0; b * 2 * h * n2];
    for (task, s) in per.into_iter().enumerate() {
        let (bi_, hi) = (task / h, task % h);
        for (n, z) in s.into_iter().enumerate() {
            out[((bi_ * 2) * h + hi) * n2 + n] = z.0;
            out[((bi_ * 2 + 1) * h + hi) * n2 + n] = z.1;
        }
    }
    Ok(Tensor::from_vec(out, (b, 2, h, n2), x.device())?.to_dtype(x.dtype())?)
}

impl Mixer for S4d {
    fn name(&self) -> &str {
        super::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.block.cfg
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        self.block
            .forward(x, opts, |xs| Ok(self.ssm_forward(xs, None, false)?.0))
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        self.block.prefill(x, state, opts, |xs, state| {
            let s0 = state.get("lrnn_state")?.clone();
            let start = (state.seqlen_offset > 0).then_some(&s0);
            let (y, s) = self.ssm_forward(xs, start, true)?;
            if let Some(s) = s {
                state.set("lrnn_state", s);
            }
            Ok(y)
        })
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        self.block.step(x, state, |xs, state| {
            let get = |k: &str| -> Result<Tensor> { Ok(state.get(k)?.clone()) };
            let sys = ScanSys {
                lam: get("lambda")?,
                db: get("dB")?,
                c: get("C")?,
            };
            let s0 = get("lrnn_state")?;
            let (y, s) = if use_fused_cpu(xs) {
                step_cpu(xs, &sys, &s0)?
            } else {
                let (y, s) = self.run_scan(&xs.unsqueeze(1)?, &sys, Some(&s0))?;
                (y.squeeze(1)?, s)
            };
            state.set("lrnn_state", s);
            Ok(y)
        })
    }

    /// State `lrnn_state (B, 2, H, N/2)` (real parts, imaginary parts; in the
    /// accumulation dtype of `dtype`: f32 for bf16/f16) and the
    /// discrete system (`lambda` = dA and `dB` as `(2, H, N/2)`, `C` as
    /// `(channels, 2, H, N/2)` holding `(2 Re C, -2 Im C)`), computed once here as
    /// lrnnx's `allocate_inference_cache` does.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let sys = self.scan_sys(&self.discrete()?)?;
        let s = Tensor::zeros(
            (batch, 2, self.block.d_model, self.block.n2),
            accumulation_dtype(dtype),
            device,
        )?;
        let on = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().to_device(device)?) };
        Ok(MixerState::new()
            .with("lrnn_state", s)
            .with("lambda", on(&sys.lam)?)
            .with("dB", on(&sys.db)?)
            .with("C", on(&sys.c)?))
    }

    fn family(&self) -> Family {
        Family::Lti
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        Some(self)
    }
}

impl Lti for S4d {
    /// `K[c*H + h, l] = 2 Re(sum_n C[c,h,n] dB[h,n] dA[h,n]^l)`: `(H, len)` for
    /// one channel, `(channels*H, len)` otherwise (rows in `(c h)` order
    /// whatever `swap_channels`); `D` is not included.
    fn kernel(&self, len: usize) -> Result<Tensor> {
        let d = self.discrete()?;
        if len == 0 {
            let d = self.block.wrapper.d();
            return self.block.empty_kernel(d.dtype(), d.device());
        }
        let fused = use_fused_cpu(&d.da.re);
        self.kernel_of(&d, len, fused)
    }

    fn discretization(&self) -> Discretization {
        if self.zoh {
            Discretization::Zoh
        } else {
            Discretization::Bilinear
        }
    }
}
