//! Reading a `torch.save` archive: the zip members, the pickle (through
//! [`super::pickle`]) and the tensors rebuilt from their storages.
//!
//! Built to take hostile input (see [`super::limits`]): only a regular file
//! is opened; every member is read up to a bound, and all of them together up
//! to [`MAX_EXPANSION`] times the file's size; a storage must hold exactly the
//! bytes its persistent id declares; every size, stride and offset is checked
//! with overflow-safe arithmetic against the storage actually present, so a
//! tensor never has more elements than its storage, and all tensors together
//! at most [`MAX_VIEWS_PER_ELEMENT`] times the elements read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::bad;
use super::limits::{EXPANSION_SLACK, MAX_EXPANSION, MAX_PICKLE_BYTES, MAX_VIEWS_PER_ELEMENT};
use super::pickle::interpret;
use super::value::{StorageKind, TensorRef};
use crate::Result;

/// The zip archive, with the running total of bytes read from it.
struct Archive<'a> {
    zip: zip::ZipArchive<File>,
    path: &'a Path,
    read_so_far: u64,
    read_limit: u64,
    file_len: u64,
}

impl<'a> Archive<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let (file, file_len) = crate::io::open_regular_file(path)?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| bad(path, format!("not a zip archive ({e})")))?;
        Ok(Self {
            zip,
            path,
            read_so_far: 0,
            read_limit: file_len
                .saturating_mul(MAX_EXPANSION)
                .saturating_add(EXPANSION_SLACK),
            file_len,
        })
    }

    /// The name of the archive's `data.pkl` (under the archive's folder).
    fn pickle_name(&self) -> Result<String> {
        self.zip
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(|n| n.into_owned())
            .ok_or_else(|| bad(self.path, "expected a data.pkl in the archive, found none"))
    }

    /// Reads the member `name` (`what` it is, for messages), refusing one of more than `max` bytes.
    fn read_member(&mut self, name: &str, max: u64, what: &str) -> Result<Vec<u8>> {
        let path = self.path;
        let left = self.read_limit.saturating_sub(self.read_so_far);
        let (read_so_far, read_limit, file_len) =
            (self.read_so_far, self.read_limit, self.file_len);
        let mut f = self.zip.by_name(name).map_err(|e| {
            bad(
                path,
                format!("expected the archive entry {name} ({what}), found none ({e})"),
            )
        })?;
        let declared = f.size();
        if declared > max {
            return Err(bad(
                path,
                format!("archive entry {name} ({what}): expected at most {max} bytes, found {declared} declared"),
            ));
        }
        if declared > left {
            return Err(bad(
                path,
                format!(
                    "archive entry {name} ({what}) declares {declared} bytes, which would bring the \
                     bytes read to {} after {read_so_far}; expected at most {read_limit} from a file \
                     of {file_len} bytes",
                    read_so_far.saturating_add(declared)
                ),
            ));
        }
        let cap = max.min(left);
        let mut buf = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        (&mut f)
            .take(cap.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| bad(path, format!("cannot read archive entry {name} ({e})")))?;
        let got = buf.len() as u64;
        if got > cap {
            return Err(bad(
                path,
                format!(
                    "archive entry {name} ({what}): expected at most {cap} bytes, found more \
                     (it declared {declared})"
                ),
            ));
        }
        self.read_so_far = self.read_so_far.saturating_add(got);
        Ok(buf)
    }
}

/// A storage read from the archive, as its first tensor declared it.
struct Storage {
    kind: StorageKind,
    numel: usize,
    bytes: Vec<u8>,
}

/// The number of elements of `t`, refused on overflow.
fn element_count(t: &TensorRef, name: &str, path: &Path) -> Result<usize> {
    t.size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "`{name}`: the size {:?} has more elements than fit in memory",
                    t.size
                ),
            )
        })
}

/// The storage offsets of `t`'s elements in row-major order over its size.
/// Callers check first that the last one is inside the storage: every
/// running offset is then at most that one, and no step can overflow.
fn element_offsets(t: &TensorRef, numel: usize) -> impl Iterator<Item = usize> + '_ {
    let rank = t.size.len();
    let mut pos = vec![0usize; rank];
    let mut off = t.offset;
    (0..numel).map(move |_| {
        let cur = off;
        for d in (0..rank).rev() {
            if pos[d] + 1 < t.size[d] {
                pos[d] += 1;
                off += t.stride[d];
                break;
            }
            off -= pos[d] * t.stride[d];
            pos[d] = 0;
        }
        cur
    })
}

/// Checks that every element of `t` lies inside a storage of `storage_elems`
/// elements and that `t` has no more elements than it; returns the count.
fn check_view(t: &TensorRef, storage_elems: usize, name: &str, path: &Path) -> Result<usize> {
    let numel = element_count(t, name, path)?;
    if numel == 0 {
        return Ok(0);
    }
    let view = || {
        format!(
            "`{name}` (size {:?}, stride {:?}, offset {})",
            t.size, t.stride, t.offset
        )
    };
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        });
    let Some(last) = last else {
        return Err(bad(
            path,
            format!("{}: its last element's offset overflows", view()),
        ));
    };
    if last >= storage_elems {
        return Err(bad(
            path,
            format!(
                "{} reaches element {last} of storage {}; expected it to stay within the \
                 {storage_elems} elements it holds",
                view(),
                t.key
            ),
        ));
    }
    if numel > storage_elems {
        return Err(bad(
            path,
            format!(
                "{} has {numel} elements; expected at most the {storage_elems} of its storage {} \
                 (views that repeat elements, such as stride 0, are refused)",
                view(),
                t.key
            ),
        ));
    }
    Ok(numel)
}

/// Decodes the elements of `t` (checked by [`check_view`], `numel` of them)
/// into f32/f64/i64 values, gathering with strides.
fn build_tensor(t: &TensorRef, numel: usize, bytes: &[u8], device: &Device) -> Result<Tensor> {
    let esz = t.kind.size();
    let offsets = || element_offsets(t, numel);
    let at = |i: usize, w: usize| &bytes[i * esz + w..i * esz + w + esz.min(8)];
    let f32s = |sub: usize| -> Vec<f32> {
        offsets()
            .map(|i| {
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
            for i in offsets() {
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
            let v: Vec<f32> = offsets()
                .map(|i| {
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
            let v: Vec<i64> = offsets()
                .map(|i| {
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
///
/// A hostile or broken file is an error naming what was expected and what
/// was found, never a panic or an unbounded allocation (see the module docs).
pub fn read_state_dict(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut archive = Archive::open(path)?;
    let pkl_name = archive.pickle_name()?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pickle = archive.read_member(&pkl_name, MAX_PICKLE_BYTES, "the pickle")?;
    let entries = interpret(&pickle, path)?;
    drop(pickle);
    let mut storages: HashMap<String, Storage> = HashMap::new();
    let mut storage_elems: u64 = 0;
    let mut tensor_elems: u64 = 0;
    let mut out = HashMap::new();
    for (name, t) in entries {
        if !storages.contains_key(&t.key) {
            let esz = t.kind.size();
            let expected = t.numel_bytes().ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "storage {} declares {} elements of {esz} bytes, more bytes than fit in memory",
                        t.key, t.storage_numel
                    ),
                )
            })?;
            let member = format!("{prefix}data/{}", t.key);
            let bytes = archive.read_member(&member, expected, "a tensor storage")?;
            if bytes.len() as u64 != expected {
                return Err(bad(
                    path,
                    format!(
                        "storage {}: expected {expected} bytes ({} elements of {esz} bytes), found {}",
                        t.key,
                        t.storage_numel,
                        bytes.len()
                    ),
                ));
            }
            storage_elems = storage_elems.saturating_add(t.storage_numel as u64);
            let s = Storage {
                kind: t.kind,
                numel: t.storage_numel,
                bytes,
            };
            storages.insert(t.key.clone(), s);
        }
        let Some(storage) = storages.get(&t.key) else {
            return Err(bad(path, format!("storage {} vanished", t.key)));
        };
        if storage.kind != t.kind || storage.numel != t.storage_numel {
            return Err(bad(
                path,
                format!(
                    "`{name}`: storage {} is declared as {} elements of type {:?} here but as {} \
                     of type {:?} before; expected one declaration",
                    t.key, t.storage_numel, t.kind, storage.numel, storage.kind
                ),
            ));
        }
        let numel = check_view(&t, storage.numel, &name, path)?;
        tensor_elems = tensor_elems.saturating_add(numel as u64);
        let allowed = storage_elems.saturating_mul(MAX_VIEWS_PER_ELEMENT);
        if tensor_elems > allowed {
            return Err(bad(
                path,
                format!(
                    "the tensors up to `{name}` have {tensor_elems} elements in all; expected at \
                     most {MAX_VIEWS_PER_ELEMENT} times the {storage_elems} elements of the \
                     storages read ({allowed})"
                ),
            ));
        }
        let tensor = build_tensor(&t, numel, &storage.bytes, device)?;
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
                let values = |t: &Tensor| -> Vec<f64> {
                    let t = t.to_dtype(candle_core::DType::F64).unwrap();
                    t.flatten_all().unwrap().to_vec1().unwrap()
                };
                assert_eq!(values(o), values(t), "{case} {name}");
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
