//! The pickle machine: interprets the pickle of a `torch.save` archive into
//! (name, tensor reference) pairs, calling only the tensor-rebuilding globals.

use std::collections::HashMap;
use std::path::Path;

use super::bad;
use crate::Result;

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum StorageKind {
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
    pub(super) fn size(self) -> usize {
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
pub(super) enum Value {
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
pub(super) struct TensorRef {
    pub(super) kind: StorageKind,
    pub(super) key: String,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

const ALLOWED_CALLS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

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
pub(super) fn interpret(data: &[u8], path: &Path) -> Result<Vec<(String, TensorRef)>> {
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
