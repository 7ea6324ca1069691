//! # lrnnx-s4d
//!
//! The `S4D` mixer (work in progress: not registered yet).

/// The registered name.
pub const NAME: &str = "S4D";

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
