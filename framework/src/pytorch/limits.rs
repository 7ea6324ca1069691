//! The bounds the reader holds a `torch.save` archive to. Each is far above
//! what a real checkpoint needs and far below what would exhaust a machine;
//! a file past one is refused with an error naming the bound and the figure
//! found.

/// Largest `data.pkl` read (the pickle of a state dict takes about 200 bytes
/// per tensor: this is room for some 300 000 tensors).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Deepest nesting of tuples, lists and dicts in the pickle (`torch.save`
/// needs about 4).
pub const MAX_NESTING: usize = 64;

/// Most memo entries the pickle may define (`torch.save` defines a few per tensor).
pub const MAX_MEMO_ENTRIES: usize = 1 << 20;

/// Values the pickle may copy out of its memo, in all (each value counts its
/// nested values too), beyond [`MEMO_COPIES_PER_BYTE`] per pickle byte:
/// what bounds a memo that doubles a tuple again and again.
pub const MEMO_COPIES_BASE: u64 = 1 << 20;

/// Memo copies allowed per byte of pickle, on top of [`MEMO_COPIES_BASE`].
pub const MEMO_COPIES_PER_BYTE: u64 = 4;

/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 64;

/// Decompressed bytes read from the archive, in all, per byte of the file
/// (a `torch.save` archive stores its members uncompressed: 1).
pub const MAX_EXPANSION: u64 = 16;

/// Slack added to `file size × MAX_EXPANSION`, for tiny archives.
pub const EXPANSION_SLACK: u64 = 1 << 20;

/// Elements of all the tensors returned, in all, per element of storage read:
/// tensors may share a storage (tied embeddings, duplicated keys), but not
/// a thousand times over.
pub const MAX_VIEWS_PER_ELEMENT: u64 = 8;
