//! The decoding state: KV cache writes (growing on demand) and the conv's
//! input history, kept in the state's own dtype and checked against the
//! input's device and shape.

use candle_core::Tensor;
use lrnnx_framework::{Error, MixerState, Result};

/// Checks that the state tensor `cache` (named `what`) can take `new`: the
/// same device and the same sizes on every axis but the time axis 1 or 2.
fn check(cache: &Tensor, new: &Tensor, time_axis: usize, what: &str) -> Result<()> {
    let mut want = new.dims().to_vec();
    let mut found = cache.dims().to_vec();
    let same_device = cache.device().same_device(new.device());
    if want.len() == found.len() && time_axis < want.len() {
        want[time_axis] = 0;
        found[time_axis] = 0;
    }
    if same_device && want == found {
        return Ok(());
    }
    let sizes = |d: &[usize]| {
        d.iter()
            .enumerate()
            .map(|(i, n)| {
                if i == time_axis {
                    "..".into()
                } else {
                    n.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::Shape {
        what: format!("attention decoding state `{what}`"),
        expected: format!("({}) on {:?}", sizes(new.dims()), new.device().location()),
        found: format!(
            "({}) on {:?}",
            sizes(cache.dims()),
            cache.device().location()
        ),
    })
}

/// Writes `k`, `v (B, hkv, n, d)` at position `offset` into the caches
/// `"k"`, `"v" (B, hkv, capacity, d)`, cast to their dtype, growing them
/// (doubling) if they are too short.
pub(crate) fn write(state: &mut MixerState, k: &Tensor, v: &Tensor, offset: usize) -> Result<()> {
    let n = k.dim(2)?;
    for (name, new) in [("k", k), ("v", v)] {
        let mut cache = state.get(name)?.clone();
        check(&cache, new, 2, name)?;
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
        cache.slice_set(&new.to_dtype(cache.dtype())?.contiguous()?, 2, offset)?;
        state.set(name, cache);
    }
    Ok(())
}

/// The conv's history `"conv" (B, W-1, C)` before `qkv (B, L, C)`, which it
/// returns; the state keeps the last `W-1` rows of both, in its dtype.
pub(crate) fn push_history(state: &mut MixerState, qkv: &Tensor) -> Result<Tensor> {
    let hist = state.get("conv")?.clone();
    check(&hist, qkv, 1, "conv")?;
    let w = hist.dim(1)?;
    let all = Tensor::cat(&[&hist, &qkv.to_dtype(hist.dtype())?], 1)?;
    state.set("conv", all.narrow(1, all.dim(1)? - w, w)?);
    Ok(hist)
}
