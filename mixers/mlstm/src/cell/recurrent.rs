//! The recurrent form: one position at a time.

use candle_core::{Tensor, D};
use lrnnx_framework::{Error, Result};

use super::{empty_output, logsigmoid, prepare, CellState, Dims};

/// One step of the recurrence (`mlstm_kernels`' `mlstm_recurrent_step__native_fw`).
///
/// `q, k (B, NH, DHQK)`, `v (B, NH, DHV)`, gate pre-activations `i, f (B, NH)`;
/// returns `h (B, NH, DHV)` and the new state. Differentiable.
pub fn step(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    igate_preact: &Tensor,
    fgate_preact: &Tensor,
    state: &CellState,
    eps: f64,
) -> Result<(Tensor, CellState)> {
    let (b, nh, dqk) = match q.dims() {
        &[b, nh, d] if d > 0 => (b, nh, d),
        d => {
            return Err(Error::shape(
                "mLSTM step q",
                "(batch, heads, head dim > 0)",
                d,
            ))
        }
    };
    let dv = match v.dims() {
        &[vb, vh, dv] if (vb, vh) == (b, nh) => dv,
        d => {
            return Err(Error::shape(
                "mLSTM step v",
                format!("({b}, {nh}, head dim)"),
                d,
            ))
        }
    };
    if k.dims() != q.dims() {
        return Err(Error::shape(
            "mLSTM step k",
            format!("the shape of q, {:?}", q.dims()),
            k.dims(),
        ));
    }
    for (t, name) in [
        (igate_preact, "igate_preact"),
        (fgate_preact, "fgate_preact"),
    ] {
        if t.dims() != [b, nh] {
            return Err(Error::shape(
                format!("mLSTM step {name}"),
                format!("({b}, {nh})"),
                t.dims(),
            ));
        }
    }
    let dims = Dims {
        b,
        nh,
        s: 1,
        dqk,
        dv,
    };
    let dt = q.dtype();
    let st = state.checked(&dims, dt)?;
    let (k, v) = (k.to_dtype(dt)?, v.to_dtype(dt)?);
    let i = igate_preact.to_dtype(dt)?;
    let logf = logsigmoid(&fgate_preact.to_dtype(dt)?)?;
    let carried = (logf + &st.m)?;
    let m = carried.maximum(&i)?;
    let keep = (carried - &m)?.exp()?.unsqueeze(2)?; // (B, NH, 1)
    let add = (i - &m)?.exp()?.unsqueeze(2)?;
    let kv = k.unsqueeze(3)?.broadcast_mul(&v.unsqueeze(2)?)?; // (B, NH, DHQK, DHV)
    let c = (st.c.broadcast_mul(&keep.unsqueeze(3)?)? + kv.broadcast_mul(&add.unsqueeze(3)?)?)?;
    let n = (st.n.broadcast_mul(&keep)? + k.broadcast_mul(&add)?)?;
    let qs = (q * (1.0 / (dqk as f64).sqrt()))?;
    let num = qs.unsqueeze(2)?.matmul(&c)?.squeeze(2)?; // (B, NH, DHV)
    let qn = (&qs * &n)?.sum_keepdim(D::Minus1)?; // (B, NH, 1)
    let floor = m.neg()?.exp()?.unsqueeze(2)?;
    let denom = (qn.abs()?.maximum(&floor)? + eps)?;
    let h = num.broadcast_div(&denom)?;
    Ok((h, CellState { c, n, m }))
}

/// The recurrence over a whole sequence (`mlstm_kernels`'
/// `mlstm_recurrent_sequence__native_fw`): `h (B, NH, S, DHV)` and the last
/// state, from `initial` or zeros. A loop of [`step`]s: the slow reference
/// form (for decoding use [`step`], for sequences [`super::chunkwise`]).
pub fn recurrent_sequence(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    igate_preact: &Tensor,
    fgate_preact: &Tensor,
    initial: Option<&CellState>,
    eps: f64,
) -> Result<(Tensor, CellState)> {
    let (d, mut state) = prepare(q, k, v, igate_preact, fgate_preact, initial)?;
    if d.s == 0 {
        return Ok((empty_output(&d, q)?, state));
    }
    let mut hs = Vec::with_capacity(d.s);
    for t in 0..d.s {
        let at = |x: &Tensor| -> Result<Tensor> { Ok(x.narrow(2, t, 1)?.squeeze(2)?) };
        let (h, next) = step(
            &at(q)?,
            &at(k)?,
            &at(v)?,
            &at(igate_preact)?,
            &at(fgate_preact)?,
            &state,
            eps,
        )?;
        hs.push(h);
        state = next;
    }
    Ok((Tensor::stack(&hs, 2)?, state))
}
