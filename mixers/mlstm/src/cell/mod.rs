//! The mLSTM cell (Beck et al. 2024, "xLSTM") in three forms that agree:
//!
//! - [`step`] / [`recurrent_sequence`]: the recurrence, one position at a time;
//! - [`parallel`]: the quadratic, attention-like form over the whole sequence;
//! - [`chunkwise`]: parallel within chunks, recurrent across them (linear in
//!   the sequence length), the form the layer trains and prefills with.
//!
//! Shapes: `q, k (B, NH, S, DHQK)`, `v (B, NH, S, DHV)`, gate pre-activations
//! `i, f (B, NH, S)`; outputs `h (B, NH, S, DHV)`. The state is
//! [`CellState`]: `C (B, NH, DHQK, DHV)`, `n (B, NH, DHQK)`, `m (B, NH)`.
//!
//! The math is that of `mlstm_kernels` (its native PyTorch forward
//! functions), with `q` scaled by `DHQK^-1/2`, an exponential input gate, a
//! log-sigmoid forget gate and the max-state stabilizer `m`:
//!
//! ```text
//! m_t = max(logsig(f_t) + m_{t-1}, i_t)
//! C_t = exp(logsig(f_t) + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T
//! n_t = exp(logsig(f_t) + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t
//! h_t = (q_t/sqrt(DHQK))^T C_t / (max(|(q_t/sqrt(DHQK))^T n_t|, exp(-m_t)) + eps)
//! ```
//!
//! [`chunkwise`] and [`recurrent_sequence`] compute exactly this (the same
//! stabilizer, so the same outputs up to rounding). [`parallel`] without an
//! initial state is `mlstm_kernels`' parallel form, whose stabilizer has no
//! `m_0 = 0` term. Since `h_t = N_t / (max(|D_t|, 1) + eps exp(m_t))` with
//! `N_t`, `D_t` the unstabilized numerator and denominator, the stabilizer
//! only enters through `eps`: the forms differ by eps-sized amounts there.

mod chunked;
mod recurrent;

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{Error, Result};

pub use chunked::{chunkwise, parallel};
pub use recurrent::{recurrent_sequence, step};

/// `eps` of the reference: added to the denominator.
pub const DEFAULT_EPS: f64 = 1e-6;

/// The recurrent state of the cell: memory `c (B, NH, DHQK, DHV)`,
/// normalizer `n (B, NH, DHQK)` and stabilizer `m (B, NH)`.
///
/// Stored as `mlstm_kernels` stores it: `c = sum exp(..) k v^T` with the
/// unscaled keys (the `DHQK^-1/2` scale is applied to the queries).
#[derive(Debug, Clone)]
pub struct CellState {
    /// Memory `(B, NH, DHQK, DHV)`.
    pub c: Tensor,
    /// Normalizer `(B, NH, DHQK)`.
    pub n: Tensor,
    /// Max-state stabilizer `(B, NH)`.
    pub m: Tensor,
}

impl CellState {
    /// The state before any input: zeros (with `m = 0`, as the reference).
    pub fn zeros(
        b: usize,
        nh: usize,
        dqk: usize,
        dv: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            c: Tensor::zeros((b, nh, dqk, dv), dtype, device)?,
            n: Tensor::zeros((b, nh, dqk), dtype, device)?,
            m: Tensor::zeros((b, nh), dtype, device)?,
        })
    }

    /// Checks the shapes against the inputs' and casts to `dtype`.
    pub(crate) fn checked(&self, d: &Dims, dtype: DType) -> Result<Self> {
        let want = |t: &Tensor, name: &str, shape: &[usize]| -> Result<Tensor> {
            if t.dims() != shape {
                return Err(Error::shape(
                    format!("mLSTM cell state `{name}`"),
                    format!("{shape:?}"),
                    t.dims(),
                ));
            }
            Ok(t.to_dtype(dtype)?)
        };
        Ok(Self {
            c: want(&self.c, "c", &[d.b, d.nh, d.dqk, d.dv])?,
            n: want(&self.n, "n", &[d.b, d.nh, d.dqk])?,
            m: want(&self.m, "m", &[d.b, d.nh])?,
        })
    }
}

/// Checks the inputs; returns their sizes and the initial state (zeros unless given).
pub(crate) fn prepare(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    i: &Tensor,
    f: &Tensor,
    initial: Option<&CellState>,
) -> Result<(Dims, CellState)> {
    let d = sequence_dims(q, k, v, i, f)?;
    let dtype = q.dtype();
    let init = match initial {
        Some(s) => s.checked(&d, dtype)?,
        None => CellState::zeros(d.b, d.nh, d.dqk, d.dv, dtype, q.device())?,
    };
    Ok((d, init))
}

/// The outputs `h (B, NH, 0, DHV)` of an empty sequence.
pub(crate) fn empty_output(d: &Dims, q: &Tensor) -> Result<Tensor> {
    Ok(Tensor::zeros((d.b, d.nh, 0, d.dv), q.dtype(), q.device())?)
}

/// Sizes of one cell call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub nh: usize,
    pub s: usize,
    pub dqk: usize,
    pub dv: usize,
}

/// Checks `q, k (B, NH, S, DHQK)`, `v (B, NH, S, DHV)`, `i, f (B, NH, S)`.
pub(crate) fn sequence_dims(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    i: &Tensor,
    f: &Tensor,
) -> Result<Dims> {
    let (b, nh, s, dqk) = match q.dims() {
        &[b, nh, s, d] if d > 0 => (b, nh, s, d),
        d => {
            return Err(Error::shape(
                "mLSTM cell q",
                "(batch, heads, seqlen, head dim > 0)",
                d,
            ))
        }
    };
    if k.dims() != q.dims() {
        return Err(Error::shape(
            "mLSTM cell k",
            format!("the shape of q, {:?}", q.dims()),
            k.dims(),
        ));
    }
    let dv = match v.dims() {
        &[vb, vh, vs, dv] if (vb, vh, vs) == (b, nh, s) => dv,
        d => {
            return Err(Error::shape(
                "mLSTM cell v",
                format!("({b}, {nh}, {s}, head dim)"),
                d,
            ))
        }
    };
    for (t, name) in [(i, "igate_preact"), (f, "fgate_preact")] {
        if t.dims() != [b, nh, s] {
            return Err(Error::shape(
                format!("mLSTM cell {name}"),
                format!("({b}, {nh}, {s})"),
                t.dims(),
            ));
        }
    }
    Ok(Dims { b, nh, s, dqk, dv })
}

/// `log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))`, stable for all `x`.
pub(crate) fn logsigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.minimum(0.0)? - tail)?)
}
