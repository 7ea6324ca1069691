//! # lrnnx-s5
//!
//! The `S5` mixer (work in progress: not registered yet).

/// The registered name.
pub const NAME: &str = "S5";

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
