//! Reading a `torch.save` archive: the zip members, the pickle (through
//! [`super::pickle`]) and the tensors rebuilt from their storages.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::bad;
use super::pickle::{interpret, StorageKind, TensorRef};
use crate::{Error, Result};

/// Decodes `count` elements of a storage's bytes into f32/f64/i64 values, gathering with strides.
fn build_tensor(
    t: &TensorRef,
    bytes: &[u8],
    name: &str,
    path: &Path,
    device: &Device,
) -> Result<Tensor> {
    let numel: usize = t.size.iter().product();
    if t.stride.len() != t.size.len() {
        return Err(bad(path, format!("`{name}`: size and stride ranks differ")));
    }
    // Element indices in storage order (row-major over `size`).
    let mut idx = Vec::with_capacity(numel);
    let mut pos = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let off: usize = t.offset + pos.iter().zip(&t.stride).map(|(p, s)| p * s).sum::<usize>();
        idx.push(off);
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < t.size[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let esz = t.kind.size();
    if let Some(&max) = idx.iter().max() {
        if (max + 1) * esz > bytes.len() {
            return Err(bad(
                path,
                format!(
                    "`{name}` needs {} bytes of storage {} but it has {}",
                    (max + 1) * esz,
                    t.key,
                    bytes.len()
                ),
            ));
        }
    }
    let at = |i: usize, w: usize| &bytes[i * esz + w..i * esz + w + esz.min(8)];
    let f32s = |sub: usize| -> Vec<f32> {
        idx.iter()
            .map(|&i| {
                let b = &bytes[i * esz + sub * 4..i * esz + sub * 4 + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect()
    };
    let shape = t.size.clone();
    let tensor = match t.kind {
        StorageKind::F32 => Tensor::from_vec(f32s(0), shape, device)?,
        StorageKind::C64 => {
            let (re, im) = (f32s(0), f32s(1));
            let inter: Vec<f32> = re.into_iter().zip(im).flat_map(|(a, b)| [a, b]).collect();
            let mut s = shape;
            s.push(2);
            Tensor::from_vec(inter, s, device)?
        }
        StorageKind::F64 | StorageKind::C128 => {
            let parts = if t.kind == StorageKind::C128 { 2 } else { 1 };
            let mut v = Vec::with_capacity(numel * parts);
            for &i in &idx {
                for p in 0..parts {
                    let b = &bytes[i * esz + p * 8..i * esz + p * 8 + 8];
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    v.push(f64::from_le_bytes(a));
                }
            }
            let mut s = shape;
            if parts == 2 {
                s.push(2);
            }
            Tensor::from_vec(v, s, device)?
        }
        StorageKind::F16 | StorageKind::BF16 => {
            let v: Vec<f32> = idx
                .iter()
                .map(|&i| {
                    let b = [bytes[i * 2], bytes[i * 2 + 1]];
                    if t.kind == StorageKind::F16 {
                        half_to_f32(u16::from_le_bytes(b))
                    } else {
                        f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
                    }
                })
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
        StorageKind::I64
        | StorageKind::I32
        | StorageKind::I16
        | StorageKind::I8
        | StorageKind::U8
        | StorageKind::Bool => {
            let v: Vec<i64> = idx
                .iter()
                .map(|&i| {
                    let b = at(i, 0);
                    match t.kind {
                        StorageKind::I64 => {
                            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                        }
                        StorageKind::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                        StorageKind::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
                        StorageKind::I8 => b[0] as i8 as i64,
                        _ => b[0] as i64,
                    }
                })
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
    };
    Ok(tensor)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalise.
            let mut e = -14;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((f & 0x3ff) << 13)
        }
        31 => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | (((exp - 15 + 127) as u32) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Reads every tensor of a `pytorch_model.bin` written by `torch.save(state_dict)`.
/// Float tensors are returned as f32 (f64 as f64), integer buffers as i64,
/// complex ones as `(..., 2)` real tensors.
pub fn read_state_dict(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| bad(path, format!("not a zip archive ({e})")))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| {
            zip.by_index(i)
                .ok()
                .and_then(|f| f.name().ok().map(|n| n.to_string()))
        })
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let read = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| bad(path, format!("missing archive entry {name} ({e})")))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| bad(path, format!("cannot read archive entry {name} ({e})")))?;
        Ok(buf)
    };
    let pickle = read(&mut zip, &pkl_name)?;
    let entries = interpret(&pickle, path)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    for (name, t) in entries {
        if !storages.contains_key(&t.key) {
            let bytes = read(&mut zip, &format!("{prefix}data/{}", t.key))?;
            storages.insert(t.key.clone(), bytes);
        }
        let tensor = build_tensor(&t, &storages[&t.key], &name, path, device)?;
        out.insert(name, tensor);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn checkpoints() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/lrnnx/checkpoints")
    }

    #[test]
    fn reads_lrnnx_checkpoints_like_candles_reader_and_complex_storages_too() {
        for case in [
            "lrnnx_lm_small",
            "lrnnx_lm_small_untied",
            "lrnnx_lm_small_kwargs",
        ] {
            let path = checkpoints().join(case).join("pytorch_model.bin");
            let ours = read_state_dict(&path, &Device::Cpu).unwrap();
            let theirs = candle_core::pickle::read_all(&path).unwrap();
            for (name, t) in &theirs {
                let o = &ours[name];
                assert_eq!(o.dims(), t.dims(), "{case} {name}");
                let d = (o.to_dtype(candle_core::DType::F64).unwrap()
                    - t.to_dtype(candle_core::DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
                assert_eq!(d, 0.0, "{case} {name}");
            }
            if case == "lrnnx_lm_small_kwargs" {
                // candle skips the ComplexFloatStorage; we read it as (N, M, 2).
                assert_eq!(ours.len(), theirs.len() + 1);
                let a = &ours["backbone.layers.3.mixer.A"];
                assert_eq!(a.dims(), &[8, 4, 2]);
                let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // lrnnx inits the imaginary parts to m*pi/M (then noise was added):
                // averaged over n they still increase with m. Real and imaginary
                // parts read in the wrong order would not.
                let mean_im: Vec<f32> = (0..4)
                    .map(|m| (0..8).map(|n| v[(n * 4 + m) * 2 + 1]).sum::<f32>() / 8.0)
                    .collect();
                assert!(mean_im.windows(2).all(|w| w[0] < w[1]), "{mean_im:?}");
            } else {
                assert_eq!(ours.len(), theirs.len());
            }
        }
    }

    fn zip_with_pickle(pickle: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pickle).unwrap();
        z.finish().unwrap();
        f
    }

    #[test]
    fn refuses_pickles_that_call_anything_else() {
        // PROTO 2; GLOBAL os.system; "echo pwned"; TUPLE1; REDUCE; STOP
        let mut p = vec![0x80, 2];
        p.extend(b"cos\nsystem\n");
        p.push(b'X');
        p.extend((10u32).to_le_bytes());
        p.extend(b"echo pwned");
        p.extend([0x85, b'R', b'.']);
        let f = zip_with_pickle(&p);
        let e = read_state_dict(f.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("os.system") && e.contains("refused"), "{e}");
    }

    #[test]
    fn truncated_or_foreign_files_are_named() {
        let src = checkpoints().join("lrnnx_lm_small/pytorch_model.bin");
        let bytes = std::fs::read(&src).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &bytes[..bytes.len() / 3]).unwrap();
        let e = read_state_dict(f.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&f.path().display().to_string()) && e.contains("PyTorch"),
            "{e}"
        );
        std::fs::write(f.path(), b"plain text").unwrap();
        let e = read_state_dict(f.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a zip archive"), "{e}");
    }
}
