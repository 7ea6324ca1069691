//! The RG-LRU block: parameters, parallel forward, prefill and step.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::gated::step_cached;
use lrnnx_framework::layers::{linear, linear_maybe_bias, residual_output};
use lrnnx_framework::params::random;
use lrnnx_framework::{
    check_sequence, Discretization, Error, Family, ForwardOpts, Init, Ltv, Mixer, MixerConfig,
    MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::{accumulation_dtype, use_fused_cpu};

use crate::ops::block::{self, block, BlockParams};
use crate::ops::{depthwise_conv, gate_scan, gelu_mul};
use crate::RgLruConfig;

/// A weight `(out, in)` and an optional bias `(out)`, as `nn.Linear`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub(crate) w: Tensor,
    pub(crate) b: Option<Tensor>,
}

impl Dense {
    fn new(l: candle_nn::Linear) -> Self {
        Self {
            w: l.weight().clone(),
            b: l.bias().cloned(),
        }
    }

    /// `x (rows, in) @ w^T + b`, one 2-D matmul in `x`'s dtype (the
    /// parameters cast to it).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let y = x.matmul(&self.w.to_dtype(dt)?.t()?)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(&b.to_dtype(dt)?)?,
            None => y,
        })
    }
}

/// The Griffin RG-LRU block as lrnnx defines it (`lrnnx.models.ltv.rglru.RGLRU`):
///
/// ```text
/// gate = gelu(gate_proj(x))                  xc = conv1d(in_proj(x))   (causal, depthwise, no activation)
/// r = sigmoid(recurrent_gate_proj(xc))       i = sigmoid(input_gate_proj(xc))
/// a_bar = sigmoid(a_log)^(c r)               h_t = a_bar h_{t-1} + sqrt(1 - a_bar^2) (i xc)
/// y = out_proj(gate * h)
/// ```
///
/// Parameters use lrnnx's names: `a_log (D, 1)`, `gate_proj.*`, `in_proj.*`,
/// `conv1d.weight (D, 1, W)`, `conv1d.bias`, `recurrent_gate_proj.*`,
/// `input_gate_proj.*`, `out_proj.*`. Note `a = sigmoid(a_log)` although the
/// init stores `log(U[0.9, 0.999))`, as lrnnx does.
///
/// `integration_timesteps` and `lengths` are accepted and ignored, as in lrnnx.
/// The decoding state is lrnnx's cache: `conv_state (B, D, W)` (the last `W`
/// inputs of the convolution, newest last) and `lrnn_state (B, D, 1)`.
/// Unlike lrnnx's prefill, which stores the convolution's *outputs* in
/// `conv_state` (a bug there), ours stores its inputs, so prefill + step equals forward.
#[derive(Debug)]
pub struct RgLru {
    pub(crate) cfg: RgLruConfig,
    pub(crate) d_model: usize,
    pub(crate) d_inner: usize,
    pub(crate) gate_proj: Dense,
    pub(crate) in_proj: Dense,
    /// `(D, 1, W)`.
    pub(crate) conv_w: Tensor,
    pub(crate) conv_b: Option<Tensor>,
    pub(crate) recurrent_gate_proj: Dense,
    pub(crate) input_gate_proj: Dense,
    /// `(D, 1)`.
    pub(crate) a_log: Tensor,
    pub(crate) out_proj: Dense,
}

/// What a parallel run over a sequence leaves behind.
struct Run {
    /// `(B, L, H)`, in the input's dtype.
    y: Tensor,
    /// `(B, L', D)`: the convolution's inputs, history included, in the input's dtype.
    conv_in: Tensor,
    /// `(B, L, D)`: every recurrent state, in the input's accumulation dtype.
    h: Tensor,
}

impl RgLru {
    /// Builds the block, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: RgLruConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate(d_model).map_err(Error::Config)?;
        let (h, d, w) = (d_model, cfg.d_inner(d_model), cfg.d_conv);
        let gate_proj = Dense::new(linear_maybe_bias(h, d, cfg.bias, &pb.pp("gate_proj"))?);
        let in_proj = Dense::new(linear_maybe_bias(h, d, cfg.bias, &pb.pp("in_proj"))?);
        let conv = pb.pp("conv1d");
        let conv_init = Init::TorchDefault { fan_in: w };
        let conv_w = conv.get((d, 1, w), "weight", conv_init.clone())?;
        let conv_b = if cfg.conv_bias {
            Some(conv.get(d, "bias", conv_init)?)
        } else {
            None
        };
        let recurrent_gate_proj = Dense::new(linear(d, d, &pb.pp("recurrent_gate_proj"))?);
        let input_gate_proj = Dense::new(linear(d, d, &pb.pp("input_gate_proj"))?);
        let [lo, hi] = cfg.a_init_range;
        let a_log = pb.get_with((d, 1), "a_log", |rng| {
            let v: Vec<f32> = random::uniform(rng, d, 0.0, 1.0)
                .into_iter()
                .map(|u| (lo + (hi - lo) * u).ln() as f32)
                .collect();
            Ok(Tensor::from_vec(v, (d, 1), &Device::Cpu)?)
        })?;
        let out_proj = Dense::new(residual_output(d, h, cfg.bias, &pb.pp("out_proj"))?);
        Ok(Self {
            cfg,
            d_model,
            d_inner: d,
            gate_proj,
            in_proj,
            conv_w,
            conv_b,
            recurrent_gate_proj,
            input_gate_proj,
            a_log,
            out_proj,
        })
    }

    /// Inner width `D`.
    pub fn d_inner(&self) -> usize {
        self.d_inner
    }

    /// The dtype the parameters are stored in.
    fn dtype(&self) -> DType {
        self.a_log.dtype()
    }

    /// `(D, W)` taps and `(D)` bias of the convolution, in `dt`.
    fn conv_params(&self, dt: DType) -> Result<(Tensor, Tensor)> {
        let w = self
            .conv_w
            .reshape((self.d_inner, self.cfg.d_conv))?
            .to_dtype(dt)?;
        let b = match &self.conv_b {
            Some(b) => b.to_dtype(dt)?,
            None => Tensor::zeros(self.d_inner, dt, self.a_log.device())?,
        };
        Ok((w, b))
    }

    /// Both gate projections as one `(2D, D)` matmul, recurrent gate first, in `dt`.
    fn gates_weight(&self, dt: DType) -> Result<Tensor> {
        Ok(
            Tensor::cat(&[&self.recurrent_gate_proj.w, &self.input_gate_proj.w], 0)?
                .to_dtype(dt)?,
        )
    }

    /// Everything [`block`] takes, in the stored dtype ([`block`] casts).
    fn block_params(&self) -> Result<BlockParams> {
        let dense = |d: &Dense| block::Dense {
            w: d.w.clone(),
            b: d.b.clone(),
        };
        let (conv_w, conv_b) = self.conv_params(self.dtype())?;
        Ok(BlockParams {
            gate: dense(&self.gate_proj),
            input: dense(&self.in_proj),
            gates_w: self.gates_weight(self.dtype())?,
            conv_w,
            conv_b,
            p: self.channel_params()?,
            c: self.cfg.c,
        })
    }

    /// `[a_log | recurrent bias | input bias]`, `(3D)`.
    fn channel_params(&self) -> Result<Tensor> {
        let zeros = || Tensor::zeros(self.d_inner, self.dtype(), self.a_log.device());
        let br = match &self.recurrent_gate_proj.b {
            Some(b) => b.clone(),
            None => zeros()?,
        };
        let bi = match &self.input_gate_proj.b {
            Some(b) => b.clone(),
            None => zeros()?,
        };
        Ok(Tensor::cat(
            &[&self.a_log.reshape(self.d_inner)?, &br, &bi],
            0,
        )?)
    }

    /// The block over `x (B, L, H)`, `L > 0`, after `history (B, W-1, D)`
    /// convolution inputs (zeros when `None`) and from the state `h0 (B, D)`.
    /// Everything runs on `(B*L, .)` matrices, in `x`'s dtype up to the gates
    /// and the recurrence (its accumulation dtype). Each op is fused on CPU
    /// f32/f64 and portable elsewhere. (`forward` takes `ops::block`
    /// instead; this path serves prefill.)
    fn run(&self, x: &Tensor, history: Option<&Tensor>, h0: Option<&Tensor>) -> Result<Run> {
        let (b, l, hdim) = x.dims3()?;
        let d = self.d_inner;
        let (dt, acc) = (x.dtype(), accumulation_dtype(x.dtype()));
        let x2 = x.reshape((b * l, hdim))?;
        let gate = self.gate_proj.apply(&x2)?;
        let xi = self.in_proj.apply(&x2)?;
        // The taps are summed in the accumulation dtype, rounded once to `dt`.
        let (cw, cb) = self.conv_params(acc)?;
        let (xc, conv_in) = match history {
            Some(hist) => {
                let hist = hist.to_dtype(dt)?;
                let conv_in = Tensor::cat(&[&hist, &xi.reshape((b, l, d))?], 1)?;
                let xc = depthwise_conv(&conv_in.to_dtype(acc)?, &cw, &cb, b)?
                    .to_dtype(dt)?
                    .narrow(1, self.cfg.d_conv - 1, l)?
                    .reshape((b * l, d))?;
                (xc, conv_in)
            }
            None => {
                let xc = depthwise_conv(&xi.to_dtype(acc)?, &cw, &cb, b)?.to_dtype(dt)?;
                (xc, xi.reshape((b, l, d))?)
            }
        };
        let z = xc.matmul(&self.gates_weight(dt)?.t()?)?;
        let p = self.channel_params()?.to_dtype(acc)?;
        let h = gate_scan(&z, &xc, &p, self.cfg.c, h0, b)?;
        let y = self
            .out_proj
            .apply(&gelu_mul(&gate, &h)?.to_dtype(dt)?)?
            .reshape((b, l, hdim))?;
        Ok(Run {
            y,
            conv_in,
            h: h.reshape((b, l, d))?,
        })
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "RGLRU input")
    }

    /// The step through tensor ops (fused where `ops` has a kernel for the
    /// tensors, portable elsewhere): `x (B, H)`, `conv_state (B, D, W)`,
    /// `h (B, D, 1)` to `(y, conv_state, h)`. The projections and the
    /// convolution run in `x`'s dtype, the gates and the update in its
    /// accumulation dtype; `y` comes back in `x`'s dtype, both states in
    /// its accumulation dtype.
    pub(crate) fn step_tensors(
        &self,
        x: &Tensor,
        conv_state: &Tensor,
        h0: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let b = x.dim(0)?;
        let (d, w) = (self.d_inner, self.cfg.d_conv);
        self.check_state(b, conv_state, h0)?;
        let (dt, acc) = (x.dtype(), accumulation_dtype(x.dtype()));
        let gate = self.gate_proj.apply(x)?;
        let xi = self.in_proj.apply(x)?.unsqueeze(2)?;
        let window = if w > 1 {
            Tensor::cat(&[&conv_state.narrow(2, 1, w - 1)?.to_dtype(dt)?, &xi], 2)?
        } else {
            xi
        };
        let (cw, cb) = self.conv_params(acc)?;
        let xc = window
            .to_dtype(acc)?
            .broadcast_mul(&cw)?
            .sum(2)?
            .broadcast_add(&cb)?
            .to_dtype(dt)?;
        let z = xc.matmul(&self.gates_weight(dt)?.t()?)?;
        let h0 = h0.reshape((b, d))?.to_dtype(acc)?;
        let p = self.channel_params()?.to_dtype(acc)?;
        let h = gate_scan(&z, &xc, &p, self.cfg.c, Some(&h0), b)?;
        let y = self.out_proj.apply(&gelu_mul(&gate, &h)?.to_dtype(dt)?)?;
        Ok((
            y,
            window.to_dtype(acc)?,
            h.reshape((b, d, 1))?.to_dtype(acc)?,
        ))
    }

    /// Checks the decoding state of a batch of `b`: `conv_state (b, D, W)`
    /// and `lrnn_state (b, D, 1)`.
    pub(crate) fn check_state(&self, b: usize, conv_state: &Tensor, h: &Tensor) -> Result<()> {
        let (d, w) = (self.d_inner, self.cfg.d_conv);
        if conv_state.dims() != [b, d, w] || h.dims() != [b, d, 1] {
            return Err(Error::shape(
                "RGLRU state",
                format!("conv_state ({b}, {d}, {w}) and lrnn_state ({b}, {d}, 1)"),
                (conv_state.dims(), h.dims()),
            ));
        }
        Ok(())
    }
}

impl Mixer for RgLru {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    /// The block up to `out_proj` is `ops::block`: on CPU f32/f64 one op
    /// with a hand-written backward, elsewhere composed from the portable
    /// tensor ops. Computes in `x`'s dtype (recurrence in its accumulation
    /// dtype) and returns in it.
    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.zeros_like()?);
        }
        let x2 = x.reshape((b * l, self.d_model))?;
        let yg = block(&x2, b, &self.block_params()?)?;
        Ok(self.out_proj.apply(&yg)?.reshape((b, l, self.d_model))?)
    }

    /// The parallel forward from the state, leaving the last `W` convolution
    /// inputs and the last recurrent state in it.
    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.zeros_like()?);
        }
        let (d, w) = (self.d_inner, self.cfg.d_conv);
        let acc = accumulation_dtype(x.dtype());
        let conv_state = state.get("conv_state")?.clone();
        self.check_state(b, &conv_state, state.get("lrnn_state")?)?;
        let history = if w > 1 {
            Some(conv_state.narrow(2, 1, w - 1)?.transpose(1, 2)?)
        } else {
            None
        };
        let h0 = state.get("lrnn_state")?.reshape((b, d))?.to_dtype(acc)?;
        let run = self.run(x, history.as_ref(), Some(&h0))?;
        // The convolution saw W-1 history rows before the prompt: L + W - 1 >= W rows.
        let total = run.conv_in.dim(1)?;
        let window = run.conv_in.narrow(1, total - w, w)?;
        state.set(
            "conv_state",
            window.transpose(1, 2)?.contiguous()?.to_dtype(acc)?,
        );
        let last = run.h.narrow(1, l - 1, 1)?.reshape((b, d, 1))?;
        state.set("lrnn_state", last.to_dtype(acc)?);
        state.seqlen_offset += l;
        Ok(run.y)
    }

    /// One position. On CPU f32/f64 with parameters of the input's dtype this
    /// runs on raw slices (`crate::step`), with no graph and no GEMM
    /// repacking; otherwise through tensor ops (portable off CPU f32/f64).
    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        step_cached(x, self.d_model, "RGLRU step input", state, |x2, st| {
            let (conv_state, h0) = (st.get("conv_state")?, st.get("lrnn_state")?);
            let slices = use_fused_cpu(x2) && x2.dtype() == self.dtype();
            let fused = if slices {
                self.step_cpu(x2, conv_state, h0)?
            } else {
                None
            };
            let (y, conv_state, h) = match fused {
                Some(out) => out,
                None => self.step_tensors(x2, conv_state, h0)?,
            };
            Ok((y, [("conv_state", conv_state), ("lrnn_state", h)]))
        })
    }

    /// lrnnx's cache: `conv_state (B, D, W)` and `lrnn_state (B, D, 1)`, zeros,
    /// in the accumulation dtype of `dtype` (f32, f64 stays f64).
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let (d, w, dt) = (self.d_inner, self.cfg.d_conv, accumulation_dtype(dtype));
        Ok(MixerState::new()
            .with("conv_state", Tensor::zeros((batch, d, w), dt, device)?)
            .with("lrnn_state", Tensor::zeros((batch, d, 1), dt, device)?))
    }

    fn family(&self) -> Family {
        Family::Ltv
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        Some(self)
    }
}

impl Ltv for RgLru {
    /// The gates give `a_bar = a^(c r)` directly: no continuous-time step.
    fn discretization(&self) -> Discretization {
        Discretization::None
    }
}

/// The unit tests' layer: `d_model = 6`, `expand = 1.5`, f64 on the CPU,
/// with conv width `d_conv` and `bias` on the projections.
#[cfg(test)]
pub(crate) fn test_layer(
    seed: u64,
    d_conv: usize,
    bias: bool,
) -> (RgLru, std::sync::Arc<lrnnx_framework::ParamStore>) {
    let store = lrnnx_framework::ParamStore::init(seed, DType::F64, &Device::Cpu);
    let cfg = RgLruConfig {
        d_conv,
        expand: 1.5,
        bias,
        ..RgLruConfig::default()
    };
    let m = RgLru::new(6, cfg, &store.builder()).unwrap();
    (m, store)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use lrnnx_framework::{ForwardOpts, Mixer, ParamStore};

    use super::RgLru;
    use crate::RgLruConfig;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        lrnnx_testing::max_abs_diff(a, b)
    }

    /// The fused block op (forward on the CPU) and the composed ops (prefill,
    /// other devices) agree in value and in every gradient.
    #[test]
    fn fused_block_equals_composed_ops() {
        for (w, bias) in [(4, false), (3, true), (1, true)] {
            let (m, store) = super::test_layer(5, w, bias);
            let dev = Device::Cpu;
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 11, 6), &dev).unwrap()).unwrap();
            let wt = Tensor::randn(0f64, 1.0, (2, 11, 6), &dev).unwrap();
            let fused = m.forward(x.as_tensor(), &ForwardOpts::default()).unwrap();
            let composed = m.run(x.as_tensor(), None, None).unwrap().y;
            assert!(max_diff(&fused, &composed) < 1e-12);
            let gf = (fused * &wt)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (composed * &wt)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars: Vec<(String, Var)> = store.vars().into_iter().collect();
            vars.push(("x".into(), x.clone()));
            for (name, v) in vars {
                let (a, b) = (gf.get(v.as_tensor()), gc.get(v.as_tensor()));
                let (a, b) = (a.unwrap(), b.unwrap_or_else(|| panic!("{name}")));
                assert!(max_diff(a, b) < 1e-10, "W={w} bias={bias}: d{name}");
            }
        }
    }

    /// Without a graph behind the input, the backward skips its gradient and
    /// still gives every parameter's.
    #[test]
    fn backward_without_input_gradient() {
        let store = ParamStore::init(5, DType::F32, &Device::Cpu);
        let m = RgLru::new(4, RgLruConfig::default(), &store.builder()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap();
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        for (name, v) in store.vars() {
            assert!(g.get(v.as_tensor()).is_some(), "{name}");
        }
    }
}
