//! The S7 layer: parameters, parallel forward, prefill and step.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::gated::step_cached;
use lrnnx_framework::{
    check_sequence, Discretization, Error, Family, ForwardOpts, Init, Ltv, Mixer, MixerConfig,
    MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::{accumulation_dtype, use_fused_cpu, widen};
use lrnnx_kernels::scan_real_tv::real_tv_scan;

use crate::ops::{b_input, c_output, gate_residual, gelu};
use crate::S7Config;

/// S7 as lrnnx defines it (`lrnnx.models.ltv.s7.S7`, its pure-PyTorch path):
///
/// ```text
/// u = in_proj(x)                          [A | B | C | D | bias] = x_proj(u)   (N | H*N | H*N | H | N)
/// A_bar = 1 - 1/((A + base_params)^2 + 1/2)
/// s_t = A_bar_t * s_{t-1} + B_t^T u_t + bias_t        B_t, C_t: (H, N), "(h n)" layout
/// y_t = C_t s_t + D_t * u_t
/// out = sigmoid(gate_proj(gelu(y))) * y + x           (the residual is inside the layer)
/// ```
///
/// Parameters use lrnnx's names: `base_params (N)`, `in_proj.weight (H, H)`,
/// `x_proj.weight (2N + 2HN + H, H)`, `gate_proj.weight (H, H)`, none with a bias.
/// `lengths` and `integration_timesteps` are accepted and ignored, as in
/// lrnnx. The decoding state is lrnnx's cache, `lrnn_state (B, N)`. lrnnx has
/// no prefill for S7; ours is the parallel forward from the state.
#[derive(Debug)]
pub struct S7 {
    pub(crate) cfg: S7Config,
    pub(crate) d_model: usize,
    pub(crate) base_params: Tensor,
    pub(crate) in_proj: Tensor,
    pub(crate) x_proj: Tensor,
    pub(crate) gate_proj: Tensor,
}

impl S7 {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: S7Config, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let (h, n) = (d_model, cfg.d_state);
        let torch_default = Init::TorchDefault { fan_in: h };
        let in_proj = pb
            .pp("in_proj")
            .get((h, h), "weight", torch_default.clone())?;
        // make_DPLR_HiPPO's Lambda_real is -1/2 for every N; lrnnx keeps only the real part.
        let base_params = pb.get(n, "base_params", Init::Const(-0.5))?;
        let x_proj = pb.pp("x_proj").get(
            (2 * n + 2 * h * n + h, h),
            "weight",
            Init::Normal {
                mean: 0.0,
                std: 0.02,
            },
        )?;
        let gate_proj = pb.pp("gate_proj").get((h, h), "weight", torch_default)?;
        Ok(Self {
            cfg,
            d_model,
            base_params,
            in_proj,
            x_proj,
            gate_proj,
        })
    }

    /// State size `N`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// The dtype the parameters are stored in.
    pub(crate) fn param_dtype(&self) -> DType {
        self.x_proj.dtype()
    }

    /// The layer over `x (B, L, H)`, `L > 0`, from the state `h0 (B, N)`;
    /// returns the output `(B, L, H)` in `x`'s dtype and every state
    /// `(B, L, N)` in its accumulation dtype.
    ///
    /// The projections run in `x`'s dtype (the weights cast to it at use);
    /// the transition, `Bu`, the scan, `yc` and `y` in the accumulation
    /// dtype (f32, f64 stays f64); the gate in `x`'s dtype again. On CPU
    /// f32/f64 every op is fused; elsewhere each runs its portable version.
    fn run(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (b, l, h) = x.dims3()?;
        let (n, t) = (self.cfg.d_state, b * l);
        let (dt, acc) = (x.dtype(), accumulation_dtype(x.dtype()));
        let x2 = x.reshape((t, h))?;
        let u = x2.matmul(&self.in_proj.to_dtype(dt)?.t()?)?;
        // x_proj rows: A [0, N) | B [N, N+HN) | C [N+HN, N+2HN) | D (H) | bias (N).
        let x_proj = self.x_proj.to_dtype(dt)?;
        let rows = |start: usize, len: usize| x_proj.narrow(0, start, len);
        let (b0, c0, d0) = (n, n + h * n, n + 2 * h * n);
        let a_bias = Tensor::cat(&[&rows(0, n)?, &rows(d0 + h, n)?], 0)?;
        let a_bias = widen(&u.matmul(&a_bias.t()?)?)?; // (T, 2N)
        let d_t = u.matmul(&rows(d0, h)?.t()?)?; // (T, H)
        let base = self.base_params.to_dtype(acc)?;
        let a = a_bias.narrow(1, 0, n)?.broadcast_add(&base)?;
        let a_bar = a.sqr()?.affine(1.0, 0.5)?.recip()?.affine(-1.0, 1.0)?;
        let bu = (b_input(&u, &rows(b0, h * n)?, n)? + a_bias.narrow(1, n, n)?)?;
        let s = real_tv_scan(&bu.reshape((b, l, n))?, &a_bar.reshape((b, l, n))?, h0)?;
        let yc = c_output(&s.reshape((t, n))?, &u, &rows(c0, h * n)?)?;
        let y = (yc + (widen(&d_t)? * widen(&u)?)?)?.to_dtype(dt)?;
        let z = gelu(&y)?.matmul(&self.gate_proj.to_dtype(dt)?.t()?)?;
        let out = gate_residual(&z, &y, &x2)?.reshape((b, l, h))?;
        Ok((out, s))
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "S7 input")
    }

    /// The cached state of a batch of `b`, checked to be `(b, N)`.
    pub(crate) fn state_of<'a>(&self, state: &'a MixerState, b: usize) -> Result<&'a Tensor> {
        let s = state.get("lrnn_state")?;
        let n = self.cfg.d_state;
        if s.dims() != [b, n] {
            return Err(Error::shape(
                "S7 state",
                format!("lrnn_state ({b}, {n})"),
                s.dims(),
            ));
        }
        Ok(s)
    }

    /// The step through the forward's ops: `x (B, H)`, `s (B, N)` to `(y, s)`.
    pub(crate) fn step_tensors(&self, x: &Tensor, s0: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        let (y, s) = self.run(&x.unsqueeze(1)?, Some(s0))?;
        Ok((y.squeeze(1)?, s.reshape((b, self.cfg.d_state))?))
    }
}

impl Mixer for S7 {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.zeros_like()?);
        }
        Ok(self.run(x, None)?.0)
    }

    /// The parallel forward from the state, leaving the last state in it.
    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.zeros_like()?);
        }
        let h0 = self.state_of(state, b)?.clone();
        let (y, s) = self.run(x, Some(&h0))?;
        state.set(
            "lrnn_state",
            s.narrow(1, l - 1, 1)?.reshape((b, self.cfg.d_state))?,
        );
        state.seqlen_offset += l;
        Ok(y)
    }

    /// One position. On CPU f32/f64 with parameters of the input's dtype this
    /// runs on raw slices (`crate::step`), with no graph and no GEMM
    /// repacking; otherwise through the forward's ops (portable off CPU
    /// f32/f64).
    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        step_cached(x, self.d_model, "S7 step input", state, |x2, st| {
            let h0 = self.state_of(st, x2.dim(0)?)?;
            let (y, s) = if use_fused_cpu(x2) && x2.dtype() == self.param_dtype() {
                self.step_cpu(x2, &h0.to_dtype(x2.dtype())?)?
            } else {
                self.step_tensors(x2, h0)?
            };
            Ok((y, [("lrnn_state", s)]))
        })
    }

    /// lrnnx's cache: `lrnn_state (B, N)`, zeros, in the accumulation dtype
    /// of `dtype` (f32, f64 stays f64).
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let s = Tensor::zeros((batch, self.cfg.d_state), accumulation_dtype(dtype), device)?;
        Ok(MixerState::new().with("lrnn_state", s))
    }

    fn family(&self) -> Family {
        Family::Ltv
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        Some(self)
    }
}

impl Ltv for S7 {
    /// lrnnx's `discretization="no_discretization"`: `A_bar` is computed directly.
    fn discretization(&self) -> Discretization {
        Discretization::None
    }
}
