//! The parallel and chunkwise forms: batched matmuls within chunks, a
//! recurrence over chunk states across them.
//!
//! A sequence is cut into chunks of `L` positions. With `b_t` the cumulative
//! sum of `logsig(f)` inside a chunk (inclusive), the chunk's outputs given
//! the state `(C, n, m)` at its start are
//!
//! ```text
//! logD[t,s] = b_t - b_s + i_s (s <= t), -inf (s > t)
//! mc_t      = max(b_t + m, max_s logD[t,s])
//! num_t     = sum_s S[t,s] exp(logD[t,s] - mc_t) v_s + exp(b_t + m - mc_t) q'_t^T C
//! den_t     = sum_s S[t,s] exp(logD[t,s] - mc_t)     + exp(b_t + m - mc_t) q'_t^T n
//! h_t       = num_t / (max(|den_t|, exp(-mc_t)) + eps)
//! ```
//!
//! with `q' = q / sqrt(DHQK)` and `S = q' k^T`; and the state after it is
//!
//! ```text
//! a_s = b_L - b_s + i_s,  m' = max(b_L + m, max_s a_s)
//! C'  = exp(b_L + m - m') C + sum_s exp(a_s - m') k_s v_s^T   (n' likewise with k_s)
//! ```
//!
//! `mc_t` is exactly the recurrent `m_t`, so this equals the recurrence.
//! Everything but the state recurrence runs for all chunks at once; the
//! state recurrence loops over chunks (not positions) on `(B, NH, DHQK, DHV)`
//! tensors. Nothing of size `(S, S)` is formed unless the chunk is the whole
//! sequence (the parallel form).

use candle_core::{DType, Device, Tensor, D};
use lrnnx_framework::{Error, Result};

use super::{empty_output, logsigmoid, prepare, CellState, Dims};

/// Equal-length chunks of a sequence, `NC` of them of `L` positions.
struct Chunks {
    /// `(B, NH, NC, L, DHQK)`.
    q: Tensor,
    /// `(B, NH, NC, L, DHQK)`.
    k: Tensor,
    /// `(B, NH, NC, L, DHV)`.
    v: Tensor,
    /// Input gate pre-activations `(B, NH, NC, L)`.
    i: Tensor,
    /// Cumulative log forget gates within each chunk `(B, NH, NC, L)`.
    b: Tensor,
    nc: usize,
    len: usize,
}

/// What the state recurrence needs of each chunk.
struct Summary {
    /// Total log forget gate `b_L`, `(B, NH, NC)`.
    g: Tensor,
    /// `max_s a_s`, `(B, NH, NC)`.
    amax: Tensor,
    /// `sum_s exp(a_s - amax) k_s v_s^T`, `(B, NH, NC, DHQK, DHV)`.
    kv: Tensor,
    /// `sum_s exp(a_s - amax) k_s`, `(B, NH, NC, DHQK)`.
    ksum: Tensor,
}

/// Batched matmul over any number of leading dims (candle's CPU matmul takes
/// at most two): `a (.., m, k) @ b (.., k, n)`, with `a` or `b` given
/// transposed (`(.., k, m)`, `(.., n, k)`) when `ta` / `tb`; the transposes
/// are strided views, never copies.
fn bmm(a: &Tensor, ta: bool, b: &Tensor, tb: bool) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let r = ad.len();
    let lead = &ad[..r - 2];
    let batch: usize = lead.iter().product();
    let flat = |t: &Tensor, d: &[usize], tr: bool| -> Result<Tensor> {
        let t = t.reshape((batch, d[r - 2], d[r - 1]))?;
        Ok(if tr { t.transpose(1, 2)? } else { t })
    };
    let (a3, b3) = (flat(a, ad, ta)?, flat(b, bd, tb)?);
    let (m, n) = (a3.dim(1)?, b3.dim(2)?);
    let mut out = lead.to_vec();
    out.extend([m, n]);
    Ok(a3.matmul(&b3)?.reshape(out)?)
}

/// `0` on and below the diagonal, `-inf` above, `(len, len)`.
fn causal_bias(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f64; len * len];
    for t in 0..len {
        for s in t + 1..len {
            v[t * len + s] = f64::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(v, (len, len), device)?.to_dtype(dtype)?)
}

impl Chunks {
    /// Positions `start .. start + nc * len` of the sequence, cut into chunks.
    #[allow(clippy::too_many_arguments)]
    fn new(
        d: &Dims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        i: &Tensor,
        logf: &Tensor,
        start: usize,
        nc: usize,
        len: usize,
    ) -> Result<Self> {
        let n = nc * len;
        let cut = |t: &Tensor, dh: usize| -> Result<Tensor> {
            Ok(t.narrow(2, start, n)?.reshape((d.b, d.nh, nc, len, dh))?)
        };
        let gates = |t: &Tensor| -> Result<Tensor> {
            Ok(t.narrow(2, start, n)?.reshape((d.b, d.nh, nc, len))?)
        };
        Ok(Self {
            q: cut(q, d.dqk)?,
            k: cut(k, d.dqk)?,
            v: cut(v, d.dv)?,
            i: gates(i)?,
            b: gates(logf)?.cumsum(D::Minus1)?,
            nc,
            len,
        })
    }

    fn summary(&self) -> Result<Summary> {
        let g = self.b.narrow(3, self.len - 1, 1)?; // (B, NH, NC, 1)
        let a = (self.i.broadcast_add(&g)? - &self.b)?;
        let amax = a.max_keepdim(D::Minus1)?;
        let w = a.broadcast_sub(&amax)?.exp()?.unsqueeze(D::Minus1)?;
        let kw = self.k.broadcast_mul(&w)?; // (B, NH, NC, L, DHQK)
        let kv = bmm(&kw, true, &self.v, false)?;
        Ok(Summary {
            g: g.squeeze(3)?,
            amax: amax.squeeze(3)?,
            kv,
            ksum: kw.sum(3)?,
        })
    }

    /// Outputs `(B, NH, NC * L, DHV)` given the states at each chunk's start
    /// (`c (B, NH, NC, DHQK, DHV)`, `n (B, NH, NC, DHQK)`, `m (B, NH, NC)`),
    /// or with no state term at all (the reference parallel form).
    fn outputs(&self, starts: Option<&CellState>, eps: f64) -> Result<Tensor> {
        let (b, nh, _, _, dv) = self.v.dims5()?;
        let scale = 1.0 / (self.q.dim(4)? as f64).sqrt();
        let bias = causal_bias(self.len, self.b.dtype(), self.b.device())?;
        let log_d = self
            .b
            .unsqueeze(4)?
            .broadcast_sub(&(&self.b - &self.i)?.unsqueeze(3)?)?
            .broadcast_add(&bias)?; // (B, NH, NC, L, L)
        let m_intra = log_d.max_keepdim(D::Minus1)?; // (B, NH, NC, L, 1)
        let inter = match starts {
            None => None,
            Some(st) => {
                let m_inter = self.b.broadcast_add(&st.m.unsqueeze(3)?)?.unsqueeze(4)?;
                Some((st, m_inter))
            }
        };
        let m_comb = match &inter {
            None => m_intra,
            Some((_, m_inter)) => m_inter.maximum(&m_intra)?,
        };
        let decay = log_d.broadcast_sub(&m_comb)?.exp()?;
        let q = (&self.q * scale)?;
        let weights = (bmm(&q, false, &self.k, true)? * decay)?;
        let mut num = bmm(&weights, false, &self.v, false)?;
        let mut den = weights.sum_keepdim(D::Minus1)?;
        if let Some((st, m_inter)) = inter {
            let qg = q.broadcast_mul(&(m_inter - &m_comb)?.exp()?)?;
            num = (num + bmm(&qg, false, &st.c, false)?)?;
            den = (den + bmm(&qg, false, &st.n.unsqueeze(4)?, false)?)?;
        }
        let floor = m_comb.neg()?.exp()?;
        let denom = (den.abs()?.maximum(&floor)? + eps)?;
        Ok(num
            .broadcast_div(&denom)?
            .reshape((b, nh, self.nc * self.len, dv))?)
    }
}

/// The state recurrence across chunks: the state at each chunk's start
/// (stacked on axis 2) and the state after the last chunk.
fn chunk_states(s: &Summary, init: CellState) -> Result<(CellState, CellState)> {
    let nc = s.g.dim(2)?;
    let CellState {
        mut c,
        mut n,
        mut m,
    } = init;
    let (mut cs, mut ns, mut ms) = (
        Vec::with_capacity(nc),
        Vec::with_capacity(nc),
        Vec::with_capacity(nc),
    );
    for j in 0..nc {
        cs.push(c.clone());
        ns.push(n.clone());
        ms.push(m.clone());
        let g = s.g.narrow(2, j, 1)?.squeeze(2)?;
        let amax = s.amax.narrow(2, j, 1)?.squeeze(2)?;
        let carried = (g + &m)?;
        let m_next = carried.maximum(&amax)?;
        let keep = (carried - &m_next)?.exp()?.unsqueeze(2)?; // (B, NH, 1)
        let add = (amax - &m_next)?.exp()?.unsqueeze(2)?;
        let kv = s.kv.narrow(2, j, 1)?.squeeze(2)?;
        let ksum = s.ksum.narrow(2, j, 1)?.squeeze(2)?;
        c = (c.broadcast_mul(&keep.unsqueeze(3)?)? + kv.broadcast_mul(&add.unsqueeze(3)?)?)?;
        n = (n.broadcast_mul(&keep)? + ksum.broadcast_mul(&add)?)?;
        m = m_next;
    }
    let starts = CellState {
        c: Tensor::stack(&cs, 2)?,
        n: Tensor::stack(&ns, 2)?,
        m: Tensor::stack(&ms, 2)?,
    };
    Ok((starts, CellState { c, n, m }))
}

fn concat_summaries(parts: &[Summary]) -> Result<Summary> {
    if parts.len() == 1 {
        let p = &parts[0];
        return Ok(Summary {
            g: p.g.clone(),
            amax: p.amax.clone(),
            kv: p.kv.clone(),
            ksum: p.ksum.clone(),
        });
    }
    let cat = |f: fn(&Summary) -> &Tensor| -> Result<Tensor> {
        let ts: Vec<&Tensor> = parts.iter().map(f).collect();
        Ok(Tensor::cat(&ts, 2)?)
    };
    Ok(Summary {
        g: cat(|s| &s.g)?,
        amax: cat(|s| &s.amax)?,
        kv: cat(|s| &s.kv)?,
        ksum: cat(|s| &s.ksum)?,
    })
}

/// Casts everything to `q`'s dtype.
fn same_dtype(q: &Tensor, ts: [&Tensor; 4]) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let dt = q.dtype();
    Ok((
        ts[0].to_dtype(dt)?,
        ts[1].to_dtype(dt)?,
        ts[2].to_dtype(dt)?,
        ts[3].to_dtype(dt)?,
    ))
}

/// The chunkwise form: `h (B, NH, S, DHV)` and the last state.
///
/// `chunk_size` positions per chunk (the last chunk may be shorter);
/// `initial` defaults to zeros. Memory and time are linear in `S`: the
/// largest intermediates are `(B, NH, S, chunk_size)` and the chunk states
/// `(B, NH, S / chunk_size, DHQK, DHV)`. Differentiable (candle autograd).
#[allow(clippy::too_many_arguments)]
pub fn chunkwise(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    igate_preact: &Tensor,
    fgate_preact: &Tensor,
    initial: Option<&CellState>,
    chunk_size: usize,
    eps: f64,
) -> Result<(Tensor, CellState)> {
    if chunk_size == 0 {
        return Err(Error::Config(
            "mLSTM chunkwise: chunk_size must be positive, found 0".into(),
        ));
    }
    let (d, init) = prepare(q, k, v, igate_preact, fgate_preact, initial)?;
    if d.s == 0 {
        return Ok((empty_output(&d, q)?, init));
    }
    let (k, v, i, f) = same_dtype(q, [k, v, igate_preact, fgate_preact])?;
    let logf = logsigmoid(&f)?;
    let len = chunk_size.min(d.s);
    let (full, rest) = (d.s / len, d.s % len);
    let mut groups = vec![Chunks::new(&d, q, &k, &v, &i, &logf, 0, full, len)?];
    if rest > 0 {
        groups.push(Chunks::new(&d, q, &k, &v, &i, &logf, full * len, 1, rest)?);
    }
    let summaries = groups
        .iter()
        .map(Chunks::summary)
        .collect::<Result<Vec<_>>>()?;
    let (starts, last) = chunk_states(&concat_summaries(&summaries)?, init)?;
    let mut hs = Vec::with_capacity(groups.len());
    let mut first = 0;
    for g in &groups {
        let st = CellState {
            c: starts.c.narrow(2, first, g.nc)?.contiguous()?,
            n: starts.n.narrow(2, first, g.nc)?.contiguous()?,
            m: starts.m.narrow(2, first, g.nc)?.contiguous()?,
        };
        hs.push(g.outputs(Some(&st), eps)?);
        first += g.nc;
    }
    let h = if hs.len() == 1 {
        hs.remove(0)
    } else {
        Tensor::cat(&hs, 2)?
    };
    Ok((h, last))
}

/// The parallel (quadratic) form: `h (B, NH, S, DHV)` and the last state.
///
/// Without `initial` the outputs are exactly `mlstm_kernels`'
/// `mlstm_parallel_fw` (stabilizer `max_s logD[t,s]`, no initial-state
/// term); with it, the whole sequence is one chunk of [`chunkwise`]. The
/// last state is the recurrence's (from zeros when `initial` is `None`).
/// Forms `(B, NH, S, S)` tensors: for short sequences and for testing.
pub fn parallel(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    igate_preact: &Tensor,
    fgate_preact: &Tensor,
    initial: Option<&CellState>,
    eps: f64,
) -> Result<(Tensor, CellState)> {
    let (d, init) = prepare(q, k, v, igate_preact, fgate_preact, initial)?;
    if d.s == 0 {
        return Ok((empty_output(&d, q)?, init));
    }
    let (k, v, i, f) = same_dtype(q, [k, v, igate_preact, fgate_preact])?;
    let logf = logsigmoid(&f)?;
    let chunk = Chunks::new(&d, q, &k, &v, &i, &logf, 0, 1, d.s)?;
    let (starts, last) = chunk_states(&chunk.summary()?, init)?;
    let h = chunk.outputs(initial.map(|_| &starts), eps)?;
    Ok((h, last))
}
