//! The mLSTM layer of xLSTM (`xlstm.blocks.mlstm.layer.mLSTMLayer`) around the cell.

use candle_core::{DType, Device, Module, Tensor};
use lrnnx_framework::layers::Linear;
use lrnnx_framework::params::random;
use lrnnx_framework::Role;
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Error, Family, ForwardOpts, Init, Mixer,
    MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};

use crate::cell::{self, CellState};
use crate::conv::CausalConv1d;
use crate::headwise::HeadwiseLinear;
use crate::norm::MultiHeadLayerNorm;
use crate::MlstmConfig;

/// The mLSTM layer. With `D` the inner width (`proj_factor * d_model`, rounded):
///
/// ```text
/// x_m, z   = split(proj_up(x))                         (B, L, D) each
/// c        = silu(conv1d(x_m))                         causal depthwise conv
/// q, k, v  = q_proj(c), k_proj(c), v_proj(x_m)         head-wise block-diagonal maps
/// i, f     = igate([q, k, v]), fgate([q, k, v])        (B, L, NH)
/// h        = outnorm(cell(q, k, v, i, f))              per-head layer norm
/// y        = proj_down((h + learnable_skip * c) * silu(z))
/// ```
///
/// Parameters use the PyTorch xlstm package's names: `proj_up.weight`
/// `(2D, d_model)`, `q_proj.weight`/`k_proj.weight`/`v_proj.weight`
/// `(D / qkv_proj_blocksize, bs, bs)`, `conv1d.conv.weight (D, 1, K)`,
/// `conv1d.conv.bias (D)`, `mlstm_cell.igate.{weight,bias}`,
/// `mlstm_cell.fgate.{weight,bias}` `(NH, 3D)`/`(NH)`,
/// `mlstm_cell.outnorm.weight (D)`, `learnable_skip (D)`,
/// `proj_down.weight (d_model, D)`; with `bias`, also `proj_up.bias`,
/// `q_proj.bias`, `k_proj.bias`, `v_proj.bias`, `proj_down.bias`.
///
/// `forward` and `prefill` run the cell chunkwise (chunk `chunk_size`),
/// `step` runs its recurrence with a window of the last `K` conv inputs;
/// both compute the same function. (xLSTM's own forward uses the parallel
/// form, whose stabilizer lacks the `m_0 = 0` term of its step: the two
/// differ by `eps`-sized amounts, see [`crate::cell`].) `lengths` is accepted and has no
/// effect (the layer is causal). Dropout is not applied.
#[derive(Debug)]
pub struct Mlstm {
    cfg: MlstmConfig,
    d_model: usize,
    inner: usize,
    heads: usize,
    head_dim: usize,
    proj_up: Linear,
    q_proj: HeadwiseLinear,
    k_proj: HeadwiseLinear,
    v_proj: HeadwiseLinear,
    conv1d: CausalConv1d,
    igate: Linear,
    fgate: Linear,
    outnorm: MultiHeadLayerNorm,
    learnable_skip: Tensor,
    proj_down: Linear,
}

/// The cell's inputs for a stretch of positions, in head layout.
struct CellInputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
}

impl Mlstm {
    /// Builds the layer, drawing parameters as xLSTM's `reset_parameters` does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: MlstmConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate(d_model).map_err(Error::Config)?;
        let d = d_model;
        let normal = |rows: usize, cols: usize, std: f64| {
            move |rng: &mut _| -> Result<Tensor> {
                let v: Vec<f32> = random::normal(rng, rows * cols)
                    .into_iter()
                    .map(|z| (z * std) as f32)
                    .collect();
                Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
            }
        };
        let inner = cfg.inner_dim(d);
        let heads = cfg.num_heads;
        let small = (2.0 / (5.0 * d as f64)).sqrt();
        let proj_up = Linear::new(
            pb.pp("proj_up")
                .get_with((2 * inner, d), "weight", normal(2 * inner, d, small))?,
            if cfg.bias {
                pb.pp("proj_up").mark("bias", Role::LinearBias);
                Some(pb.pp("proj_up").get(2 * inner, "bias", Init::Zeros)?)
            } else {
                None
            },
        );
        let blocks = inner / cfg.qkv_proj_blocksize;
        let q_proj = HeadwiseLinear::new(inner, blocks, cfg.bias, d, &pb.pp("q_proj"))?;
        let k_proj = HeadwiseLinear::new(inner, blocks, cfg.bias, d, &pb.pp("k_proj"))?;
        let v_proj = HeadwiseLinear::new(inner, blocks, cfg.bias, d, &pb.pp("v_proj"))?;
        let conv1d = CausalConv1d::new(inner, cfg.conv1d_kernel_size, &pb.pp("conv1d"))?;
        let cpb = pb.pp("mlstm_cell");
        let gate = |name: &str, bias: Init| -> Result<Linear> {
            let g = cpb.pp(name);
            let w = g.get((heads, 3 * inner), "weight", Init::Zeros)?;
            let b = g.get(heads, "bias", bias)?;
            g.mark("bias", Role::LinearBias);
            Ok(Linear::new(w, Some(b)))
        };
        let igate = gate(
            "igate",
            Init::Normal {
                mean: 0.0,
                std: 0.1,
            },
        )?;
        // torch.linspace(3, 6, NH).
        let fgate = {
            let g = cpb.pp("fgate");
            let w = g.get((heads, 3 * inner), "weight", Init::Zeros)?;
            let b = g.get_with(heads, "bias", |_| {
                let v: Vec<f32> = (0..heads)
                    .map(|j| {
                        if heads == 1 {
                            3.0
                        } else {
                            (3.0 + 3.0 * j as f64 / (heads - 1) as f64) as f32
                        }
                    })
                    .collect();
                Ok(Tensor::from_vec(v, heads, &Device::Cpu)?)
            })?;
            // An nn.Linear bias: lrnnx's `_init_weights` zeroes it too.
            g.mark("bias", Role::LinearBias);
            Linear::new(w, Some(b))
        };
        let outnorm = MultiHeadLayerNorm::new(inner, heads, &cpb.pp("outnorm"))?;
        let learnable_skip = pb.get(inner, "learnable_skip", Init::Ones)?;
        let wang = 2.0 / cfg.num_blocks as f64 / (d as f64).sqrt();
        let proj_down = {
            let p = pb.pp("proj_down");
            let w = p.get_with((d, inner), "weight", normal(d, inner, wang))?;
            let b = if cfg.bias {
                p.mark("bias", Role::LinearBias);
                Some(p.get(d, "bias", Init::Zeros)?)
            } else {
                None
            };
            Linear::new(w, b)
        };
        Ok(Self {
            d_model,
            inner,
            heads,
            head_dim: inner / heads,
            cfg,
            proj_up,
            q_proj,
            k_proj,
            v_proj,
            conv1d,
            igate,
            fgate,
            outnorm,
            learnable_skip,
            proj_down,
        })
    }

    /// The inner width `D`.
    pub fn inner_dim(&self) -> usize {
        self.inner
    }

    /// Heads `NH` of the cell and their size `D / NH`.
    pub fn heads(&self) -> (usize, usize) {
        (self.heads, self.head_dim)
    }

    fn dtype(&self) -> DType {
        self.learnable_skip.dtype()
    }

    /// Up-projection, conv, q/k/v and gates for `x (B, L, d_model)`;
    /// returns the cell inputs (head layout), `silu(conv)`, `z` and `x_m`.
    fn branches(
        &self,
        x: &Tensor,
        window: Option<&Tensor>,
    ) -> Result<(CellInputs, Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let up = self.proj_up.forward(x)?;
        let x_m = up.narrow(2, 0, self.inner)?.contiguous()?;
        let z = up.narrow(2, self.inner, self.inner)?;
        let conv = self.conv1d.forward(&x_m, window)?.silu()?;
        let q = self.q_proj.forward(&conv)?;
        let k = self.k_proj.forward(&conv)?;
        let v = self.v_proj.forward(&x_m)?;
        let gate_in = Tensor::cat(&[&q, &k, &v], 2)?;
        let gates = |g: &Linear| -> Result<Tensor> {
            Ok(g.forward(&gate_in)?.transpose(1, 2)?.contiguous()?)
        };
        let heads = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let inputs = CellInputs {
            q: heads(&q)?,
            k: heads(&k)?,
            v: heads(&v)?,
            i: gates(&self.igate)?,
            f: gates(&self.fgate)?,
        };
        Ok((inputs, conv, z, x_m))
    }

    /// Norm, skip, output gate and down-projection of `h (B, NH, L, DH)`.
    fn output(&self, h: &Tensor, conv: &Tensor, z: &Tensor) -> Result<Tensor> {
        let (b, _, l, _) = h.dims4()?;
        let hn = self
            .outnorm
            .forward(h)?
            .transpose(1, 2)?
            .reshape((b, l, self.inner))?;
        let skipped = (hn + conv.broadcast_mul(&self.learnable_skip)?)?;
        let gated = (skipped * z.silu()?)?;
        Ok(self.proj_down.forward(&gated)?)
    }

    /// The layer over `x (B, L, d_model)` from `state` (cell state and conv
    /// window), or from zeros; returns the output and the state after `x`.
    fn run(
        &self,
        x: &Tensor,
        state: Option<(&CellState, &Tensor)>,
    ) -> Result<(Tensor, CellState, Tensor)> {
        let x = x.to_dtype(self.dtype())?;
        let (b, _, _) = x.dims3()?;
        let (cell_init, window) = match state {
            Some((c, w)) => (Some(c), Some(w)),
            None => (None, None),
        };
        let (ins, conv, z, x_m) = self.branches(&x, window)?;
        let (h, last) = cell::chunkwise(
            &ins.q,
            &ins.k,
            &ins.v,
            &ins.i,
            &ins.f,
            cell_init,
            self.cfg.chunk_size,
            self.cfg.eps,
        )?;
        let y = self.output(&h, &conv, &z)?;
        let zeros;
        let window = match window {
            Some(w) => w,
            None => {
                zeros = Tensor::zeros(
                    (b, self.conv1d.taps(), self.inner),
                    self.dtype(),
                    x.device(),
                )?;
                &zeros
            }
        };
        let next_window = self.conv1d.next_window(window, &x_m)?;
        Ok((y, last, next_window))
    }

    fn cell_state(state: &MixerState) -> Result<CellState> {
        Ok(CellState {
            c: state.get("c")?.clone(),
            n: state.get("n")?.clone(),
            m: state.get("m")?.clone(),
        })
    }

    fn store(state: &mut MixerState, cell: CellState, window: Tensor) {
        state.set("c", cell.c);
        state.set("n", cell.n);
        state.set("m", cell.m);
        state.set("conv_state", window);
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "mLSTM input")
    }
}

impl Mixer for Mlstm {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.clone());
        }
        let (y, _, _) = self.run(x, None)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = self.check(x)?;
        if l == 0 {
            return Ok(x.clone());
        }
        let cell = Self::cell_state(state)?;
        let window = state.get("conv_state")?.clone();
        let (y, cell, window) = self.run(x, Some((&cell, &window)))?;
        Self::store(state, cell, window);
        state.seqlen_offset += l;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "mLSTM step input")?.to_dtype(self.dtype())?;
        let b = x2.dim(0)?;
        let up = self.proj_up.forward(&x2)?;
        let x_m = up.narrow(1, 0, self.inner)?.contiguous()?;
        let z = up.narrow(1, self.inner, self.inner)?;
        let window = state.get("conv_state")?.clone();
        let (conv, window) = self.conv1d.step(&x_m, &window)?;
        let conv = conv.silu()?;
        let q = self.q_proj.forward(&conv)?;
        let k = self.k_proj.forward(&conv)?;
        let v = self.v_proj.forward(&x_m)?;
        let gate_in = Tensor::cat(&[&q, &k, &v], 1)?;
        let i = self.igate.forward(&gate_in)?;
        let f = self.fgate.forward(&gate_in)?;
        let heads =
            |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((b, self.heads, self.head_dim))?) };
        let cell = Self::cell_state(state)?;
        let (h, cell) = cell::step(
            &heads(&q)?,
            &heads(&k)?,
            &heads(&v)?,
            &i,
            &f,
            &cell,
            self.cfg.eps,
        )?;
        let y = self.output(&h.unsqueeze(2)?, &conv.unsqueeze(1)?, &z.unsqueeze(1)?)?;
        Self::store(state, cell, window);
        state.seqlen_offset += 1;
        match_step_rank(y.squeeze(1)?.to_dtype(x.dtype())?, x)
    }

    /// Cell state `c (B, NH, DH, DH)`, `n (B, NH, DH)`, `m (B, NH)` and the
    /// conv window `conv_state (B, K, D)`, all zeros.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        _dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let dt = self.dtype();
        let cell = CellState::zeros(batch, self.heads, self.head_dim, self.head_dim, dt, device)?;
        let window = Tensor::zeros((batch, self.conv1d.taps(), self.inner), dt, device)?;
        let mut st = MixerState::new();
        Self::store(&mut st, cell, window);
        Ok(st)
    }

    fn family(&self) -> Family {
        Family::Other
    }
}
