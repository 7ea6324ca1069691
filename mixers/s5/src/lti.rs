//! lrnnx's LTI S5 (`lrnnx/models/lti/s5.py`): parameters, forward by scan or
//! by convolution, step, kernel.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::diagonal::{keep_last_state, SplitSystem};
use lrnnx_framework::layers::project;
use lrnnx_framework::params::random;
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Complex, Discretization, Error, Family,
    ForwardOpts, Lti, Mixer, MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::fft_conv::causal_conv;
use lrnnx_kernels::portable::{accumulation_dtype, widen};
use lrnnx_kernels::scan::complex_diag_scan;

use crate::config::{ForwardMode, LtiDiscretization, S5Config, S5LtiConfig};
use crate::util::{complex_of, matmul_last, or_zero_state, powers, softplus, tensor};

/// The LTI S5 layer: a MIMO diagonal state space model
/// `h_t = A_bar h_{t-1} + B_bar x_t`, `y_t = Re(C h_t) + x_t @ D`.
///
/// Parameters (lrnnx's names): `A (N, 2)` with `A = -softplus(A[:,0]) + i A[:,1]`,
/// `B (N, H)` real, `log_dt (N)`, `C (H, N, 2)` complex, `D (H, H)` applied as
/// `x @ D` (rows index inputs). `lengths` and `integration_timesteps` are
/// ignored, as in lrnnx.
#[derive(Debug)]
pub struct S5Lti {
    cfg: S5LtiConfig,
    outer: S5Config,
    d_model: usize,
    a: Tensor,
    b: Tensor,
    log_dt: Tensor,
    c: Tensor,
    d: Tensor,
}

impl S5Lti {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: S5LtiConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let (n, h) = (cfg.d_state, d_model);
        let a = pb.get_with((n, 2), "A", |_| {
            // Real part: inverse softplus of 1/2; imaginary part: pi n.
            let re = (0.5f64.exp() - 1.0).ln();
            let v = (0..n)
                .flat_map(|k| [re, std::f64::consts::PI * k as f64])
                .collect();
            tensor(v, &[n, 2])
        })?;
        let b = pb.get_with((n, h), "B", |_| {
            tensor(vec![1.0 / (h as f64).sqrt(); n * h], &[n, h])
        })?;
        let log_dt = pb.get_with(n, "log_dt", |_| {
            let (lo, hi) = (1e-3f64.ln(), 1e-1f64.ln());
            let step = if n > 1 {
                (hi - lo) / (n - 1) as f64
            } else {
                0.0
            };
            tensor((0..n).map(|k| lo + step * k as f64).collect(), &[n])
        })?;
        let c = pb.get_with((h, n, 2), "C", |rng| {
            let s = (2.0 / n as f64).sqrt();
            tensor(
                random::normal(rng, h * n * 2)
                    .into_iter()
                    .map(|z| z * s)
                    .collect(),
                &[h, n, 2],
            )
        })?;
        let d = pb.get_with((h, h), "D", |rng| {
            let s = (2.0 / h as f64).sqrt();
            tensor(
                random::normal(rng, h * h)
                    .into_iter()
                    .map(|z| z * s)
                    .collect(),
                &[h, h],
            )
        })?;
        Ok(Self {
            outer: S5Config::Lti(cfg.clone()),
            cfg,
            d_model,
            a,
            b,
            log_dt,
            c,
            d,
        })
    }

    /// State size `N`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// The configuration.
    pub fn lti_config(&self) -> &S5LtiConfig {
        &self.cfg
    }

    /// The framework's name for this layer's rule (`bilinear` is lrnnx's flipped one).
    pub fn rule(&self) -> Discretization {
        match self.cfg.discretization {
            LtiDiscretization::Zoh => Discretization::Zoh,
            LtiDiscretization::Bilinear => Discretization::BilinearFlipped,
            LtiDiscretization::Dirac => Discretization::Dirac,
            LtiDiscretization::NoDiscretization => Discretization::None,
        }
    }

    /// Continuous `A = -softplus(A[:,0]) + i A[:,1]`, `(N)`.
    fn continuous_a(&self) -> Result<Complex> {
        let re = softplus(&self.a.narrow(1, 0, 1)?.squeeze(1)?)?.neg()?;
        let im = self.a.narrow(1, 1, 1)?.squeeze(1)?;
        Ok(Complex::new(re, im))
    }

    /// The discrete system: `A_bar`, `B_bar` and `[C_re, -C_im]`.
    pub(crate) fn operators(&self) -> Result<SplitSystem> {
        let a = self.continuous_a()?;
        let dt = self.log_dt.exp()?;
        let disc = self.rule().apply(&a, &dt, None)?;
        let gamma = disc.gamma;
        let w_in = Tensor::cat(
            &[
                self.b.broadcast_mul(&gamma.re.unsqueeze(1)?)?,
                self.b.broadcast_mul(&gamma.im.unsqueeze(1)?)?,
            ],
            0,
        )?;
        let c = complex_of(&self.c)?;
        let w_out = Tensor::cat(&[&c.re, &c.im.neg()?], 1)?;
        Ok(SplitSystem {
            lambda: disc.a_bar.to_split()?,
            w_in,
            w_out,
        })
    }

    /// Whether this call runs as a convolution.
    fn use_conv(&self) -> bool {
        match self.cfg.forward_mode {
            ForwardMode::Conv => true,
            // Measured on the CPU (crate docs): the scan is faster at every size.
            ForwardMode::Scan | ForwardMode::Auto => false,
        }
    }

    /// Every state `(B, L, 2N)` from the inputs `u = B_bar x` and `h0`.
    fn states(&self, u: &Tensor, h0: Option<&Tensor>, ops: &SplitSystem) -> Result<Tensor> {
        if self.use_conv() {
            conv_states(u, &ops.lambda, h0)
        } else {
            let h0 = or_zero_state(h0, u)?;
            Ok(complex_diag_scan(u, &ops.lambda, Some(&h0))?)
        }
    }

    /// Forward from `h0 (B, 2N)`; returns outputs (in `x`'s dtype) and every
    /// state (in `x`'s accumulation dtype: f32 for bf16/f16).
    ///
    /// The projections run in `x`'s dtype (the parameters are cast at use);
    /// the scan or convolution widens and keeps `A_bar` in its own precision.
    fn run(&self, x: &Tensor, h0: Option<&Tensor>, ops: &SplitSystem) -> Result<(Tensor, Tensor)> {
        let u = project(x, &ops.w_in, None)?;
        let h = self.states(&u, h0, ops)?;
        let read = project(&h.to_dtype(x.dtype())?, &ops.w_out, None)?;
        let y = (read + matmul_last(x, &self.d.to_dtype(x.dtype())?)?)?;
        Ok((y, h))
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "S5 input")
    }
}

/// `h_t = sum_{j<=t} A_bar^{t-j} u_j + A_bar^{t+1} h0` by causal convolution
/// of each complex state channel with `A_bar^l` (FFT for long inputs on the
/// CPU, Toeplitz matmuls elsewhere), in the accumulation dtype of `u`.
pub(crate) fn conv_states(u: &Tensor, lambda: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    let u = &widen(u)?;
    let (b, l, n2) = u.dims3()?;
    let n = n2 / 2;
    if l == 0 {
        return Ok(u.clone());
    }
    let p = powers(lambda, l + 1)?.to_dtype(u.dtype())?; // (L+1, 2N)
    let k = p.narrow(0, 0, l)?.t()?; // (2N, L)
    let (kr, ki) = (k.narrow(0, 0, n)?, k.narrow(0, n, n)?);
    // Channels [ur, ui, ur, ui] against kernels [kr, kr, ki, ki]:
    // out = [kr*ur, kr*ui, ki*ur, ki*ui].
    let x4 = Tensor::cat(&[u, u], 2)?;
    let k4 = Tensor::cat(&[&kr, &kr, &ki, &ki], 0)?;
    let c = causal_conv(&x4, &k4)?;
    let part = |i: usize| c.narrow(2, i * n, n);
    let vr = (part(0)? - part(3)?)?;
    let vi = (part(1)? + part(2)?)?;
    let mut h = Tensor::cat(&[vr, vi], 2)?;
    if let Some(h0) = h0 {
        // A_bar^{t+1} h0 for t = 0..L.
        let q = p.narrow(0, 1, l)?.unsqueeze(0)?; // (1, L, 2N)
        let (qr, qi) = (q.narrow(2, 0, n)?, q.narrow(2, n, n)?);
        let h0 = h0.to_dtype(u.dtype())?.unsqueeze(1)?; // (B, 1, 2N)
        let (hr, hi) = (h0.narrow(2, 0, n)?, h0.narrow(2, n, n)?);
        let qh = Complex::new(qr, qi).mul(&Complex::new(hr, hi))?;
        h = (h + Tensor::cat(&[qh.re, qh.im], 2)?.broadcast_as((b, l, n2))?)?;
    }
    Ok(h)
}

impl Mixer for S5Lti {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.outer
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        self.check(x)?;
        let (y, _) = self.run(x, None, &self.operators()?)?;
        Ok(y)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = self.check(x)?;
        let ops = SplitSystem::from_state(state)?;
        let h0 = state.get("h")?.clone();
        let (y, h) = self.run(x, Some(&h0), &ops)?;
        keep_last_state(state, &h, l)?;
        Ok(y)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "S5 step input")?;
        let (lambda, w_in, w_out) = (
            state.get("lambda")?,
            state.get("w_in")?,
            state.get("w_out")?,
        );
        let h0 = state.get("h")?;
        let u = project(&x2, w_in, None)?.unsqueeze(1)?;
        let h = complex_diag_scan(&u, lambda, Some(h0))?.squeeze(1)?;
        let read = project(&h.to_dtype(x2.dtype())?, w_out, None)?;
        let y = (read + x2.matmul(&self.d.to_dtype(x2.dtype())?)?)?;
        state.set("h", h);
        state.seqlen_offset += 1;
        match_step_rank(y, x)
    }

    /// State `h (B, 2N)` (split complex, in the accumulation dtype of
    /// `dtype`: f32 for bf16/f16) plus `A_bar`, `B_bar` and `C`, computed
    /// once here as lrnnx's `allocate_inference_cache` does.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let h = Tensor::zeros(
            (batch, 2 * self.cfg.d_state),
            accumulation_dtype(dtype),
            device,
        )?;
        self.operators()?
            .stored_in(MixerState::new().with("h", h), device)
    }

    fn family(&self) -> Family {
        Family::Lti
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        Some(self)
    }
}

impl Lti for S5Lti {
    /// `K[o, i, t] = Re(sum_n C[o,n] A_bar_n^t B_bar[n,i])`, `(H, H, len)`;
    /// the skip term `x @ D` is not included (it acts at lag 0 as `D^T`).
    fn kernel(&self, len: usize) -> Result<Tensor> {
        let h = self.d_model;
        let ops = self.operators()?;
        let n = self.cfg.d_state;
        if len == 0 {
            return Ok(Tensor::zeros((h, h, 0), self.d.dtype(), self.d.device())?);
        }
        let p = powers(&ops.lambda, len)?; // (len, 2N)
        let (pr, pi) = (
            p.narrow(1, 0, n)?.unsqueeze(1)?,
            p.narrow(1, n, n)?.unsqueeze(1)?,
        ); // (len, 1, N)
           // The powers come back in the scan's accumulation dtype (f32 for bf16 parameters).
        let c = complex_of(&self.c.to_dtype(p.dtype())?)?;
        let c = Complex::new(c.re.unsqueeze(0)?, c.im.unsqueeze(0)?); // (1, H, N)
        let cp = c.mul(&Complex::new(pr, pi))?; // (len, H, N)
        let w_in = ops.w_in.to_dtype(p.dtype())?;
        let (br, bi) = (w_in.narrow(0, 0, n)?, w_in.narrow(0, n, n)?); // (N, H)
        let k = (matmul_last(&cp.re, &br)? - matmul_last(&cp.im, &bi)?)?; // (len, H, H)
        Ok(k.permute((1, 2, 0))?.contiguous()?)
    }

    fn discretization(&self) -> Discretization {
        self.rule()
    }
}
