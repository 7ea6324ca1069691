//! Reading and writing files: safetensors and JSON, written atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, FileType, Metadata};
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Largest JSON file read (a model config takes a few kilobytes).
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// Largest safetensors file read into memory.
pub const MAX_SAFETENSORS_BYTES: u64 = 64 << 30;

/// What a file type is, for messages.
fn describe_file_type(ft: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "something other than a regular file"
    }
}

fn check_regular(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(Error::file(
            path,
            format!(
                "expected a regular file, found {}",
                describe_file_type(meta.file_type())
            ),
        ))
    }
}

/// Opens `path` for reading once its metadata says it is a regular file
/// (a FIFO would block, a device never end), and checks the opened file
/// again (the path may have changed in between). Returns the file and its
/// length in bytes.
pub fn open_regular_file(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    check_regular(path, &meta)?;
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let meta = file.metadata().map_err(|e| Error::file(path, e))?;
    check_regular(path, &meta)?;
    Ok((file, meta.len()))
}

/// Reads a whole regular file (see [`open_regular_file`]) of at most `max`
/// bytes; `what` names it in the error ("a JSON file").
pub fn read_regular_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular_file(path)?;
    if len > max {
        return Err(Error::file(
            path,
            format!("expected {what} of at most {max} bytes, found {len} bytes"),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::file(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::file(
            path,
            format!(
                "expected {what} of at most {max} bytes, found it growing past that while read"
            ),
        ));
    }
    Ok(buf)
}

/// Writes `bytes` to `path` through a fresh temporary file in the same
/// directory (random name, created exclusively: a planted file or symlink of
/// that name is never followed), fsynced, then renamed over `path` and the
/// directory fsynced, so that a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path))
        .and_then(|_| File::open(dir)?.sync_all());
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
    write_safetensors_with_complex(path, tensors, &BTreeSet::new(), metadata)
}

/// [`write_safetensors`], writing the `(..., 2)` tensors named in `complex`
/// (real and imaginary parts) as complex64 tensors of shape `(...)`, as
/// PyTorch's `save_file` writes a `torch.complex64` tensor.
pub fn write_safetensors_with_complex(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    complex: &BTreeSet<String>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        // safetensors wants contiguous CPU data.
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let entry = if complex.contains(k) {
            RawTensor::complex64(k, &t)?
        } else {
            RawTensor {
                dtype: safetensors::View::dtype(&t),
                shape: t.dims().to_vec(),
                data: safetensors::View::data(&t).into_owned(),
            }
        };
        owned.push((k.clone(), entry));
    }
    let bytes =
        safetensors::tensor::serialize(owned, metadata).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// A tensor's bytes as safetensors stores them.
struct RawTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    /// `t (..., 2)` as one complex64 tensor `(...)` of interleaved f32 parts.
    fn complex64(key: &str, t: &Tensor) -> Result<Self> {
        let dims = t.dims();
        if dims.last() != Some(&2) {
            return Err(Error::Config(format!(
                "complex parameter `{key}`: expected real and imaginary parts in a last dim of 2, found shape {dims:?}"
            )));
        }
        let parts = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            dtype: safetensors::Dtype::C64,
            shape: dims[..dims.len() - 1].to_vec(),
            data: parts.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }
}

impl safetensors::View for RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A complex64 tensor `(...)` read as f32 real/imaginary pairs `(..., 2)`,
/// the layout complex parameters have here.
fn complex64_as_pairs(
    view: &safetensors::tensor::TensorView<'_>,
    device: &Device,
) -> Result<Tensor> {
    let parts: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut shape = view.shape().to_vec();
    shape.push(2);
    Ok(Tensor::from_vec(parts, shape, device)?)
}

/// A safetensors file read into memory: its tensors and metadata.
#[derive(Debug)]
pub struct SafetensorsFile {
    /// Tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// The `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

/// Reads a whole safetensors file; a truncated or malformed file is an error
/// naming it, and so is one that is not a regular file or is larger than
/// [`MAX_SAFETENSORS_BYTES`].
pub fn read_safetensors_file(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    read_safetensors_file_bounded(path, device, MAX_SAFETENSORS_BYTES, "a safetensors file")
}

/// [`read_safetensors_file`] for a file of at most `max` bytes; `what`
/// names it in the error ("a saved decoding state").
pub fn read_safetensors_file_bounded(
    path: &Path,
    device: &Device,
    max: u64,
    what: &str,
) -> Result<SafetensorsFile> {
    let data = read_regular_file(path, max, what)?;
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = if view.dtype() == safetensors::Dtype::C64 {
            complex64_as_pairs(&view, device)
        } else {
            candle_core::safetensors::Load::load(&view, device).map_err(Into::into)
        }
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

/// Reads and parses a JSON file (a regular file of at most [`MAX_JSON_BYTES`]);
/// the error names the file, line and column.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = read_regular_file(path, MAX_JSON_BYTES, "a JSON file")?;
    serde_json::from_slice(&bytes).map_err(|e| Error::file(path, format!("malformed JSON: {e}")))
}
