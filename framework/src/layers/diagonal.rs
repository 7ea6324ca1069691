//! Plumbing shared by the diagonal state space mixers (LRU, S5, Centaurus):
//! the discrete system in the scan's split layout, kept in a decoding state,
//! and the state bookkeeping that ends a prefill or a step.

use candle_core::{Device, Tensor};

use crate::{match_step_rank, MixerState, Result};

/// A complex diagonal system in the scan's split layout (`N` states, width `H`).
#[derive(Debug, Clone)]
pub struct SplitSystem {
    /// `(2N)`: the discrete eigenvalues, real parts then imaginary parts.
    pub lambda: Tensor,
    /// `(2N, H)`: the discrete input map, real rows then imaginary rows.
    pub w_in: Tensor,
    /// `(H, 2N)`: `[C_re, -C_im]`, so that `Re(C h) = w_out h_split`.
    pub w_out: Tensor,
}

impl SplitSystem {
    /// The system kept in `state` by [`SplitSystem::stored_in`].
    pub fn from_state(state: &MixerState) -> Result<Self> {
        Ok(Self {
            lambda: state.get("lambda")?.clone(),
            w_in: state.get("w_in")?.clone(),
            w_out: state.get("w_out")?.clone(),
        })
    }

    /// `state` with this system added (as `lambda`, `w_in`, `w_out`) on `device`.
    pub fn stored_in(&self, state: MixerState, device: &Device) -> Result<MixerState> {
        Ok(state
            .with("lambda", self.lambda.to_device(device)?)
            .with("w_in", self.w_in.to_device(device)?)
            .with("w_out", self.w_out.to_device(device)?))
    }
}

/// Ends a prefill over `l` positions whose states are `h (B, L, ..)`: the
/// last one becomes the state's `"h"` (none when `l` is 0) and the positions
/// are counted.
pub fn keep_last_state(state: &mut MixerState, h: &Tensor, l: usize) -> Result<()> {
    if l > 0 {
        state.set("h", h.narrow(1, l - 1, 1)?.squeeze(1)?);
    }
    state.seqlen_offset += l;
    Ok(())
}

/// Ends a step on `x` (`(B, H)` or `(B, 1, H)`) that gave the output
/// `y (B, 1, H)` and the state `h (B, 1, ..)`: `h` becomes the state's `"h"`,
/// the position is counted, and `y` comes back in `x`'s dtype and rank.
pub fn finish_step(state: &mut MixerState, y: &Tensor, h: &Tensor, x: &Tensor) -> Result<Tensor> {
    state.set("h", h.squeeze(1)?);
    state.seqlen_offset += 1;
    match_step_rank(y.squeeze(1)?.to_dtype(x.dtype())?, x)
}

/// How a linear time-invariant diagonal SSM runs its forward pass (a kwarg
/// of ours, `forward_mode`; it changes no result, only the algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// The mixer picks per call (by length and device).
    #[default]
    Auto,
    /// The recurrence as a parallel scan over the state.
    Scan,
    /// The causal convolution with the state kernel, through FFTs.
    Conv,
}
