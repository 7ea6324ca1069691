//! The minGRU layer: parameters, forward by linear scan, step.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::diagonal::keep_last_state;
use lrnnx_framework::layers::gated::step_cached;
use lrnnx_framework::layers::project;
use lrnnx_framework::{
    check_sequence, Discretization, Error, Family, ForwardOpts, Init, Ltv, Mixer, MixerConfig,
    MixerState, ParamBuilder, Result, StepOpts,
};

use crate::{linear_scan, MinGruConfig};

/// minGRU. Parameters: `to_hidden_and_gate.weight (2 D, H)` (candidate rows
/// first, then gate rows) and, with `proj_out`, `to_out.weight (H, D)`, where
/// `D` is the inner width. State: `h (B, D)`.
///
/// `lengths` and `integration_timesteps` are accepted and ignored (the layer
/// is causal and has no continuous-time form).
#[derive(Debug)]
pub struct MinGru {
    cfg: MinGruConfig,
    d_model: usize,
    d_inner: usize,
    w_in: Tensor,
    w_out: Option<Tensor>,
}

/// `g(v) = v + 1/2` for `v >= 0`, `sigmoid(v)` below: `relu(v) + sigmoid(min(v, 0))`.
fn g(v: &Tensor) -> Result<Tensor> {
    Ok((v.relu()? + candle_nn::ops::sigmoid(&v.minimum(0.0)?)?)?)
}

impl MinGru {
    /// Builds the layer; weights drawn as `nn.Linear` unless `pb` loads them.
    pub fn new(d_model: usize, mut cfg: MinGruConfig, pb: &ParamBuilder) -> Result<Self> {
        let d_inner = cfg.validate(d_model).map_err(Error::Config)?;
        let proj_out = cfg.proj_out();
        cfg.proj_out = Some(proj_out);
        let fan_in = Init::TorchDefault { fan_in: d_model };
        let w_in = pb
            .pp("to_hidden_and_gate")
            .get((2 * d_inner, d_model), "weight", fan_in)?;
        let w_out = if proj_out {
            Some(pb.pp("to_out").get(
                (d_model, d_inner),
                "weight",
                Init::TorchDefault { fan_in: d_inner },
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            d_model,
            d_inner,
            w_in,
            w_out,
        })
    }

    /// Inner (state) width `D`.
    pub fn d_inner(&self) -> usize {
        self.d_inner
    }

    /// Decay `a = 1 - z` and input `u = z * g(h~)` for `x (.., H)`.
    fn gates(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let hg = project(&x.to_dtype(self.w_in.dtype())?, &self.w_in, None)?;
        let last = hg.rank() - 1;
        let hidden = hg.narrow(last, 0, self.d_inner)?;
        let gate = hg.narrow(last, self.d_inner, self.d_inner)?;
        let z = candle_nn::ops::sigmoid(&gate)?;
        let a = candle_nn::ops::sigmoid(&gate.neg()?)?;
        let u = (z * g(&hidden)?)?;
        Ok((a, u))
    }

    fn read_out(&self, h: &Tensor) -> Result<Tensor> {
        match &self.w_out {
            Some(w) => project(h, w, None),
            None => Ok(h.clone()),
        }
    }

    /// Forward from `h0 (B, D)`; returns outputs and every state.
    fn run(&self, x: &Tensor, h0: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, u) = self.gates(x)?;
        let h = linear_scan(&u.contiguous()?, &a.contiguous()?, h0)?;
        Ok((self.read_out(&h)?, h))
    }

    fn zeros(&self, batch: usize, device: &Device) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (batch, self.d_inner),
            self.w_in.dtype(),
            device,
        )?)
    }
}

impl Mixer for MinGru {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, _) = check_sequence(x, self.d_model, "minGRU input")?;
        let (y, _) = self.run(x, &self.zeros(b, x.device())?)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = check_sequence(x, self.d_model, "minGRU input")?;
        let h0 = state.get("h")?.clone();
        let (y, h) = self.run(x, &h0)?;
        keep_last_state(state, &h, l)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        step_cached(x, self.d_model, "minGRU step input", state, |x2, st| {
            let (a, u) = self.gates(x2)?;
            let h = ((a * st.get("h")?)? + u)?;
            Ok((self.read_out(&h)?, [("h", h)]))
        })
    }

    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        _dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        Ok(MixerState::new().with("h", self.zeros(batch, device)?))
    }

    fn family(&self) -> Family {
        Family::Ltv
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        Some(self)
    }
}

impl Ltv for MinGru {
    /// The gates are already discrete.
    fn discretization(&self) -> Discretization {
        Discretization::None
    }
}
