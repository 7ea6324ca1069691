//! The pickle machine: interprets the pickle of a `torch.save` archive into
//! (name, tensor reference) pairs, calling only the tensor-rebuilding globals.
//!
//! Built to take hostile input: every container records how deeply it nests
//! and how many values it holds, so nesting is refused past
//! [`MAX_NESTING`] (no clone, drop or message ever recurses deeper) and every
//! copy out of the memo is charged against a budget that grows with the
//! pickle's length (a memo that doubles a tuple sixty times runs out of it
//! after a few steps). The memo holds at most [`MAX_MEMO_ENTRIES`]. Errors
//! describe values in a few words and never print them whole.

use std::collections::HashMap;
use std::path::Path;

use super::bad;
use super::limits::{
    MAX_MEMO_ENTRIES, MAX_NESTING, MAX_RANK, MEMO_COPIES_BASE, MEMO_COPIES_PER_BYTE,
};
use super::value::{clip, Items, Measure, StorageKind, TensorRef, Value};
use crate::{Error, Result};

const ALLOWED_CALLS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

/// The machine's state: the input, the stack (with its MARK positions kept
/// apart, as Python's pickle keeps its metastack) and the memo.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for messages.
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values that may still be copied out of (or into) the memo.
    copies_left: u64,
    copies_allowed: u64,
    path: &'a Path,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], path: &'a Path) -> Self {
        let copies_allowed =
            MEMO_COPIES_BASE.saturating_add(MEMO_COPIES_PER_BYTE.saturating_mul(data.len() as u64));
        Self {
            data,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copies_left: copies_allowed,
            copies_allowed,
            path,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        bad(
            self.path,
            format!("{msg} (pickle opcode at byte {})", self.op_at),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "the pickle ends early: expected {n} more bytes, found {}",
                self.data.len() - self.pos
            )));
        };
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
        let Some(nl) = self.data[start..].iter().position(|&c| c == b'\n') else {
            return Err(self.err("expected a newline-terminated GLOBAL name, found the end"));
        };
        self.pos = start + nl + 1;
        Ok(String::from_utf8_lossy(&self.data[start..start + nl]).into_owned())
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("expected a UTF-8 string"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    /// The stack's length at the last MARK (0 without one).
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("expected a value on the pickle stack, found none"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err("expected a value on the pickle stack, found none"))
    }

    fn top(&self) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("expected a value on the pickle stack, found none"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.err("expected a value on the pickle stack, found none"))
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("expected a value on the pickle stack, found none"));
        }
        let (path, at) = (self.path, self.op_at);
        self.stack.last_mut().ok_or_else(|| {
            bad(
                path,
                format!(
                    "expected a value on the pickle stack, found none (pickle opcode at byte {at})"
                ),
            )
        })
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("expected a MARK before this opcode, found none"));
        };
        Ok(self.stack.split_off(m))
    }

    /// Charges a copy of `weight` values against the memo-copy budget.
    fn charge(&mut self, weight: u64) -> Result<()> {
        if weight > self.copies_left {
            return Err(self.err(format!(
                "expected the pickle to copy at most {} values through its memo (the limit for \
                 a pickle of {} bytes), found a copy of {weight} values past what was left",
                self.copies_allowed,
                self.data.len()
            )));
        }
        self.copies_left -= weight;
        Ok(())
    }

    /// BINPUT and friends: stores a copy of the top of the stack.
    fn memo_put(&mut self, k: u32) -> Result<()> {
        if self.memo.len() >= MAX_MEMO_ENTRIES && !self.memo.contains_key(&k) {
            return Err(self.err(format!(
                "expected at most {MAX_MEMO_ENTRIES} memo entries, found more"
            )));
        }
        let weight = self.top()?.weight();
        self.charge(weight)?;
        let v = self.top()?.clone();
        self.memo.insert(k, v);
        Ok(())
    }

    /// BINGET and friends: pushes a copy of a memo entry.
    fn memo_get(&mut self, k: u32) -> Result<()> {
        let weight = match self.memo.get(&k) {
            Some(v) => v.weight(),
            None => {
                return Err(self.err(format!("expected memo entry {k} to be defined, found none")))
            }
        };
        self.charge(weight)?;
        let v = self.memo[&k].clone();
        self.push(v);
        Ok(())
    }

    /// Builds a container from `items`, refusing nesting past [`MAX_NESTING`].
    fn seq(&self, items: Vec<Value>) -> Result<Items<Value>> {
        let mut out = Items::new();
        for v in items {
            out.push(v).map_err(|d| self.too_deep(d))?;
        }
        Ok(out)
    }

    fn too_deep(&self, depth: usize) -> Error {
        self.err(format!(
            "expected values nested at most {MAX_NESTING} deep, found {depth}"
        ))
    }
}

fn as_usize_list(m: &Machine, v: &Value, what: &str) -> Result<Vec<usize>> {
    let (Value::Tuple(items) | Value::List(items)) = v else {
        return Err(m.err(format!("{what}: expected a tuple, found {}", v.describe())));
    };
    if items.len() > MAX_RANK {
        return Err(m.err(format!(
            "{what}: expected at most {MAX_RANK} dimensions, found {}",
            items.len()
        )));
    }
    items
        .items
        .iter()
        .map(|i| match i {
            Value::Int(x) => usize::try_from(*x)
                .map_err(|_| m.err(format!("{what}: expected non-negative ints, found {x}"))),
            other => Err(m.err(format!(
                "{what}: expected non-negative ints, found {}",
                other.describe()
            ))),
        })
        .collect()
}

/// Calls one of the allowed callables.
fn call(m: &Machine, func: &str, args: Vec<Value>) -> Result<Value> {
    match func {
        "collections.OrderedDict" => Ok(Value::Dict(Items::new())),
        "torch._utils._rebuild_parameter" => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            Some(other) => Err(m.err(format!(
                "_rebuild_parameter: expected a tensor, found {}",
                other.describe()
            ))),
            None => Err(m.err("_rebuild_parameter: expected a tensor, found no argument")),
        },
        "torch._utils._rebuild_tensor_v2" => {
            let mut it = args.into_iter();
            let (storage, offset, size, stride) = (it.next(), it.next(), it.next(), it.next());
            let (
                Some(Value::Storage { kind, key, numel }),
                Some(Value::Int(offset)),
                Some(size),
                Some(stride),
            ) = (storage, offset, size, stride)
            else {
                return Err(m.err(
                    "_rebuild_tensor_v2: expected (storage, offset, size, stride, ...) arguments",
                ));
            };
            let offset = usize::try_from(offset).map_err(|_| {
                m.err(format!(
                    "_rebuild_tensor_v2: expected a storage offset >= 0, found {offset}"
                ))
            })?;
            let size = as_usize_list(m, &size, "tensor size")?;
            let stride = as_usize_list(m, &stride, "tensor stride")?;
            if size.len() != stride.len() {
                return Err(m.err(format!(
                    "_rebuild_tensor_v2: expected as many strides as dimensions, found {} \
                     dimensions and {} strides",
                    size.len(),
                    stride.len()
                )));
            }
            Ok(Value::Tensor(Box::new(TensorRef {
                kind,
                key,
                storage_numel: numel,
                offset,
                size,
                stride,
            })))
        }
        other => Err(m.err(format!("refusing to call `{}`", clip(other, 80)))),
    }
}

fn global(m: &Machine, module: &str, name: &str) -> Result<Value> {
    let full = format!("{module}.{name}");
    if ALLOWED_CALLS.contains(&full.as_str())
        || (module == "torch" && StorageKind::from_name(name).is_some())
    {
        Ok(Value::Global(full))
    } else {
        Err(m.err(format!(
            "the pickle references `{}`, which is not a tensor-rebuilding function; refused \
             (nothing was executed)",
            clip(&full, 120)
        )))
    }
}

fn persistent(m: &Machine, pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        return Err(m.err(format!(
            "expected a persistent id tuple, found {}",
            pid.describe()
        )));
    };
    match items.items.as_slice() {
        [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            let name = ty.rsplit('.').next().unwrap_or_default();
            let kind = StorageKind::from_name(name)
                .ok_or_else(|| m.err(format!("unknown storage type `{}`", clip(ty, 80))))?;
            let numel = usize::try_from(*numel).map_err(|_| {
                m.err(format!(
                    "storage `{}`: expected an element count >= 0, found {numel}",
                    clip(key, 40)
                ))
            })?;
            Ok(Value::Storage {
                kind,
                key: key.clone(),
                numel,
            })
        }
        _ => Err(m.err(
            "expected a persistent id ('storage', type, key, location, numel), found another tuple",
        )),
    }
}

/// Runs the pickle and returns the top-level dict as (name, tensor reference) pairs.
pub(super) fn interpret(data: &[u8], path: &Path) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine::new(data, path);
    loop {
        m.op_at = m.pos;
        let op = m.u8()?;
        match op {
            0x80 => {
                m.u8()?; // PROTO
            }
            0x95 => {
                m.take(8)?; // FRAME
            }
            b'.' => break,
            b'(' => m.marks.push(m.stack.len()),
            b')' => m.push(Value::Tuple(Items::new())),
            b']' => m.push(Value::List(Items::new())),
            b'}' => m.push(Value::Dict(Items::new())),
            b'N' => m.push(Value::None),
            0x88 => m.push(Value::Bool(true)),
            0x89 => m.push(Value::Bool(false)),
            b'K' => {
                let v = m.u8()?;
                m.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = m.u16()?;
                m.push(Value::Int(v as i64))
            }
            b'J' => {
                let v = m.u32()?;
                m.push(Value::Int(v as i32 as i64))
            }
            0x8a => {
                let n = m.u8()? as usize;
                if n > 8 {
                    return Err(m.err(format!(
                        "expected an integer of at most 8 bytes, found {n} bytes"
                    )));
                }
                let b = m.take(n)?;
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= (*byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                m.push(Value::Int(v));
            }
            b'G' => {
                let b = m.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                m.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let n = m.u32()? as usize;
                let s = m.string(n)?;
                m.push(Value::Str(s));
            }
            0x8c => {
                let n = m.u8()? as usize;
                let s = m.string(n)?;
                m.push(Value::Str(s));
            }
            b'c' => {
                let module = m.line()?;
                let name = m.line()?;
                let g = global(&m, &module, &name)?;
                m.push(g);
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err(m.err("STACK_GLOBAL: expected two strings"));
                };
                let g = global(&m, &module, &name)?;
                m.push(g);
            }
            b'q' => {
                let k = m.u8()? as u32;
                m.memo_put(k)?;
            }
            b'r' => {
                let k = m.u32()?;
                m.memo_put(k)?;
            }
            0x94 => {
                let k =
                    u32::try_from(m.memo.len()).map_err(|_| m.err("MEMOIZE: the memo is full"))?;
                m.memo_put(k)?;
            }
            b'h' => {
                let k = m.u8()? as u32;
                m.memo_get(k)?;
            }
            b'j' => {
                let k = m.u32()?;
                m.memo_get(k)?;
            }
            b't' => {
                let items = m.pop_mark()?;
                let t = m.seq(items)?;
                m.push(Value::Tuple(t));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if m.stack.len() < m.floor() + n {
                    return Err(m.err(format!(
                        "TUPLE{n}: expected {n} values on the stack, found {}",
                        m.stack.len() - m.floor()
                    )));
                }
                let items = m.stack.split_off(m.stack.len() - n);
                let t = m.seq(items)?;
                m.push(Value::Tuple(t));
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![m.pop()?]
                } else {
                    m.pop_mark()?
                };
                let failure = match m.top_mut() {
                    Ok(Value::List(l)) => items.into_iter().try_for_each(|v| l.push(v)).err(),
                    _ => return Err(m.err("APPEND(S): expected a list under the values")),
                };
                if let Some(d) = failure {
                    return Err(m.too_deep(d));
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = m.pop()?;
                    let k = m.pop()?;
                    vec![k, v]
                } else {
                    m.pop_mark()?
                };
                if items.len() % 2 != 0 {
                    return Err(m.err(format!(
                        "SETITEMS: expected key-value pairs, found {} values",
                        items.len()
                    )));
                }
                let failure = match m.top_mut() {
                    Ok(Value::Dict(d)) => {
                        let mut pairs = Vec::with_capacity(items.len() / 2);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        pairs.into_iter().try_for_each(|p| d.push(p)).err()
                    }
                    _ => return Err(m.err("SETITEM(S): expected a dict under the key-value pairs")),
                };
                if let Some(d) = failure {
                    return Err(m.too_deep(d));
                }
            }
            b'b' => {
                // BUILD: state for an object; dicts (OrderedDict metadata) ignore it.
                m.pop()?;
            }
            b'Q' => {
                let pid = m.pop()?;
                let v = persistent(&m, pid)?;
                m.push(v);
            }
            b'R' => {
                let args = m.pop()?;
                let func = m.pop()?;
                let Value::Global(name) = func else {
                    return Err(m.err(format!(
                        "REDUCE: expected an allowed callable, found {}",
                        func.describe()
                    )));
                };
                let Value::Tuple(args) = args else {
                    return Err(m.err(format!(
                        "REDUCE: expected an argument tuple, found {}",
                        args.describe()
                    )));
                };
                let v = call(&m, &name, args.items)?;
                m.push(v);
            }
            other => {
                return Err(m.err(format!("unsupported pickle opcode 0x{other:02x}")));
            }
        }
    }
    let top = m.pop()?;
    let Value::Dict(items) = top else {
        return Err(m.err(format!(
            "expected the pickle to hold a dict of tensors, found {}",
            top.describe()
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items.items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, *t)),
            (Value::Str(k), other) => {
                return Err(m.err(format!(
                    "entry `{}`: expected a tensor, found {}",
                    clip(&k, 80),
                    other.describe()
                )));
            }
            (k, _) => return Err(m.err(format!("expected string keys, found {}", k.describe()))),
        }
    }
    Ok(out)
}
