//! Recurrent state carried between decoding steps.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::{Error, Result};

/// The state one mixer carries from one `step` to the next: named tensors
/// (a recurrent state, a convolution window, a KV cache) plus the number of
/// positions consumed so far.
///
/// Cloning is cheap (tensors are reference-counted), so a caller can keep a
/// snapshot and resume from it later; [`MixerState::save`] and
/// [`MixerState::load`] persist one to a safetensors file.
#[derive(Debug, Clone, Default)]
pub struct MixerState {
    tensors: BTreeMap<String, Tensor>,
    /// Positions already consumed.
    pub seqlen_offset: usize,
}

impl MixerState {
    /// An empty state at position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the tensor `name`.
    pub fn with(mut self, name: &str, t: Tensor) -> Self {
        self.tensors.insert(name.to_string(), t);
        self
    }

    /// Replaces the tensor `name`.
    pub fn set(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// The tensor `name`, or an error naming it and what the state does hold.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Shape {
            what: "mixer state".into(),
            expected: format!("a tensor named `{name}`"),
            found: format!("{:?}", self.tensors.keys().collect::<Vec<_>>()),
        })
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Writes the state to a safetensors file (the offset goes in the metadata).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut tensors: BTreeMap<String, Tensor> = self.tensors.clone();
        tensors.insert(
            "__seqlen_offset".into(),
            Tensor::new(&[self.seqlen_offset as u32], &candle_core::Device::Cpu)?,
        );
        crate::io::write_safetensors(path, &tensors, None)
    }

    /// Reads a state written by [`MixerState::save`].
    pub fn load(path: &std::path::Path, device: &candle_core::Device) -> Result<Self> {
        let mut tensors: BTreeMap<String, Tensor> = crate::io::read_safetensors(path, device)?
            .into_iter()
            .collect();
        let offset = tensors
            .remove("__seqlen_offset")
            .ok_or_else(|| Error::file(path, "not a saved mixer state (no `__seqlen_offset`)"))?;
        let seqlen_offset = offset.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(Self {
            tensors,
            seqlen_offset,
        })
    }
}
