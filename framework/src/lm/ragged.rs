//! Prefill of a padded batch whose sequences have different lengths: each
//! length's sequences are prefilled together at their own length and the
//! per-sequence states and last logits put back in batch order, so that
//! every sequence's state is the one a prefill of it alone would give.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::{LRNNLMHeadModel, LmState};
use crate::{Error, Family, Mixer, MixerState, Result};

/// The valid lengths `(B,)` or `(1,)` (any integer dtype) as `B` counts in `1..=l`.
pub(crate) fn lengths_of(lengths: &Tensor, b: usize, l: usize) -> Result<Vec<usize>> {
    let n = match lengths.dims() {
        [n] if *n == b || *n == 1 => *n,
        d => return Err(Error::shape("lengths", format!("({b},) or (1,)"), d)),
    };
    let v = lengths.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some(bad) = v.iter().find(|&&x| x < 1 || x as usize > l) {
        return Err(Error::shape(
            "lengths",
            format!("lengths in 1..={l} (the prompt's length)"),
            format!("length {bad} in {v:?}"),
        ));
    }
    let v: Vec<usize> = v.into_iter().map(|x| x as usize).collect();
    Ok(if n == 1 { vec![v[0]; b] } else { v })
}

/// For each tensor of `mixer`'s state, the axis that runs over the batch
/// (`None`: shared by the batch, such as a cached weight), told apart by
/// fresh states of batch 1 and 2.
fn batch_axes(
    i: usize,
    mixer: &dyn Mixer,
    dtype: DType,
    dev: &Device,
) -> Result<BTreeMap<String, Option<usize>>> {
    let (one, two) = (
        mixer.init_state(1, 1, dtype, dev)?,
        mixer.init_state(2, 1, dtype, dev)?,
    );
    let mut axes = BTreeMap::new();
    for (name, t1) in one.tensors() {
        let (d1, d2) = (t1.dims(), two.get(name)?.dims());
        let differ: Vec<usize> = (0..d1.len().min(d2.len()))
            .filter(|&k| d1[k] != d2[k])
            .collect();
        let axis = match differ.as_slice() {
            [] if d1.len() == d2.len() => None,
            [k] if d1.len() == d2.len() && d1[*k] == 1 && d2[*k] == 2 => Some(*k),
            _ => {
                return Err(Error::Config(format!(
                "prefill with lengths: layer {i} ({}) state tensor `{name}` has no single batch \
                     axis (shapes {d1:?} at batch 1, {d2:?} at batch 2)",
                mixer.name()
            )))
            }
        };
        axes.insert(name.clone(), axis);
    }
    Ok(axes)
}

fn select(
    st: &MixerState,
    axes: &BTreeMap<String, Option<usize>>,
    idx: &Tensor,
) -> Result<MixerState> {
    let mut out = MixerState::new();
    out.seqlen_offset = st.seqlen_offset;
    for (name, t) in st.tensors() {
        let t = match axes.get(name).copied().flatten() {
            Some(k) => t.index_select(idx, k)?,
            None => t.clone(),
        };
        out.set(name, t);
    }
    Ok(out)
}

impl LRNNLMHeadModel {
    /// [`LRNNLMHeadModel::prefill`] of a batch with unequal `lens`.
    pub(super) fn prefill_ragged(
        &self,
        input_ids: &Tensor,
        state: &mut LmState,
        timesteps: Option<&Tensor>,
        lens: &[usize],
    ) -> Result<Tensor> {
        if let Some((i, layer)) = self
            .layers()
            .iter()
            .enumerate()
            .find(|(_, l)| l.mixer.family() == Family::Attention)
        {
            return Err(Error::Config(format!(
                "prefill with unequal lengths {lens:?}: layer {i} ({}) keeps one position for the \
                 whole batch in its KV cache; prefill sequences of different lengths separately",
                layer.mixer.name()
            )));
        }
        let dev = self.device().clone();
        let dtype = self.precision().compute;
        let axes = self
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| batch_axes(i, l.mixer.as_ref(), dtype, &dev))
            .collect::<Result<Vec<_>>>()?;
        let mut groups: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (b, &n) in lens.iter().enumerate() {
            groups.entry(n).or_default().push(b as u32);
        }
        // Batch row of each concatenated group row, and back.
        let order: Vec<u32> = groups.values().flatten().copied().collect();
        let mut inverse = vec![0u32; order.len()];
        for (pos, &b) in order.iter().enumerate() {
            inverse[b as usize] = pos as u32;
        }
        let inverse = Tensor::new(inverse.as_slice(), &dev)?;
        let mut logits = Vec::with_capacity(groups.len());
        let mut parts: Vec<LmState> = Vec::with_capacity(groups.len());
        for (&n, rows) in &groups {
            let idx = Tensor::new(rows.as_slice(), &dev)?;
            let ids = input_ids.index_select(&idx, 0)?.narrow(1, 0, n)?;
            let ts = match timesteps {
                Some(t) => Some(t.index_select(&idx, 0)?.narrow(1, 0, n)?),
                None => None,
            };
            let mut sub = LmState {
                layers: state
                    .layers
                    .iter()
                    .zip(&axes)
                    .map(|(s, a)| select(s, a, &idx))
                    .collect::<Result<Vec<_>>>()?,
                seqlen_offset: state.seqlen_offset,
                mixers: state.mixers.clone(),
                dtype: state.dtype,
            };
            logits.push(self.prefill_full(&ids, &mut sub, ts)?);
            parts.push(sub);
        }
        for (i, (layer, a)) in state.layers.iter_mut().zip(&axes).enumerate() {
            let mut merged = MixerState::new();
            merged.seqlen_offset = parts
                .iter()
                .map(|p| p.layers[i].seqlen_offset)
                .max()
                .unwrap_or(layer.seqlen_offset);
            for name in parts[0].layers[i].tensors().keys() {
                let pieces = parts
                    .iter()
                    .map(|p| p.layers[i].get(name).cloned())
                    .collect::<Result<Vec<_>>>()?;
                let t = match a.get(name).copied() {
                    Some(Some(k)) => Tensor::cat(&pieces, k)?.index_select(&inverse, k)?,
                    Some(None) => pieces[0].clone(),
                    None => {
                        return Err(Error::Config(format!(
                            "prefill with lengths: layer {i} ({}) made a state tensor `{name}` its \
                             fresh state does not have",
                            self.layers()[i].mixer.name()
                        )))
                    }
                };
                merged.set(name, t);
            }
            *layer = merged;
        }
        state.seqlen_offset += lens.iter().copied().max().unwrap_or(0);
        Ok(Tensor::cat(&logits, 0)?.index_select(&inverse, 0)?)
    }
}
