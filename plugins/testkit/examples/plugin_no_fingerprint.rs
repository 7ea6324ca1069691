//! A shared library that is not an lrnnx plugin: no fingerprint, no entry.

/// Some unrelated export.
#[unsafe(no_mangle)]
pub extern "C" fn unrelated_symbol() -> i32 {
    42
}
