//! Plumbing shared by the gated real recurrences (RG-LRU, S7, minGRU): the
//! bookkeeping around one decoding step over tensors cached in the state.

use candle_core::Tensor;

use crate::{check_step_input, match_step_rank, MixerState, Result};

/// One decoding position: checks that `x` is `(B, width)` or `(B, 1, width)`
/// (named `what` in the error), runs `f` on the `(B, width)` input and the
/// state, stores the cache tensors `f` returns under their names, counts the
/// position, and returns `f`'s output `(B, width)` in `x`'s dtype and rank.
pub fn step_cached<const K: usize>(
    x: &Tensor,
    width: usize,
    what: &str,
    state: &mut MixerState,
    f: impl FnOnce(&Tensor, &MixerState) -> Result<(Tensor, [(&'static str, Tensor); K])>,
) -> Result<Tensor> {
    let x2 = check_step_input(x, width, what)?;
    let (y, cache) = f(&x2, state)?;
    for (name, t) in cache {
        state.set(name, t);
    }
    state.seqlen_offset += 1;
    match_step_rank(y.to_dtype(x.dtype())?, x)
}
