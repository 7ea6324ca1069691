//! The attention layer: projections, GQA heads, causal mask, KV-cache step.

use candle_core::{DType, Device, Module, Tensor, D};
use lrnnx_framework::layers::{linear_maybe_bias, residual_output, Linear};
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Error, Family, ForwardOpts, Init, Mixer,
    MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};

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

    fn qkv_dim(&self) -> usize {
        self.head_dim * (self.heads + 2 * self.kv_heads)
    }

    /// `in_proj`, then the MLP branch split off: `(qkv (B, L, qkv_dim), mlp (B, L, mlp_dim/2))`.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let p = match x.dim(1)? {
            1 => step_linear(x, &self.in_proj)?,
            _ => None,
        };
        let p = match p {
            Some(p) => p,
            None => self.in_proj.forward(x)?,
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

    /// Causal depthwise conv over time on `qkv (B, L, C)`, left-padded with `history (B, W-1, C)`.
    fn conv(&self, qkv: &Tensor, history: &Tensor) -> Result<Tensor> {
        let Some((w, b)) = &self.conv else {
            return Ok(qkv.clone());
        };
        let width = self.cfg.d_conv;
        let l = qkv.dim(1)?;
        let padded = Tensor::cat(&[history, qkv], 1)?;
        let mut y = b
            .unsqueeze(0)?
            .unsqueeze(0)?
            .broadcast_as(qkv.shape())?
            .contiguous()?;
        for k in 0..width {
            let tap = w.narrow(2, k, 1)?.flatten_all()?; // (C)
            y = (y + padded.narrow(1, k, l)?.broadcast_mul(&tap)?)?;
        }
        Ok(y)
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

    /// `softmax(q k^T * scale + mask) v` with query heads grouped over KV heads.
    /// `q (B, h, Lq, d)`, `k`/`v (B, hkv, Lk, d)`; queries sit at positions
    /// `Lk - Lq .. Lk` (bottom-right aligned causal mask). Returns `(B, Lq, h*d)`.
    /// Softmax attention of `q (B, h, Lq, d)` over `k`, `v (B, hk, Lk, d)`;
    /// `(B, Lq, h*d)`. Queries go in blocks small enough that one block's
    /// scores stay within [`SCORE_BUDGET`] elements (a 100k-token prompt
    /// would otherwise ask for a score matrix of tens of GB); with a causal
    /// mask, each block sees only the keys it may attend to.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, h, lq, _) = q.dims4()?;
        let lk = k.dim(2)?;
        let per_row = (b * h * lk).max(1);
        let rows = (SCORE_BUDGET / per_row).max(1);
        if rows >= lq {
            return self.attend_block(q, k, v);
        }
        let mut outs = Vec::with_capacity(lq.div_ceil(rows));
        let mut start = 0;
        while start < lq {
            let r = rows.min(lq - start);
            let qb = q.narrow(2, start, r)?;
            let o = if self.cfg.causal {
                // Query i sees keys j <= i + (Lk - Lq): the block's last query bounds them.
                let keys = start + r + (lk - lq);
                self.attend_block(&qb, &k.narrow(2, 0, keys)?, &v.narrow(2, 0, keys)?)?
            } else {
                self.attend_block(&qb, k, v)?
            };
            outs.push(o);
            start += r;
        }
        Ok(Tensor::cat(&outs, 1)?)
    }

    /// [`Self::attend`] in one piece.
    fn attend_block(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, h, lq, d) = q.dims4()?;
        let lk = k.dim(2)?;
        let (hk, g) = (self.kv_heads, self.heads / self.kv_heads);
        let q = q.reshape((b, hk, g * lq, d))?;
        // A view into the KV cache multiplies as it is; other layouts are copied first.
        let kt = k.t()?;
        let scores = match q.matmul(&kt) {
            Ok(s) => s,
            Err(_) => q.matmul(&kt.contiguous()?)?,
        };
        let scores = (scores * self.scale)?; // (B, hk, g*Lq, Lk)
        let scores = if self.cfg.causal && lq > 1 {
            // Key j is visible to query i iff j <= i + (Lk - Lq); built on the device.
            let dev = q.device();
            let qi = (Tensor::arange(0u32, lq as u32, dev)?.unsqueeze(1)? + (lk - lq) as f64)?;
            let kj = Tensor::arange(0u32, lk as u32, dev)?.unsqueeze(0)?;
            let visible = kj.broadcast_le(&qi)?;
            let zeros = Tensor::zeros((lq, lk), scores.dtype(), dev)?;
            let neg = Tensor::full(f32::NEG_INFINITY, (lq, lk), dev)?.to_dtype(scores.dtype())?;
            let mask = visible.where_cond(&zeros, &neg)?;
            scores
                .reshape((b, hk, g, lq, lk))?
                .broadcast_add(&mask)?
                .reshape((b, hk, g * lq, lk))?
        } else {
            scores
        };
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let o = match p.matmul(v) {
            Ok(o) => o,
            Err(_) => p.matmul(&v.contiguous()?)?,
        }; // (B, hk, g*Lq, d)
        Ok(o.reshape((b, h, lq, d))?
            .transpose(1, 2)?
            .reshape((b, lq, h * d))?)
    }

    fn output(&self, ctx: Tensor, mlp: Option<Tensor>) -> Result<Tensor> {
        let ctx = match mlp {
            Some(m) => Tensor::cat(&[ctx, m], D::Minus1)?,
            None => ctx,
        };
        if ctx.dim(1)? == 1 {
            if let Some(y) = step_linear(&ctx, &self.out_proj)? {
                return Ok(y);
            }
        }
        Ok(self.out_proj.forward(&ctx)?)
    }

    fn zero_history(&self, b: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (b, self.cfg.d_conv.saturating_sub(1), self.qkv_dim()),
            dtype,
            dev,
        )?)
    }

    /// Writes `k`, `v (B, hkv, n, d)` at `offset` into the cache, growing it if needed.
    fn cache_write(
        &self,
        state: &mut MixerState,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
    ) -> Result<()> {
        let n = k.dim(2)?;
        for (name, new) in [("k", k), ("v", v)] {
            let mut cache = state.get(name)?.clone();
            let cap = cache.dim(2)?;
            if offset + n > cap {
                let (b, hk, _, d) = cache.dims4()?;
                let grown = Tensor::zeros(
                    (b, hk, (2 * cap).max(offset + n), d),
                    cache.dtype(),
                    cache.device(),
                )?;
                grown.slice_set(&cache, 2, 0)?;
                cache = grown;
            }
            cache.slice_set(&new.contiguous()?, 2, offset)?;
            state.set(name, cache);
        }
        Ok(())
    }
}

/// The most attention scores one block of queries computes at once (64 MiB of f32).
pub const SCORE_BUDGET: usize = 1 << 24;

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
        let (qkv, mlp) = self.project(x)?;
        let qkv = self.conv(&qkv, &self.zero_history(b, x.dtype(), x.device())?)?;
        let (q, k, v) = self.heads(&qkv, 0)?;
        let ctx = self.attend(
            &q.transpose(1, 2)?,
            &k.transpose(1, 2)?,
            &v.transpose(1, 2)?,
        )?;
        self.output(ctx, mlp)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = check_sequence(x, self.d_model, "attention input")?;
        let offset = state.seqlen_offset;
        let (qkv, mlp) = self.project(x)?;
        let qkv = match &self.conv {
            Some(_) => {
                let hist = state.get("conv")?.clone();
                let out = self.conv(&qkv, &hist)?;
                let all = Tensor::cat(&[&hist, &qkv], 1)?;
                let w = hist.dim(1)?;
                state.set("conv", all.narrow(1, all.dim(1)? - w, w)?);
                out
            }
            None => qkv,
        };
        let (q, k, v) = self.heads(&qkv, offset)?;
        let (k, v) = (k.transpose(1, 2)?, v.transpose(1, 2)?);
        self.cache_write(state, &k, &v, offset)?;
        let t = offset + l;
        let (kc, vc) = (state.get("k")?, state.get("v")?);
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
            None => self.attend(
                &q.transpose(1, 2)?.contiguous()?,
                &kc.narrow(2, 0, t)?,
                &vc.narrow(2, 0, t)?,
            )?,
        };
        state.seqlen_offset = t;
        self.output(ctx, mlp)
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
    /// `d_conv - 1` inputs. The capacity starts at `max_seqlen`, at most
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
