//! Reading PyTorch `state_dict` files (`torch.save`: a zip archive holding a
//! pickle plus one file per storage) without Python and without executing
//! anything from the file.
//!
//! The pickle is interpreted by a small stack machine that knows only the
//! opcodes `torch.save` emits and only the globals that rebuild tensors
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the `torch.*Storage` types). Any other
//! global is refused before anything is built. Complex storages
//! (`ComplexFloatStorage`) come back as real tensors with a trailing
//! dimension of 2 (PyTorch's `view_as_real` layout), which is how lrnnx
//! models hold complex parameters here. Tensors sharing a storage (tied
//! embeddings, S4D's duplicated keys) are read from it once per key.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StorageKind {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    C64,
    C128,
}

impl StorageKind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            "ComplexFloatStorage" => Self::C64,
            "ComplexDoubleStorage" => Self::C128,
            _ => return None,
        })
    }

    /// Bytes per element (a complex element counts as one).
    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 | Self::C64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
            Self::C128 => 16,
        }
    }
}

// Scalar payloads are only ever shown in error messages (through Debug).
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed callable or storage type, by qualified name.
    Global(String),
    Storage {
        kind: StorageKind,
        key: String,
    },
    Tensor(TensorRef),
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    kind: StorageKind,
    key: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

const ALLOWED_CALLS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("not a readable PyTorch state dict: {msg}"))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| bad(self.path, "pickle ends early"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        let nl = self.data[start..]
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad(self.path, "unterminated GLOBAL"))?;
        self.pos = start + nl + 1;
        Ok(String::from_utf8_lossy(&self.data[start..start + nl]).into_owned())
    }
    fn string(&mut self, n: usize) -> Result<String> {
        let path = self.path;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(path, "string is not UTF-8"))
    }
}

fn as_usize_list(v: &Value, path: &Path, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(x) if *x >= 0 => Ok(*x as usize),
                other => Err(bad(
                    path,
                    format!("{what}: expected non-negative ints, found {other:?}"),
                )),
            })
            .collect(),
        other => Err(bad(
            path,
            format!("{what}: expected a tuple, found {other:?}"),
        )),
    }
}

/// Calls one of the allowed callables.
fn call(func: &str, args: Vec<Value>, path: &Path) -> Result<Value> {
    match func {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_parameter" => args
            .into_iter()
            .next()
            .ok_or_else(|| bad(path, "_rebuild_parameter without a tensor")),
        "torch._utils._rebuild_tensor_v2" => {
            let mut it = args.into_iter();
            let (storage, offset, size, stride) = (it.next(), it.next(), it.next(), it.next());
            let (
                Some(Value::Storage { kind, key }),
                Some(Value::Int(offset)),
                Some(size),
                Some(stride),
            ) = (storage, offset, size, stride)
            else {
                return Err(bad(path, "_rebuild_tensor_v2 with unexpected arguments"));
            };
            Ok(Value::Tensor(TensorRef {
                kind,
                key,
                offset: offset.max(0) as usize,
                size: as_usize_list(&size, path, "tensor size")?,
                stride: as_usize_list(&stride, path, "tensor stride")?,
            }))
        }
        other => Err(bad(path, format!("refusing to call `{other}`"))),
    }
}

/// Runs the pickle and returns the top-level dict as (name, tensor reference) pairs.
fn interpret(data: &[u8], path: &Path) -> Result<Vec<(String, TensorRef)>> {
    let mut r = Reader { data, pos: 0, path };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| bad(path, "pickle stack underflow"))
    };
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let m = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| bad(path, "MARK missing"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => break,
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(bad(path, "integer too large"));
                }
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= (*byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(global(&module, &name, path)?);
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                let (Value::Str(m), Value::Str(n)) = (module, name) else {
                    return Err(bad(path, "STACK_GLOBAL needs two strings"));
                };
                stack.push(global(&m, &n, path)?);
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad(path, "BINPUT on empty stack"))?,
                );
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad(path, "LONG_BINPUT on empty stack"))?,
                );
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad(path, "MEMOIZE on empty stack"))?,
                );
            }
            b'h' => {
                let k = r.u8()? as u32;
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad(path, "BINGET of unknown memo"))?,
                );
            }
            b'j' => {
                let k = r.u32()?;
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad(path, "LONG_BINGET of unknown memo"))?,
                );
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(bad(path, "pickle stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(bad(path, "APPEND to a non-list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(bad(path, "APPENDS to a non-list")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(bad(path, "SETITEM(S) on a non-dict")),
                }
            }
            b'b' => {
                // BUILD: state for an object; dicts (OrderedDict metadata) ignore it.
                pop(&mut stack)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(pid, path)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let Value::Global(name) = func else {
                    return Err(bad(
                        path,
                        "REDUCE on something that is not an allowed callable",
                    ));
                };
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => return Err(bad(path, "REDUCE arguments are not a tuple")),
                };
                stack.push(call(&name, args, path)?);
            }
            other => {
                return Err(bad(
                    path,
                    format!("unsupported pickle opcode 0x{other:02x}"),
                ))
            }
        }
    }
    let top = stack.pop().ok_or_else(|| bad(path, "empty pickle"))?;
    let Value::Dict(items) = top else {
        return Err(bad(path, "the pickle does not hold a dict of tensors"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, t)),
            (Value::Str(k), other) => {
                return Err(bad(
                    path,
                    format!("entry `{k}` is not a tensor ({other:?})"),
                ));
            }
            (k, _) => return Err(bad(path, format!("a key that is not a string: {k:?}"))),
        }
    }
    Ok(out)
}

fn global(module: &str, name: &str, path: &Path) -> Result<Value> {
    let full = format!("{module}.{name}");
    if ALLOWED_CALLS.contains(&full.as_str())
        || (module == "torch" && StorageKind::from_name(name).is_some())
    {
        Ok(Value::Global(full))
    } else {
        Err(bad(
            path,
            format!("the pickle references `{full}`, which is not a tensor-rebuilding function; refused (nothing was executed)"),
        ))
    }
}

fn persistent(pid: Value, path: &Path) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        return Err(bad(path, "persistent id is not a tuple"));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, _numel]
            if tag == "storage" =>
        {
            let name = ty.rsplit('.').next().unwrap_or_default();
            let kind = StorageKind::from_name(name)
                .ok_or_else(|| bad(path, format!("unknown storage type {ty}")))?;
            Ok(Value::Storage {
                kind,
                key: key.clone(),
            })
        }
        _ => Err(bad(path, "persistent id is not a storage reference")),
    }
}

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
    fn int(&mut self, v: usize) {
        self.out.push(b'J');
        self.out.extend((v as u32).to_le_bytes());
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
mod writer_tests {
    use super::*;

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
