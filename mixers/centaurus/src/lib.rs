//! # lrnnx-centaurus
//!
//! The `Centaurus` mixer (work in progress: not registered yet).

/// The registered name.
pub const NAME: &str = "Centaurus";

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
