//! lrnnx's LTV / event-driven S5 (`lrnnx/models/ltv/s5.py`): parameters,
//! forward by (time-varying) scan, step.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::diagonal::{finish_step, keep_last_state, SplitSystem};
use lrnnx_framework::layers::project;
use lrnnx_framework::params::random;
use lrnnx_framework::{
    check_sequence, check_step_input, Complex, Discretization, Error, Family, ForwardOpts, Ltv,
    Mixer, MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::{accumulation_dtype, widen};
use lrnnx_kernels::scan::complex_diag_scan;
use lrnnx_kernels::scan_tv::complex_diag_scan_tv;

use crate::config::{LtvDiscretization, S5Config, S5LtvConfig};
use crate::hippo::make_dplr_hippo;
use crate::util::{complex_of, or_zero_state, tensor, timesteps_seq, timesteps_step};

/// The LTV S5 layer: `s_t = A_bar_t s_{t-1} + gamma (B x_t)`,
/// `y_t = Re(C s_t) + D x_t` (times 2 on `Re` with `conj_sym`).
///
/// Parameters (lrnnx's names): `A (P, 2)` used raw (`A[:,0] + i A[:,1]`, no
/// softplus), `B (P, H, 2)` and `C (H, P, 2)` complex, `D (H)` elementwise,
/// `log_dt (P)`; `dt = exp(log_dt) * step_rescale`.
///
/// Event mode: with `integration_timesteps` `tau` (forward `(B, L)` or
/// `(B, L, 1)`, step `(B,)` or `(B, 1)`), the transition uses `tau * dt`
/// while the input side keeps `dt`, as lrnnx does. Without it `A_bar` is
/// constant and the forward runs the time-invariant scan. `lengths` is
/// ignored, as in lrnnx.
#[derive(Debug)]
pub struct S5Ltv {
    cfg: S5LtvConfig,
    /// Set when built under the name `"S5"` (then saved with that type tag).
    outer: Option<S5Config>,
    d_model: usize,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    log_dt: Tensor,
}

/// The system: the continuous part event timesteps rediscretize, and the
/// discrete system in the scan's split layout.
struct Operators {
    /// Continuous `A`, `(P)`.
    a: Complex,
    /// `dt`, `(P)`.
    dt: Tensor,
    /// `A_bar` at `dt` (no event timesteps), `gamma * B`, and
    /// `k [C_re, -C_im]` (`k = 2` with `conj_sym`, else 1).
    system: SplitSystem,
}

impl S5Ltv {
    /// Builds the layer, drawing parameters as lrnnx does (up to the random
    /// generator) unless `pb` loads them. `as_s5` records that it was built
    /// under the name `"S5"` rather than `"S5LTV"`.
    pub fn new(d_model: usize, cfg: S5LtvConfig, pb: &ParamBuilder, as_s5: bool) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let (p, h) = (cfg.d_state, d_model);
        // HiPPO init, as `make_DPLR_HiPPO(P')` with P' = 2P under conj_sym (first P kept).
        let pf = if cfg.conj_sym { 2 * p } else { p };
        let needs_hippo = ["A", "B", "C"]
            .iter()
            .any(|k| !pb.store().has_loaded(&pb.key(k)));
        let (lam, v) = if needs_hippo {
            make_dplr_hippo(pf)?
        } else {
            (Vec::new(), Vec::new())
        };
        // V restricted to its first P columns: (P', P).
        let vk = |row: usize, col: usize| v[row * pf + col];
        let a = pb.get_with((p, 2), "A", |_| {
            tensor(
                lam[..p].iter().flat_map(|z| [z.re, z.im]).collect(),
                &[p, 2],
            )
        })?;
        let b = pb.get_with((p, h, 2), "B", |rng| {
            // V^H (P x P') @ (randn(P', H) / sqrt(P')).
            let s = 1.0 / (pf as f64).sqrt();
            let r: Vec<f64> = random::normal(rng, pf * h)
                .into_iter()
                .map(|z| z * s)
                .collect();
            let mut out = Vec::with_capacity(p * h * 2);
            for row in 0..p {
                for col in 0..h {
                    let mut acc = num_complex::Complex64::default();
                    for k in 0..pf {
                        let vc = vk(k, row);
                        acc.re += vc.re * r[k * h + col];
                        acc.im -= vc.im * r[k * h + col];
                    }
                    out.extend([acc.re, acc.im]);
                }
            }
            tensor(out, &[p, h, 2])
        })?;
        let c = pb.get_with((h, p, 2), "C", |rng| {
            // (randn + i randn)(H, P') / sqrt(P') @ V (P' x P).
            let s = 1.0 / (pf as f64).sqrt();
            let re: Vec<f64> = random::normal(rng, h * pf);
            let im: Vec<f64> = random::normal(rng, h * pf);
            let mut out = Vec::with_capacity(h * p * 2);
            for row in 0..h {
                for col in 0..p {
                    let (mut ar, mut ai) = (0.0, 0.0);
                    for k in 0..pf {
                        let (xr, xi) = (re[row * pf + k] * s, im[row * pf + k] * s);
                        let vc = vk(k, col);
                        ar += xr * vc.re - xi * vc.im;
                        ai += xr * vc.im + xi * vc.re;
                    }
                    out.extend([ar, ai]);
                }
            }
            tensor(out, &[h, p, 2])
        })?;
        let d = pb.get_with(h, "D", |rng| {
            tensor(
                random::normal(rng, h)
                    .into_iter()
                    .map(|z| 0.1 * z)
                    .collect(),
                &[h],
            )
        })?;
        let log_dt = pb.get_with(p, "log_dt", |rng| {
            let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
            let v = if hi > lo {
                random::uniform(rng, p, lo, hi)
            } else {
                vec![lo; p]
            };
            tensor(v, &[p])
        })?;
        Ok(Self {
            outer: as_s5.then(|| S5Config::Ltv(cfg.clone())),
            cfg,
            d_model,
            a,
            b,
            c,
            d,
            log_dt,
        })
    }

    /// State size `P`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// The configuration.
    pub fn ltv_config(&self) -> &S5LtvConfig {
        &self.cfg
    }

    /// The framework's name for this layer's rule (`bilinear` is textbook Tustin here).
    pub fn rule(&self) -> Discretization {
        match self.cfg.discretization {
            LtvDiscretization::Zoh => Discretization::Zoh,
            LtvDiscretization::Bilinear => Discretization::Bilinear,
            LtvDiscretization::Dirac => Discretization::Dirac,
        }
    }

    fn operators(&self) -> Result<Operators> {
        let a = complex_of(&self.a)?;
        let dt = (self.log_dt.exp()? * self.cfg.step_rescale)?;
        let disc = self.rule().apply(&a, &dt, None)?;
        let bt = complex_of(&self.b)?; // (P, H)
        let g = Complex::new(disc.gamma.re.unsqueeze(1)?, disc.gamma.im.unsqueeze(1)?);
        let gb = g.mul(&bt)?;
        let w_in = Tensor::cat(&[&gb.re, &gb.im], 0)?;
        let c = complex_of(&self.c)?;
        let mut w_out = Tensor::cat(&[&c.re, &c.im.neg()?], 1)?;
        if self.cfg.conj_sym {
            w_out = (w_out * 2.0)?;
        }
        Ok(Operators {
            a,
            dt,
            system: SplitSystem {
                lambda: disc.a_bar.to_split()?,
                w_in,
                w_out,
            },
        })
    }

    /// `A_bar` at `dtA = tau * dt` for timesteps `tau (B, L)`: `(B, L, 2P)`,
    /// in the accumulation dtype of the parameters (f32 for bf16 ones).
    fn lambda_events(&self, a: &Complex, dt: &Tensor, tau: &Tensor) -> Result<Tensor> {
        let (dt, a) = (widen(dt)?, Complex::new(widen(&a.re)?, widen(&a.im)?));
        let tau = tau.to_dtype(dt.dtype())?.unsqueeze(2)?; // (B, L, 1)
        let dta = tau.broadcast_mul(&dt.reshape((1, 1, dt.dim(0)?))?)?; // (B, L, P)
        let z = a.mul_real(&dta)?;
        let a_bar = match self.cfg.discretization {
            LtvDiscretization::Zoh | LtvDiscretization::Dirac => z.exp()?,
            LtvDiscretization::Bilinear => {
                let half = z.scale(0.5)?;
                half.add_scalar(1.0)?
                    .div(&half.scale(-1.0)?.add_scalar(1.0)?)?
            }
        };
        a_bar.to_split()
    }

    /// Forward from `h0 (B, 2P)` with optional timesteps `(B, L)`; returns
    /// outputs (in `x`'s dtype) and every state (in `x`'s accumulation dtype:
    /// f32 for bf16/f16). The projections run in `x`'s dtype (the parameters
    /// are cast at use); the scans widen and keep `A_bar` in its own precision.
    fn run(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        tau: Option<&Tensor>,
        ops: &Operators,
    ) -> Result<(Tensor, Tensor)> {
        let u = project(x, &ops.system.w_in, None)?;
        let h0 = or_zero_state(h0, &u)?;
        let h = match tau {
            None => complex_diag_scan(&u, &ops.system.lambda, Some(&h0))?,
            Some(tau) => {
                let lam = self.lambda_events(&ops.a, &ops.dt, tau)?;
                complex_diag_scan_tv(&u, &lam, Some(&h0))?
            }
        };
        let read = project(&h.to_dtype(x.dtype())?, &ops.system.w_out, None)?;
        let y = (read + x.broadcast_mul(&self.d.to_dtype(x.dtype())?)?)?;
        Ok((y, h))
    }

    fn check(&self, x: &Tensor, opts: &ForwardOpts) -> Result<(usize, usize, Option<Tensor>)> {
        let (b, l) = check_sequence(x, self.d_model, "S5 (LTV) input")?;
        let tau = match &opts.integration_timesteps {
            Some(t) => Some(timesteps_seq(t, b, l, "S5 (LTV) integration_timesteps")?),
            None => None,
        };
        Ok((b, l, tau))
    }

    fn state_ops(state: &MixerState) -> Result<Operators> {
        Ok(Operators {
            a: Complex::new(state.get("a_re")?.clone(), state.get("a_im")?.clone()),
            dt: state.get("dt")?.clone(),
            system: SplitSystem::from_state(state)?,
        })
    }
}

impl Mixer for S5Ltv {
    fn name(&self) -> &str {
        if self.outer.is_some() {
            crate::NAME
        } else {
            crate::NAME_LTV
        }
    }

    fn config(&self) -> &dyn MixerConfig {
        match &self.outer {
            Some(o) => o,
            None => &self.cfg,
        }
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        let (_, _, tau) = self.check(x, opts)?;
        let (y, _) = self.run(x, None, tau.as_ref(), &self.operators()?)?;
        Ok(y)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l, tau) = self.check(x, opts)?;
        let ops = Self::state_ops(state)?;
        let h0 = state.get("h")?.clone();
        let (y, h) = self.run(x, Some(&h0), tau.as_ref(), &ops)?;
        keep_last_state(state, &h, l)?;
        Ok(y)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "S5 (LTV) step input")?;
        let b = x2.dim(0)?;
        let tau = match &opts.integration_timesteps {
            Some(t) => Some(timesteps_step(t, b, "S5 (LTV) step integration_timesteps")?),
            None => None,
        };
        let ops = Self::state_ops(state)?;
        let h0 = state.get("h")?.clone();
        let (y, h) = self.run(&x2.unsqueeze(1)?, Some(&h0), tau.as_ref(), &ops)?;
        finish_step(state, &y, &h, x)
    }

    /// State `h (B, 2P)` (split complex, in the accumulation dtype of
    /// `dtype`: f32 for bf16/f16) plus the system (`A`, `dt`, `A_bar`,
    /// `gamma B`, `C`), frozen here as lrnnx's `allocate_inference_cache` does.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let ops = self.operators()?;
        let h = Tensor::zeros(
            (batch, 2 * self.cfg.d_state),
            accumulation_dtype(dtype),
            device,
        )?;
        let state = MixerState::new()
            .with("h", h)
            .with("a_re", ops.a.re.to_device(device)?)
            .with("a_im", ops.a.im.to_device(device)?)
            .with("dt", ops.dt.to_device(device)?);
        ops.system.stored_in(state, device)
    }

    fn family(&self) -> Family {
        Family::Ltv
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        Some(self)
    }
}

impl Ltv for S5Ltv {
    fn discretization(&self) -> Discretization {
        self.rule()
    }

    fn supports_events(&self) -> bool {
        true
    }
}
