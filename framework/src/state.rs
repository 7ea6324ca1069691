//! Recurrent state carried between decoding steps.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::{Error, Result};

/// The state one mixer carries from one `step` to the next: named tensors
/// (a recurrent state, a convolution window, a KV cache) plus the number of
/// positions consumed so far.
///
/// `clone` is cheap and shares the tensors' buffers. Some mixers update their
/// buffers in place (attention writes its KV cache slot by slot), so a
/// snapshot to resume from later should be a [`MixerState::deep_clone`].
/// [`MixerState::save`] and [`MixerState::load`] persist a state to a
/// safetensors file.
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

    /// A copy that shares no buffer with `self`.
    pub fn deep_clone(&self) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (k, t) in &self.tensors {
            tensors.insert(k.clone(), t.copy()?);
        }
        Ok(Self {
            tensors,
            seqlen_offset: self.seqlen_offset,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn save_load_and_deep_clone() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let mut s = MixerState::new().with("h", t.clone());
        s.seqlen_offset = 7;
        let dir = std::env::temp_dir().join(format!("lrnnx-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.safetensors");
        s.save(&path).unwrap();
        let back = MixerState::load(&path, &dev).unwrap();
        assert_eq!(back.seqlen_offset, 7);
        assert_eq!(
            back.get("h").unwrap().to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        let e = back.get("k").unwrap_err().to_string();
        assert!(e.contains("`k`") && e.contains("\"h\""), "{e}");
        // A deep clone does not see in-place writes to the original.
        let snap = s.deep_clone().unwrap();
        s.get("h")
            .unwrap()
            .slice_set(&Tensor::zeros((2, 1), DType::F32, &dev).unwrap(), 1, 0)
            .unwrap();
        assert_eq!(snap.get("h").unwrap().to_vec2::<f32>().unwrap()[0][0], 1.0);
        assert_eq!(s.get("h").unwrap().to_vec2::<f32>().unwrap()[0][0], 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
