//! The LRU layer: parameters, forward by parallel scan, step, kernel.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::diagonal::{finish_step, keep_last_state, SplitSystem};
use lrnnx_framework::layers::project;
use lrnnx_framework::params::random;
use lrnnx_framework::{
    check_sequence, check_step_input, Complex, Discretization, Error, Family, ForwardOpts, Lti,
    Mixer, MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::accumulation_dtype;
use lrnnx_kernels::scan::complex_diag_scan;

use crate::LruConfig;

/// The Linear Recurrent Unit. Parameters use lrnnx's names: `nu_log`,
/// `theta_log`, `gamma_log` `(N)`, `B_re`/`B_im` `(N, H)`, `C_re`/`C_im` `(H, N)`, `D` `(H)`.
///
/// `lengths` is accepted and, as in lrnnx, has no effect: every position is
/// computed (a causal model's outputs before a sequence's end never depend on
/// what follows, so padding only changes outputs past the length).
#[derive(Debug)]
pub struct Lru {
    cfg: LruConfig,
    d_model: usize,
    nu_log: Tensor,
    theta_log: Tensor,
    gamma_log: Tensor,
    b_re: Tensor,
    b_im: Tensor,
    c_re: Tensor,
    c_im: Tensor,
    d: Tensor,
}

impl Lru {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: LruConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let (n, h) = (cfg.d_state, d_model);
        let cpu = Device::Cpu;
        let (r_min, r_max, max_phase) = (cfg.r_min, cfg.r_max, cfg.max_phase);
        // u ~ U(0, 1) kept away from 0 so that the logs stay finite.
        let nu_log = pb.get_with(n, "nu_log", |rng| {
            let v: Vec<f32> = random::uniform(rng, n, 1e-12, 1.0)
                .into_iter()
                .map(|u| {
                    (-0.5 * (u * (r_max * r_max - r_min * r_min) + r_min * r_min).ln()).ln() as f32
                })
                .collect();
            Ok(Tensor::from_vec(v, n, &cpu)?)
        })?;
        let theta_log = pb.get_with(n, "theta_log", |rng| {
            let v: Vec<f32> = random::uniform(rng, n, 1e-12, 1.0)
                .into_iter()
                .map(|u| (max_phase * u).ln() as f32)
                .collect();
            Ok(Tensor::from_vec(v, n, &cpu)?)
        })?;
        let normal = |rows: usize, cols: usize, scale: f64| {
            move |rng: &mut _| -> Result<Tensor> {
                let v: Vec<f32> = random::normal(rng, rows * cols)
                    .into_iter()
                    .map(|z| (z * scale) as f32)
                    .collect();
                Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
            }
        };
        let b_re = pb.get_with((n, h), "B_re", normal(n, h, 1.0 / (2.0 * h as f64).sqrt()))?;
        let b_im = pb.get_with((n, h), "B_im", normal(n, h, 1.0 / (2.0 * h as f64).sqrt()))?;
        let c_re = pb.get_with((h, n), "C_re", normal(h, n, 1.0 / (n as f64).sqrt()))?;
        let c_im = pb.get_with((h, n), "C_im", normal(h, n, 1.0 / (n as f64).sqrt()))?;
        let d = pb.get_with(h, "D", |rng| {
            let v: Vec<f32> = random::normal(rng, h)
                .into_iter()
                .map(|z| z as f32)
                .collect();
            Ok(Tensor::from_vec(v, h, &Device::Cpu)?)
        })?;
        let nu_now = nu_log.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let gamma_log = pb.get_with(n, "gamma_log", |_| {
            // log sqrt(1 - |lambda|^2), |lambda| = exp(-exp(nu_log)).
            let v: Vec<f32> = nu_now
                .iter()
                .map(|&nu| (0.5 * (1.0 - (-2.0 * nu.exp()).exp()).max(1e-30).ln()) as f32)
                .collect();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
        })?;
        Ok(Self {
            cfg,
            d_model,
            nu_log,
            theta_log,
            gamma_log,
            b_re,
            b_im,
            c_re,
            c_im,
            d,
        })
    }

    /// State size `N`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// The discrete system: eigenvalues, `gamma * B` and `[C_re, -C_im]`.
    fn operators(&self) -> Result<SplitSystem> {
        let modulus = self.nu_log.exp()?.neg()?.exp()?;
        let phase = self.theta_log.exp()?;
        let lambda = Tensor::cat(&[(&modulus * phase.cos()?)?, (&modulus * phase.sin()?)?], 0)?;
        let gamma = self.gamma_log.exp()?.unsqueeze(1)?;
        let w_in = Tensor::cat(
            &[
                self.b_re.broadcast_mul(&gamma)?,
                self.b_im.broadcast_mul(&gamma)?,
            ],
            0,
        )?;
        let w_out = Tensor::cat(&[&self.c_re, &self.c_im.neg()?], 1)?;
        Ok(SplitSystem {
            lambda,
            w_in,
            w_out,
        })
    }

    /// Forward from an initial state `h0 (B, 2N)`; returns outputs (in `x`'s
    /// dtype) and every state (in `x`'s accumulation dtype: f32 for bf16/f16).
    ///
    /// The projections run in `x`'s dtype (the parameters are cast at use);
    /// the scan widens and keeps `lambda` in its own precision.
    fn run(&self, x: &Tensor, h0: Option<&Tensor>, ops: &SplitSystem) -> Result<(Tensor, Tensor)> {
        let u = project(x, &ops.w_in, None)?;
        // An explicit zero state rather than `None`: then `lambda` is in the
        // graph at L = 1 on every path (its gradient is zero there, not absent),
        // and the fused scan builds the same zeros itself.
        let zero;
        let h0 = match h0 {
            Some(h0) => h0,
            None => {
                zero = zero_state(&u)?;
                &zero
            }
        };
        let h = complex_diag_scan(&u, &ops.lambda, Some(h0))?;
        let read = project(&h.to_dtype(x.dtype())?, &ops.w_out, None)?;
        let y = (read + x.broadcast_mul(&self.d.to_dtype(x.dtype())?)?)?;
        Ok((y, h))
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "LRU input")
    }
}

/// The zero initial state `(B, 2N)` for scan inputs `u (B, L, 2N)`, in their accumulation dtype.
fn zero_state(u: &Tensor) -> Result<Tensor> {
    let (b, _, n2) = u.dims3()?;
    Ok(Tensor::zeros(
        (b, n2),
        accumulation_dtype(u.dtype()),
        u.device(),
    )?)
}

impl Mixer for Lru {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        self.check(x)?;
        let (y, _) = self.run(x, None, &self.operators()?)?;
        Ok(y)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = self.check(x)?;
        let ops = self.operators()?;
        let h0 = state.get("h")?.clone();
        let (y, h) = self.run(x, Some(&h0), &ops)?;
        keep_last_state(state, &h, l)?;
        Ok(y)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "LRU step input")?;
        let ops = SplitSystem::from_state(state)?;
        let h0 = state.get("h")?.clone();
        if let Some((y, h)) = crate::step::fused_step(&x2, &h0, &ops, &self.d)? {
            return finish_step(state, &y.unsqueeze(1)?, &h.unsqueeze(1)?, x);
        }
        let (y, h) = self.run(&x2.unsqueeze(1)?, Some(&h0), &ops)?;
        finish_step(state, &y, &h, x)
    }

    /// State `h (B, 2N)` (split complex, in the accumulation dtype of
    /// `dtype`: f32 for bf16/f16) plus the discrete operators, computed once
    /// here as lrnnx's `allocate_inference_cache` does.
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

impl Lti for Lru {
    /// `K[o, i, t] = Re(sum_n C[o,n] lambda_n^t gamma_n B[n,i])`, `(H, H, len)`; `D` is not included.
    fn kernel(&self, len: usize) -> Result<Tensor> {
        let dev = self.d.device();
        let dtype = self.d.dtype();
        let t = Tensor::arange(0u32, len as u32, dev)?
            .to_dtype(dtype)?
            .unsqueeze(1)?; // (len, 1)
        let log_mod = self.nu_log.exp()?.neg()?.unsqueeze(0)?; // (1, N)
        let phase = self.theta_log.exp()?.unsqueeze(0)?;
        let modulus = t.broadcast_mul(&log_mod)?.exp()?; // (len, N)
        let angle = t.broadcast_mul(&phase)?;
        let (pr, pi) = ((&modulus * angle.cos()?)?, (&modulus * angle.sin()?)?);
        let gamma = self.gamma_log.exp()?.unsqueeze(1)?;
        let (bre, bim) = (
            self.b_re.broadcast_mul(&gamma)?,
            self.b_im.broadcast_mul(&gamma)?,
        );
        // (C * P_t): (len, H, N), real and imaginary parts.
        let c = Complex::new(self.c_re.unsqueeze(0)?, self.c_im.unsqueeze(0)?);
        let cp = c.mul(&Complex::new(pr.unsqueeze(1)?, pi.unsqueeze(1)?))?;
        let k = (cp.re.broadcast_matmul(&bre)? - cp.im.broadcast_matmul(&bim)?)?; // (len, H, H)
        Ok(k.permute((1, 2, 0))?.contiguous()?)
    }

    fn discretization(&self) -> Discretization {
        Discretization::None
    }
}
