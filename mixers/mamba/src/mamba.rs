//! The Mamba layer: parameters, forward through the fused ops, prefill, step.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::{
    linear_maybe_bias, linear_no_bias, project_linear, residual_output, Linear,
};
use lrnnx_framework::params::random;
use lrnnx_framework::Role;
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Discretization, Error, Family, ForwardOpts,
    Init, Ltv, Mixer, MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};

use crate::cpu::conv::conv_silu;
use crate::cpu::recurrence::{Rule, LANES};
use crate::cpu::selective_scan::{scan_with_state, selective_scan};
use crate::cpu::step::{self, StepWeights};
use crate::MambaConfig;
use lrnnx_kernels::portable::use_fused_cpu;

/// lrnnx's Mamba (S6) mixer.
///
/// Parameters use lrnnx's `state_dict` names: `A_log (D, N)`, `D (D)`,
/// `in_proj.weight (2D, H)` (+ `in_proj.bias` with `bias`),
/// `conv1d.weight (D, 1, W)` (+ `conv1d.bias` with `conv_bias`),
/// `x_proj.weight (R + 2N, D)`, `dt_proj.weight (D, R)`, `dt_proj.bias (D)`,
/// `dtA_proj.weight (D, R)`, `dtA_proj.bias (D)`, `out_proj.weight (H, D)`
/// (+ `out_proj.bias` with `bias`).
///
/// - The forward is: `in_proj` -> `[x | z]`; causal depthwise conv + silu on
///   `x` (one fused op); then one fused selective-scan op computing
///   `x_proj` -> `[dt_low | B | C]`, `delta = softplus(dt_proj(dt_low))`, the
///   discretization, the recurrence, `C` read-out, `D` skip and `silu(z)`
///   gate; `out_proj`. Both ops have CPU backward passes.
/// - Event mode (`integration_timesteps (B, L)`): the `A` side uses
///   `dtA = its * softplus(dtA_proj.bias)`, the input side keeps `delta`.
///   `dtA_proj.weight` is never used, as in lrnnx; it exists so checkpoints load.
/// - `lengths` is accepted and ignored, as in lrnnx ("not used by Mamba
///   currently"): every position is computed.
/// - `step` uses the very same discretization as the forward for every rule
///   (for `bilinear` lrnnx's own step uses `exp(dt A)` instead, 3.5e-6 away
///   from its forward on the reference case; here step equals forward).
/// - The state holds lrnnx's cache entries: `conv_state (B, D, W)` (pre-conv
///   `x`, newest last) and `lrnn_state`, kept in the scan kernel's lane
///   layout `(B, ceil(D / 16), N, 16)` (channel `d = 16 g + j` at `[b, g, :, j]`)
///   so that a step needs no transposes; [`Mamba::ssm_state`] gives lrnnx's `(B, D, N)`.
#[derive(Debug)]
pub struct Mamba {
    pub(crate) cfg: MambaConfig,
    d_model: usize,
    pub(crate) d_inner: usize,
    pub(crate) rank: usize,
    pub(crate) rule: Rule,
    pub(crate) a_log: Tensor,
    pub(crate) d: Tensor,
    pub(crate) in_proj: Linear,
    pub(crate) conv_w: Tensor,
    pub(crate) conv_b: Option<Tensor>,
    pub(crate) x_proj: Tensor,
    pub(crate) dt_w: Tensor,
    pub(crate) dt_b: Tensor,
    pub(crate) dta_b: Tensor,
    pub(crate) out_proj: Linear,
}

fn rule_of(d: Discretization) -> Result<Rule> {
    match d {
        Discretization::Mamba => Ok(Rule::Mamba),
        Discretization::Zoh => Ok(Rule::Zoh),
        Discretization::Bilinear => Ok(Rule::Bilinear),
        Discretization::Dirac => Ok(Rule::Dirac),
        other => Err(Error::Config(format!(
            "Mamba supports the mamba, zoh, bilinear and dirac discretizations, found {other:?}"
        ))),
    }
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Result<Tensor> {
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

impl Mamba {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: MambaConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate(d_model).map_err(Error::Config)?;
        let rule = rule_of(cfg.discretization)?;
        let (h, n, w) = (d_model, cfg.d_state, cfg.d_conv);
        let di = cfg.d_inner(d_model);
        let rank = cfg.rank(d_model);
        // A_log[d, n] = ln(n + 1); D = 1.
        let a_log = pb.get_with((di, n), "A_log", |_| {
            let row: Vec<f64> = (1..=n).map(|k| (k as f64).ln()).collect();
            tensor(row.repeat(di), &[di, n])
        })?;
        let d = pb.get(di, "D", Init::Ones)?;
        let in_proj = linear_maybe_bias(h, 2 * di, cfg.bias, &pb.pp("in_proj"))?;
        let cpb = pb.pp("conv1d");
        let conv_w = cpb.get((di, 1, w), "weight", Init::TorchDefault { fan_in: w })?;
        let conv_b = if cfg.conv_bias {
            Some(cpb.get(di, "bias", Init::TorchDefault { fan_in: w })?)
        } else {
            None
        };
        let x_proj = linear_no_bias(di, rank + 2 * n, &pb.pp("x_proj"))?
            .weight()
            .clone();
        let dpb = pb.pp("dt_proj");
        let std = cfg.dt_scale / (rank as f64).sqrt();
        let constant = cfg.dt_init == "constant";
        let dt_w = dpb.get_with((di, rank), "weight", |rng| {
            let v = if constant {
                vec![std; di * rank]
            } else {
                random::uniform(rng, di * rank, -std, std)
            };
            tensor(v, &[di, rank])
        })?;
        let (lo, hi, fl) = (cfg.dt_min.ln(), cfg.dt_max.ln(), cfg.dt_init_floor);
        let dt_b = dpb.get_with(di, "bias", |rng| {
            let v = random::uniform(rng, di, 0.0, 1.0)
                .into_iter()
                .map(|u| {
                    let dt = (u * (hi - lo) + lo).exp().max(fl);
                    // Inverse softplus: softplus(dt + ln(-expm1(-dt))) = dt.
                    dt + (-(-dt).exp_m1()).ln()
                })
                .collect();
            tensor(v, &[di])
        })?;
        let apb = pb.pp("dtA_proj");
        // Unused by the computation (as in lrnnx); kept so checkpoints round-trip.
        apb.get((di, rank), "weight", Init::TorchDefault { fan_in: rank })?;
        let dta_b = apb.get(di, "bias", Init::TorchDefault { fan_in: rank })?;
        // lrnnx marks dt_proj.bias `_no_reinit`, and not dtA_proj.bias.
        dpb.mark("bias", Role::NoReinit);
        apb.mark("bias", Role::LinearBias);
        let out_proj = residual_output(di, h, cfg.bias, &pb.pp("out_proj"))?;
        Ok(Self {
            cfg,
            d_model,
            d_inner: di,
            rank,
            rule,
            a_log,
            d,
            in_proj,
            conv_w,
            conv_b,
            x_proj,
            dt_w,
            dt_b,
            dta_b,
            out_proj,
        })
    }

    /// Channels `D = int(expand * d_model)`.
    pub fn d_inner(&self) -> usize {
        self.d_inner
    }

    /// The step rank `R`.
    pub fn dt_rank(&self) -> usize {
        self.rank
    }

    /// State size `N`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// The recurrent state of `state` in lrnnx's layout `(B, D, N)`.
    pub fn ssm_state(&self, state: &MixerState) -> Result<Tensor> {
        let h = state.get("lrnn_state")?;
        let (b, g, n, lanes) = h.dims4()?;
        Ok(h.permute((0, 1, 3, 2))?
            .reshape((b, g * lanes, n))?
            .narrow(1, 0, self.d_inner)?
            .contiguous()?)
    }

    pub(crate) fn dtype(&self) -> DType {
        self.a_log.dtype()
    }

    /// `[A_log | D | dt_proj.weight | dt_proj.bias | dtA_proj.bias]`, `(D, N + R + 3)`.
    fn pack(&self) -> Result<Tensor> {
        Ok(Tensor::cat(
            &[
                &self.a_log,
                &self.d.unsqueeze(1)?,
                &self.dt_w,
                &self.dt_b.unsqueeze(1)?,
                &self.dta_b.unsqueeze(1)?,
            ],
            1,
        )?)
    }

    fn conv_weight(&self) -> Result<Tensor> {
        Ok(self.conv_w.reshape((self.d_inner, self.cfg.d_conv))?)
    }

    fn conv_bias(&self) -> Result<Tensor> {
        match &self.conv_b {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(self.d_inner, self.dtype(), self.d.device())?),
        }
    }

    /// Checks `integration_timesteps` against `(B, L)`.
    fn timesteps(&self, its: Option<&Tensor>, b: usize, l: usize) -> Result<Option<Tensor>> {
        match its {
            None => Ok(None),
            Some(t) if t.dims() == [b, l] => Ok(Some(t.to_dtype(self.dtype())?)),
            Some(t) => Err(Error::shape(
                "Mamba integration_timesteps",
                format!("({b}, {l})"),
                t.dims(),
            )),
        }
    }

    /// `in_proj` and the conv: `(xz, uz)`.
    fn front(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let xz = project_linear(x, &self.in_proj)?;
        let uz = conv_silu(&xz, &self.conv_weight()?, &self.conv_bias()?)?;
        Ok((xz, uz))
    }

    fn out(&self, y: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(project_linear(y, &self.out_proj)?.to_dtype(dtype)?)
    }

    /// Prefill from a fresh state: the parallel forward, then the last
    /// state and the last `W` pre-conv inputs.
    fn prefill_fresh(
        &self,
        x: &Tensor,
        state: &mut MixerState,
        its: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let dtype = x.dtype();
        let x = x.to_dtype(self.dtype())?;
        let (xz, uz) = self.front(&x)?;
        let (y, h) = scan_with_state(
            &uz,
            &self.x_proj,
            &self.pack()?,
            its,
            self.rule,
            self.cfg.d_state,
        )?;
        let w = self.cfg.d_conv;
        let xs = xz.narrow(2, 0, self.d_inner)?;
        let window = if l >= w {
            xs.narrow(1, l - w, w)?
        } else {
            let pad = Tensor::zeros((b, w - l, self.d_inner), xs.dtype(), xs.device())?;
            Tensor::cat(&[&pad, &xs], 1)?
        };
        state.set("conv_state", window.transpose(1, 2)?.contiguous()?);
        state.set("lrnn_state", h);
        state.seqlen_offset += l;
        self.out(&y, dtype)
    }
}

impl Mixer for Mamba {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = check_sequence(x, self.d_model, "Mamba input")?;
        let its = self.timesteps(opts.integration_timesteps.as_ref(), b, l)?;
        let dtype = x.dtype();
        if !use_fused_cpu(x) {
            if l == 0 {
                return Ok(x.zeros_like()?);
            }
            let run = self.run_candle_ops(x, its.as_ref(), None, false)?;
            return Ok(run.out.to_dtype(dtype)?);
        }
        let x = x.to_dtype(self.dtype())?;
        let (_, uz) = self.front(&x)?;
        let y = selective_scan(
            &uz,
            &self.x_proj,
            &self.pack()?,
            its.as_ref(),
            self.rule,
            self.cfg.d_state,
        )?;
        self.out(&y, dtype)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = check_sequence(x, self.d_model, "Mamba input")?;
        let its = self.timesteps(opts.integration_timesteps.as_ref(), b, l)?;
        if !use_fused_cpu(x) && l > 0 {
            let from = match state.seqlen_offset {
                0 => None,
                _ => Some((state.get("conv_state")?, state.get("lrnn_state")?)),
            };
            let run = self.run_candle_ops(x, its.as_ref(), from, true)?;
            state.set("conv_state", run.conv_state);
            state.set("lrnn_state", run.h);
            state.seqlen_offset += l;
            return Ok(run.out.to_dtype(x.dtype())?);
        }
        if state.seqlen_offset == 0 {
            return self.prefill_fresh(x, state, its.as_ref());
        }
        if l == 0 {
            return Ok(Tensor::zeros((b, 0, self.d_model), x.dtype(), x.device())?);
        }
        // A state that already holds positions: continue step by step.
        let mut ys = Vec::with_capacity(l);
        for t in 0..l {
            let so = StepOpts {
                integration_timesteps: match &its {
                    Some(ts) => Some(ts.narrow(1, t, 1)?),
                    None => None,
                },
            };
            ys.push(self.step(&x.narrow(1, t, 1)?, state, &so)?);
        }
        Ok(Tensor::cat(&ys, 1)?)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "Mamba step input")?;
        let b = x2.dim(0)?;
        let its = match &opts.integration_timesteps {
            None => None,
            Some(t) if t.dims() == [b] || t.dims() == [b, 1] => {
                Some(t.to_dtype(self.dtype())?.reshape((b, 1))?)
            }
            Some(t) => {
                return Err(Error::shape(
                    "Mamba step integration_timesteps",
                    format!("({b},) or ({b}, 1)"),
                    t.dims(),
                ))
            }
        };
        let dtype = x.dtype();
        if !use_fused_cpu(x) {
            let from = (state.get("conv_state")?, state.get("lrnn_state")?);
            let its = its.map(|t| t.reshape((b, 1))).transpose()?;
            let run = self.run_candle_ops(&x2.unsqueeze(1)?, its.as_ref(), Some(from), true)?;
            state.set("conv_state", run.conv_state);
            state.set("lrnn_state", run.h);
            state.seqlen_offset += 1;
            return match_step_rank(run.out.squeeze(1)?.to_dtype(dtype)?, x);
        }
        let wts = StepWeights {
            in_w: self.in_proj.weight(),
            in_b: self.in_proj.bias(),
            conv_w: &self.conv_w,
            conv_b: self.conv_b.as_ref(),
            x_proj: &self.x_proj,
            a_log: &self.a_log,
            skip: &self.d,
            dt_w: &self.dt_w,
            dt_b: &self.dt_b,
            dta_b: &self.dta_b,
            out_w: self.out_proj.weight(),
            out_b: self.out_proj.bias(),
        };
        let its = its.map(|t| t.flatten_all()).transpose()?;
        let o = step::step(
            self.rule,
            &wts,
            &x2,
            state.get("conv_state")?,
            state.get("lrnn_state")?,
            its.as_ref(),
        )?;
        state.set("conv_state", o.conv_state);
        state.set("lrnn_state", o.h);
        state.seqlen_offset += 1;
        let out = o.out.to_dtype(dtype)?;
        match_step_rank(out, x)
    }

    /// `conv_state (B, D, W)` and `lrnn_state (B, ceil(D / 16), N, 16)`, zeros.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        _dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let dt = self.dtype();
        Ok(MixerState::new()
            .with(
                "conv_state",
                Tensor::zeros((batch, self.d_inner, self.cfg.d_conv), dt, device)?,
            )
            .with(
                "lrnn_state",
                Tensor::zeros(
                    (batch, self.d_inner.div_ceil(LANES), self.cfg.d_state, LANES),
                    dt,
                    device,
                )?,
            ))
    }

    fn family(&self) -> Family {
        Family::Ltv
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        Some(self)
    }
}

impl Ltv for Mamba {
    fn discretization(&self) -> Discretization {
        self.cfg.discretization
    }

    fn supports_events(&self) -> bool {
        true
    }
}
