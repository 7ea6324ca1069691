//! Writing tensors as a `torch.save` archive.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Writes tensors as a PyTorch `state_dict` file that `torch.load` reads
/// (zip archive, pickle protocol 2, one storage per tensor), atomically.
/// f32/f64/i64 tensors are supported; others are converted to f32.
pub fn write_state_dict(
    path: &Path,
    tensors: &std::collections::BTreeMap<String, Tensor>,
) -> Result<()> {
    use std::io::Write;
    let archive = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("archive")
        .to_string();
    let mut pickle = PickleWriter::default();
    pickle.header();
    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let (kind, bytes) = match t.dtype() {
            candle_core::DType::F64 => (
                "DoubleStorage",
                t.flatten_all()?
                    .to_vec1::<f64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            candle_core::DType::I64 => (
                "LongStorage",
                t.flatten_all()?
                    .to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            _ => (
                "FloatStorage",
                t.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        };
        let key = i.to_string();
        pickle.tensor(name, kind, &key, t.elem_count(), t.dims());
        storages.push((key, bytes));
    }
    pickle.footer();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut add = |name: String, data: &[u8]| -> Result<()> {
            z.start_file(name, opts).map_err(|e| Error::file(path, e))?;
            z.write_all(data).map_err(|e| Error::file(path, e))
        };
        add(format!("{archive}/data.pkl"), &pickle.out)?;
        add(format!("{archive}/byteorder"), b"little")?;
        for (key, bytes) in &storages {
            add(format!("{archive}/data/{key}"), bytes)?;
        }
        add(format!("{archive}/version"), b"3\n")?;
        z.finish().map_err(|e| Error::file(path, e))?;
    }
    crate::io::write_atomic(path, &buf.into_inner())
}

/// Emits the pickle opcodes `torch.save` uses for a state dict.
#[derive(Default)]
struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }
    /// BININT (a signed 4-byte int) when `v` fits, else LONG1 with 8 bytes:
    /// element counts and strides past 2^31 stay positive.
    fn int(&mut self, v: usize) {
        match i32::try_from(v) {
            Ok(small) => {
                self.out.push(b'J');
                self.out.extend(small.to_le_bytes());
            }
            Err(_) => {
                self.out.extend([0x8a, 8]);
                self.out.extend((v as u64).to_le_bytes());
            }
        }
    }
    fn tuple(&mut self, items: &[usize]) {
        self.out.push(b'(');
        for &i in items {
            self.int(i);
        }
        self.out.push(b't');
    }
    fn header(&mut self) {
        self.out.extend([0x80, 2]);
        self.global("collections", "OrderedDict");
        self.out.extend([b')', b'R', b'(']);
    }
    fn tensor(&mut self, name: &str, kind: &str, key: &str, numel: usize, dims: &[usize]) {
        self.str(name);
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.extend([b'(', b'(']);
        self.str("storage");
        self.global("torch", kind);
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.out.extend([b't', b'Q']);
        self.int(0);
        self.tuple(dims);
        let mut strides = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * dims[d + 1];
        }
        self.tuple(&strides);
        self.out.push(0x89);
        self.global("collections", "OrderedDict");
        self.out.extend([b')', b'R', b't', b'R']);
    }
    fn footer(&mut self) {
        self.out.extend([b'u', b'.']);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pytorch::read_state_dict;

    #[test]
    fn ints_past_i32_are_written_as_positive_longs() {
        let mut p = PickleWriter::default();
        p.int(5);
        p.int(1 << 31);
        assert_eq!(&p.out[..5], &[b'J', 5, 0, 0, 0]);
        let mut long = vec![0x8a, 8];
        long.extend((1u64 << 31).to_le_bytes());
        assert_eq!(&p.out[5..], long.as_slice());
    }

    #[test]
    fn written_state_dicts_read_back_exactly() {
        let dev = Device::Cpu;
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap(),
        );
        m.insert(
            "b".to_string(),
            Tensor::new(&[7i64], &dev).unwrap().reshape(()).unwrap(),
        );
        m.insert("c".to_string(), Tensor::randn(0f64, 1.0, 4, &dev).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        write_state_dict(&path, &m).unwrap();
        let back = read_state_dict(&path, &dev).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(
            back["a.weight"].to_vec2::<f32>().unwrap(),
            m["a.weight"].to_vec2::<f32>().unwrap()
        );
        assert_eq!(back["b"].to_scalar::<i64>().unwrap(), 7);
        assert_eq!(
            back["c"].to_vec1::<f64>().unwrap(),
            m["c"].to_vec1::<f64>().unwrap()
        );
    }
}
