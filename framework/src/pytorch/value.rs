//! The values the pickle machine works on: storages, tensor references and
//! containers that know how deeply they nest and how many values they hold
//! (so nesting is bounded as it is built, and a copy's cost is known before
//! it is made).

use super::limits::MAX_NESTING;

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
    pub(super) fn from_name(name: &str) -> Option<Self> {
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

/// How deeply a value nests and how many values it holds (itself included).
pub(super) trait Measure {
    fn depth(&self) -> usize;
    fn weight(&self) -> u64;
}

/// A container's items, with its nesting depth and weight kept up to date.
#[derive(Debug, Clone)]
pub(super) struct Items<T> {
    pub(super) items: Vec<T>,
    depth: usize,
    weight: u64,
}

impl<T: Measure> Items<T> {
    pub(super) fn new() -> Self {
        Self {
            items: Vec::new(),
            depth: 1,
            weight: 1,
        }
    }

    /// Adds an item; `Err(depth)` when the container would nest deeper than [`MAX_NESTING`].
    pub(super) fn push(&mut self, item: T) -> std::result::Result<(), usize> {
        let depth = item.depth().saturating_add(1);
        if depth > MAX_NESTING {
            return Err(depth);
        }
        self.depth = self.depth.max(depth);
        self.weight = self.weight.saturating_add(item.weight());
        self.items.push(item);
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }
}

/// A value on the pickle machine's stack.
#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Items<Value>),
    List(Items<Value>),
    Dict(Items<(Value, Value)>),
    /// An allowed callable or storage type, by qualified name.
    Global(String),
    Storage {
        kind: StorageKind,
        key: String,
        /// Elements the persistent id says the storage holds.
        numel: usize,
    },
    Tensor(Box<TensorRef>),
}

impl Measure for Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(i) | Value::List(i) => i.depth,
            Value::Dict(i) => i.depth,
            _ => 0,
        }
    }

    fn weight(&self) -> u64 {
        match self {
            Value::Tuple(i) | Value::List(i) => i.weight,
            Value::Dict(i) => i.weight,
            _ => 1,
        }
    }
}

impl Measure for (Value, Value) {
    fn depth(&self) -> usize {
        self.0.depth().max(self.1.depth())
    }

    fn weight(&self) -> u64 {
        self.0.weight().saturating_add(self.1.weight())
    }
}

/// At most `max` characters of `s`, marked when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

impl Value {
    /// A few words naming the value, for messages (never the whole value).
    pub(super) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) => format!("the string {:?}", clip(s, 40)),
            Value::Tuple(i) => format!("a tuple of {} items", i.len()),
            Value::List(i) => format!("a list of {} items", i.len()),
            Value::Dict(i) => format!("a dict of {} entries", i.len()),
            Value::Global(g) => format!("the global `{}`", clip(g, 80)),
            Value::Storage { key, .. } => format!("storage `{}`", clip(key, 40)),
            Value::Tensor(t) => format!("a tensor of storage `{}`", clip(&t.key, 40)),
        }
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone)]
pub(super) struct TensorRef {
    pub(super) kind: StorageKind,
    /// The storage's name in the archive (`data/<key>`).
    pub(super) key: String,
    /// Elements the storage holds, as its persistent id says.
    pub(super) storage_numel: usize,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

impl TensorRef {
    /// Bytes the storage holds, as its persistent id declares (`None` on overflow).
    pub(super) fn numel_bytes(&self) -> Option<u64> {
        self.storage_numel
            .checked_mul(self.kind.size())
            .and_then(|b| u64::try_from(b).ok())
    }
}
