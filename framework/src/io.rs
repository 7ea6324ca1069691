//! Reading and writing files: safetensors and JSON, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory and
/// a rename, so that a crash never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, e));
    }
    Ok(())
}

/// Writes tensors (and optional string metadata) as safetensors, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        // safetensors wants contiguous CPU data; `View` handles the copy.
        owned.push((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes =
        safetensors::tensor::serialize(owned, metadata).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// A safetensors file read into memory: its tensors and metadata.
#[derive(Debug)]
pub struct SafetensorsFile {
    /// Tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// The `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

/// Reads a whole safetensors file; a truncated or malformed file is an error naming it.
pub fn read_safetensors_file(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    let data = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(SafetensorsFile {
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}

/// Reads the tensors of a safetensors file.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(read_safetensors_file(path, device)?.tensors)
}

/// Writes pretty JSON atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::file(path, e))?;
    write_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file; the error names the file, line and column.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("malformed JSON: {e}")))
}
