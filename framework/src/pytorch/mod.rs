//! Reading and writing PyTorch `state_dict` files (`torch.save`: a zip
//! archive holding a pickle plus one file per storage) without Python and
//! without executing anything from the file.
//!
//! The pickle is interpreted by a small stack machine ([`pickle`]) that knows
//! only the opcodes `torch.save` emits and only the globals that rebuild
//! tensors (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the `torch.*Storage` types). Any
//! other global is refused before anything is built. Complex storages
//! (`ComplexFloatStorage`) come back as real tensors with a trailing
//! dimension of 2 (PyTorch's `view_as_real` layout), which is how lrnnx
//! models hold complex parameters here. Tensors sharing a storage (tied
//! embeddings, S4D's duplicated keys) are read from it once per key.
//!
//! - [`read_state_dict`] (`read.rs`): the zip archive and the tensor rebuild.
//!   Hostile files (a few hundred bytes asking for terabytes, nesting two
//!   million deep, offsets near 2^63, FIFOs in place of files) are refused
//!   with an error: [`limits`] lists the bounds.
//! - [`write_state_dict`] (`write.rs`): the writer `torch.load` reads.

use std::path::Path;

use crate::Error;

pub mod limits;
mod pickle;
mod read;
mod value;
mod write;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod hostile_tests;

pub use read::read_state_dict;
pub use write::write_state_dict;

/// An error naming the file as an unreadable state dict.
fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("not a readable PyTorch state dict: {msg}"))
}
