//! Softmax attention: the flash kernels ([`crate::flash`]) where they run,
//! else candle's ops, on any device and dtype: query
//! blocks within [`SCORE_BUDGET`], a bottom-right aligned causal mask built
//! on the device, grouped-query heads.
//!
//! Scores, softmax and the weighted sum of values run in the accumulation
//! dtype ([`accumulation_dtype`]: f32 for bf16/f16, f64 stays f64), as
//! flash-attention keeps them; the context comes back in the query's dtype.

use candle_core::{Tensor, D};
use lrnnx_framework::Result;
use lrnnx_kernels::portable::accumulation_dtype;

/// The most attention scores one block of queries computes at once (64 MiB of f32).
pub const SCORE_BUDGET: usize = 1 << 24;

/// The head layout and masking of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Query heads `h`.
    pub heads: usize,
    /// Key/value heads `hkv` (divides `h`).
    pub kv_heads: usize,
    /// Score scale.
    pub scale: f64,
    /// Causal masking.
    pub causal: bool,
}

impl Heads {
    /// Softmax attention of `q (B, h, Lq, d)` over `k`, `v (B, hkv, Lk, d)`;
    /// `(B, Lq, h*d)` in `q`'s dtype. Queries sit at positions `Lk - Lq .. Lk`
    /// (bottom-right aligned causal mask). Queries go in blocks small enough
    /// that one block's scores stay within [`SCORE_BUDGET`] elements (a
    /// 100k-token prompt would otherwise ask for a score matrix of tens of
    /// GB); with a causal mask, each block sees only the keys it may attend to.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        if crate::flash::takes(q) {
            return Ok(crate::flash::attend_heads(
                q,
                k,
                v,
                self.scale,
                self.causal,
            )?);
        }
        self.attend_portable(q, k, v)
    }

    /// [`Self::attend`] through candle's ops (what a device without a flash
    /// kernel runs, and the reference the kernels are tested against).
    pub fn attend_portable(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dtype = q.dtype();
        let acc = accumulation_dtype(dtype);
        // No-ops in f32/f64; bf16/f16 (and a cache of another dtype) widen here.
        let (q, k, v) = (q.to_dtype(acc)?, k.to_dtype(acc)?, v.to_dtype(acc)?);
        let (b, h, lq, _) = q.dims4()?;
        let lk = k.dim(2)?;
        let per_row = (b * h * lk).max(1);
        let rows = (SCORE_BUDGET / per_row).max(1);
        if rows >= lq {
            return Ok(self.block(&q, &k, &v)?.to_dtype(dtype)?);
        }
        let mut outs = Vec::with_capacity(lq.div_ceil(rows));
        let mut start = 0;
        while start < lq {
            let r = rows.min(lq - start);
            let qb = q.narrow(2, start, r)?;
            let o = if self.causal {
                // Query i sees keys j <= i + (Lk - Lq): the block's last query bounds them.
                let keys = start + r + (lk - lq);
                self.block(&qb, &k.narrow(2, 0, keys)?, &v.narrow(2, 0, keys)?)?
            } else {
                self.block(&qb, &k, &v)?
            };
            outs.push(o);
            start += r;
        }
        Ok(Tensor::cat(&outs, 1)?.to_dtype(dtype)?)
    }

    /// [`Self::attend`] in one piece, all in one dtype.
    fn block(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
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
        let scores = if self.causal && lq > 1 {
            let mask = causal_mask(lq, lk, &scores)?;
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
}

/// `(Lq, Lk)`: 0 where key `j` is visible to query `i` (`j <= i + Lk - Lq`),
/// `-inf` elsewhere, in the dtype and on the device of `like`.
fn causal_mask(lq: usize, lk: usize, like: &Tensor) -> Result<Tensor> {
    let dev = like.device();
    let last = |n: usize| -> Result<u32> {
        u32::try_from(n).map_err(|_| {
            lrnnx_framework::Error::shape(
                "attention length",
                format!("at most {} positions", u32::MAX),
                n,
            )
        })
    };
    // Query i's last visible key, i + Lk - Lq, as a column.
    let qi = Tensor::arange(last(lk - lq)?, last(lk)?, dev)?.unsqueeze(1)?;
    let kj = Tensor::arange(0u32, last(lk)?, dev)?.unsqueeze(0)?;
    let visible = kj.broadcast_le(&qi)?;
    let zeros = Tensor::zeros((lq, lk), like.dtype(), dev)?;
    let neg = Tensor::full(f32::NEG_INFINITY, (lq, lk), dev)?.to_dtype(like.dtype())?;
    Ok(visible.where_cond(&zeros, &neg)?)
}
