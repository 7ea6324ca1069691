//! Reading PyTorch `state_dict` files (`torch.save` zip + pickle) without Python.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Reads every tensor of a `pytorch_model.bin`. Nothing in the file is
/// executed: candle's reader only rebuilds tensors from their storages.
pub fn read_state_dict(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let entries = candle_core::pickle::read_all(path)
        .map_err(|e| Error::file(path, format!("cannot read PyTorch checkpoint: {e}")))?;
    let mut map = HashMap::new();
    for (name, t) in entries {
        map.insert(name, t.to_device(device)?);
    }
    Ok(map)
}
