//! The attention layer: projections, GQA heads, causal mask, KV-cache step.

use candle_core::{DType, Device, Module, Tensor, D};
use lrnnx_framework::layers::{linear_maybe_bias, residual_output, Linear};
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Error, Family, ForwardOpts, Init, Mixer,
    MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::portable::accumulation_dtype;

use crate::attend::Heads;
use crate::cache;
use crate::decode::{decode_tensors, step_linear};
use crate::{MhaConfig, Rotary};

/// Multi-head attention with lrnnx's parameter names: `in_proj` (`[Q|K|V|mlp]`),
/// optional `conv1d`, `out_proj`.
///
/// `lengths` is accepted and ignored: with causal masking, outputs before a
/// sequence's end never see the padding after it.
#[derive(Debug)]
pub struct Mha {
    cfg: MhaConfig,
    d_model: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    in_proj: Linear,
    conv: Option<(Tensor, Tensor)>,
    out_proj: Linear,
    rotary: Rotary,
}

impl Mha {
    /// Builds the layer (PyTorch default init unless `pb` loads parameters).
    pub fn new(d_model: usize, cfg: MhaConfig, pb: &ParamBuilder) -> Result<Self> {
        let cfg = cfg.resolve(d_model).map_err(Error::Config)?;
        let heads = cfg.num_heads;
        let kv_heads = cfg.num_heads_kv.unwrap_or(heads);
        let head_dim = cfg.head_dim.unwrap_or(d_model / heads);
        let qkv_dim = head_dim * (heads + 2 * kv_heads);
        let out_dim = head_dim * heads;
        let in_proj = linear_maybe_bias(
            d_model,
            qkv_dim + cfg.mlp_dim,
            cfg.qkv_proj_bias,
            &pb.pp("in_proj"),
        )?;
        let conv = if cfg.d_conv > 0 {
            let cb = pb.pp("conv1d");
            let init = Init::TorchDefault { fan_in: cfg.d_conv };
            Some((
                cb.get((qkv_dim, 1, cfg.d_conv), "weight", init.clone())?,
                cb.get(qkv_dim, "bias", init)?,
            ))
        } else {
            None
        };
        let out_proj = residual_output(
            out_dim + cfg.mlp_dim / 2,
            d_model,
            cfg.out_proj_bias,
            &pb.pp("out_proj"),
        )?;
        let rotary = Rotary::new(
            cfg.rotary_emb_dim,
            cfg.rotary_emb_base,
            cfg.rotary_emb_interleaved,
        );
        Ok(Self {
            scale: cfg.softmax_scale.unwrap_or(1.0 / (head_dim as f64).sqrt()),
            cfg,
            d_model,
            heads,
            kv_heads,
            head_dim,
            in_proj,
            conv,
            out_proj,
            rotary,
        })
    }

    fn attention(&self) -> Heads {
        Heads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            scale: self.scale,
            causal: self.cfg.causal,
        }
    }

    fn qkv_dim(&self) -> usize {
        self.head_dim * (self.heads + 2 * self.kv_heads)
    }

    /// `in_proj`, then the MLP branch split off: `(qkv (B, L, qkv_dim), mlp (B, L, mlp_dim/2))`.
    /// `decoding` (prefill/step, no backward) lets one position take the
    /// fused CPU projection, which has no backward; `forward` never does.
    fn project(&self, x: &Tensor, decoding: bool) -> Result<(Tensor, Option<Tensor>)> {
        let p = match x.dim(1)? {
            1 if decoding => step_linear(x, &self.in_proj)?,
            _ => None,
        };
        let p = match p {
            Some(p) => p,
            None => linear_at(x, &self.in_proj)?,
        };
        let q = self.qkv_dim();
        if self.cfg.mlp_dim == 0 {
            return Ok((p, None));
        }
        let half = self.cfg.mlp_dim / 2;
        let up = p.narrow(D::Minus1, q, half)?;
        let gate = p.narrow(D::Minus1, q + half, half)?;
        Ok((
            p.narrow(D::Minus1, 0, q)?,
            Some((up * candle_nn::ops::silu(&gate)?)?),
        ))
    }

    /// Causal depthwise conv over time on `qkv (B, L, C)`, left-padded with
    /// `history (B, W-1, C)`; the taps sum in the accumulation dtype and the
    /// result is in `qkv`'s dtype.
    fn conv(&self, qkv: &Tensor, history: &Tensor) -> Result<Tensor> {
        let Some((w, b)) = &self.conv else {
            return Ok(qkv.clone());
        };
        let acc = accumulation_dtype(qkv.dtype());
        let width = self.cfg.d_conv;
        let l = qkv.dim(1)?;
        let padded = Tensor::cat(&[history.to_dtype(acc)?, qkv.to_dtype(acc)?], 1)?;
        let (w, b) = (w.to_dtype(acc)?, b.to_dtype(acc)?);
        let mut y = b
            .unsqueeze(0)?
            .unsqueeze(0)?
            .broadcast_as(qkv.shape())?
            .contiguous()?;
        for k in 0..width {
            let tap = w.narrow(2, k, 1)?.flatten_all()?; // (C)
            y = (y + padded.narrow(1, k, l)?.broadcast_mul(&tap)?)?;
        }
        Ok(y.to_dtype(qkv.dtype())?)
    }

    /// Splits `qkv (B, L, C)` into `q (B, L, h, d)`, `k`, `v (B, L, hkv, d)` and applies rotary.
    fn heads(&self, qkv: &Tensor, offset: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = qkv.dims3()?;
        let (h, hk, d) = (self.heads, self.kv_heads, self.head_dim);
        let q = qkv.narrow(D::Minus1, 0, h * d)?.reshape((b, l, h, d))?;
        let k = qkv
            .narrow(D::Minus1, h * d, hk * d)?
            .reshape((b, l, hk, d))?;
        let v = qkv
            .narrow(D::Minus1, (h + hk) * d, hk * d)?
            .reshape((b, l, hk, d))?;
        Ok((
            self.rotary.apply(&q, offset)?,
            self.rotary.apply(&k, offset)?,
            v,
        ))
    }

    /// `out_proj` of the context (and MLP branch); `decoding` as in [`Self::project`].
    fn output(&self, ctx: Tensor, mlp: Option<Tensor>, decoding: bool) -> Result<Tensor> {
        let ctx = match mlp {
            Some(m) => Tensor::cat(&[ctx, m], D::Minus1)?,
            None => ctx,
        };
        if decoding && ctx.dim(1)? == 1 {
            if let Some(y) = step_linear(&ctx, &self.out_proj)? {
                return Ok(y);
            }
        }
        linear_at(&ctx, &self.out_proj)
    }

    fn zero_history(&self, b: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (b, self.cfg.d_conv.saturating_sub(1), self.qkv_dim()),
            dtype,
            dev,
        )?)
    }
}

/// The most positions a fresh KV cache reserves; it grows past them on demand.
pub const INITIAL_CACHE_POSITIONS: usize = 4096;

impl Mixer for Mha {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, _) = check_sequence(x, self.d_model, "attention input")?;
        let (qkv, mlp) = self.project(x, false)?;
        let qkv = self.conv(&qkv, &self.zero_history(b, x.dtype(), x.device())?)?;
        let (q, k, v) = self.heads(&qkv, 0)?;
        let ctx = self.attention().attend(
            &q.transpose(1, 2)?,
            &k.transpose(1, 2)?,
            &v.transpose(1, 2)?,
        )?;
        self.output(ctx, mlp, false)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = check_sequence(x, self.d_model, "attention input")?;
        let offset = state.seqlen_offset;
        let (qkv, mlp) = self.project(x, true)?;
        let qkv = match &self.conv {
            Some(_) => {
                let hist = cache::push_history(state, &qkv)?;
                self.conv(&qkv, &hist)?
            }
            None => qkv,
        };
        let (q, k, v) = self.heads(&qkv, offset)?;
        let (k, v) = (k.transpose(1, 2)?, v.transpose(1, 2)?);
        cache::write(state, &k, &v, offset)?;
        let t = offset + l;
        let (kc, vc) = (state.get("k")?, state.get("v")?);
        // The fused step reads the cache in place; elsewhere candle's ops (which widen).
        let fused = match l {
            1 => decode_tensors(
                &q.reshape((b, self.heads, self.head_dim))?,
                kc,
                vc,
                t,
                self.scale,
            )?,
            _ => None,
        };
        let ctx = match fused {
            Some(ctx) => ctx,
            None => self.attention().attend(
                &q.transpose(1, 2)?.contiguous()?,
                &kc.narrow(2, 0, t)?,
                &vc.narrow(2, 0, t)?,
            )?,
        };
        state.seqlen_offset = t;
        self.output(ctx, mlp, true)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "attention step input")?;
        let y = self.prefill(
            &x2.unsqueeze(1)?,
            state,
            &ForwardOpts {
                integration_timesteps: opts.integration_timesteps.clone(),
                lengths: None,
            },
        )?;
        match_step_rank(y.squeeze(1)?, x)
    }

    /// A KV cache `k`, `v (B, hkv, capacity, d)` and, with a conv, its last
    /// `d_conv - 1` inputs, all in `dtype` on `device`: they hold activations
    /// (keys, values, `qkv` rows), not accumulated states, so the activation
    /// dtype keeps them exactly; inputs of another dtype are cast on write. The capacity starts at `max_seqlen`, at most
    /// [`INITIAL_CACHE_POSITIONS`], and doubles on demand: a request for a
    /// huge `max_seqlen` costs nothing until the tokens arrive.
    fn init_state(
        &self,
        batch: usize,
        max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let positions = max_seqlen.clamp(1, INITIAL_CACHE_POSITIONS);
        let shape = (batch, self.kv_heads, positions, self.head_dim);
        let mut s = MixerState::new()
            .with("k", Tensor::zeros(shape, dtype, device)?)
            .with("v", Tensor::zeros(shape, dtype, device)?);
        if self.conv.is_some() {
            s.set("conv", self.zero_history(batch, dtype, device)?);
        }
        Ok(s)
    }

    fn family(&self) -> Family {
        Family::Attention
    }
}

/// `lin(x)` with the weight and bias cast to `x`'s dtype (no-ops when they
/// match): f32 master weights run with bf16 activations, and the gradients
/// flow back through the casts to the stored parameters.
fn linear_at(x: &Tensor, lin: &Linear) -> Result<Tensor> {
    let dtype = x.dtype();
    if lin.weight().dtype() == dtype && lin.bias().is_none_or(|b| b.dtype() == dtype) {
        return Ok(lin.forward(x)?);
    }
    let w = lin.weight().to_dtype(dtype)?;
    let b = lin.bias().map(|b| b.to_dtype(dtype)).transpose()?;
    Ok(Linear::new(w, b).forward(x)?)
}
