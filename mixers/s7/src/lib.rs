//! # lrnnx-s7
//!
//! The `S7` mixer (work in progress: not registered yet).

/// The registered name.
pub const NAME: &str = "S7";

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
