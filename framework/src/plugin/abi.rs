//! What the host and a plugin share: the ABI fingerprint, the exported
//! symbols' names and types, the status codes and the [`Registrar`].

use std::ffi::c_char;
use std::path::Path;

use crate::{MixerSpec, Result};

/// What a plugin must have been built with to be loaded by this host (see the module docs).
pub const ABI_FINGERPRINT: &str = env!("LRNNX_ABI_FINGERPRINT");

/// `rustc -V` of the compiler that built this framework.
pub const RUSTC_VERSION: &str = env!("LRNNX_RUSTC_VERSION");

/// Name of the fingerprint symbol a plugin exports.
pub const FINGERPRINT_SYMBOL: &str = "lrnnx_plugin_fingerprint";

/// Name of the registration entry a plugin exports.
pub const ENTRY_SYMBOL: &str = "lrnnx_plugin_v1";

/// The environment variable searched at start-up: plugin files or directories,
/// Length of [`FINGERPRINT_C`], the trailing NUL included.
#[doc(hidden)]
pub const FINGERPRINT_C_LEN: usize = ABI_FINGERPRINT.len() + 1;

/// [`ABI_FINGERPRINT`] as a NUL-terminated byte array (the exported symbol's value).
#[doc(hidden)]
pub const FINGERPRINT_C: [u8; FINGERPRINT_C_LEN] = {
    let src = ABI_FINGERPRINT.as_bytes();
    let mut out = [0u8; FINGERPRINT_C_LEN];
    let mut i = 0;
    while i < src.len() {
        out[i] = src[i];
        i += 1;
    }
    out
};

/// Longest fingerprint the host reads before giving up on finding its NUL.
pub(super) const MAX_FINGERPRINT: usize = 4096;

/// What a plugin's registration function receives from the host.
pub trait Registrar {
    /// Registers a mixer. Refuses ([`Error::DuplicateMixer`]) a name or alias
    /// that is already registered. Nothing is registered unless the whole
    /// registration function succeeds.
    fn add(&mut self, spec: MixerSpec) -> Result<()>;

    /// The path the plugin was loaded from.
    fn plugin_path(&self) -> &Path;
}

/// The signature of a plugin's registration function, as passed to [`export_plugin!`](crate::export_plugin).
pub type RegisterFn = fn(&mut dyn Registrar) -> Result<()>;

/// Registration succeeded.
pub const STATUS_OK: u32 = 0;
/// The registration function returned an error.
pub const STATUS_ERROR: u32 = 1;
/// The registration function panicked.
pub const STATUS_PANIC: u32 = 2;

/// What the entry returns: a status code and, unless it is [`STATUS_OK`], a
/// message (a `CString` allocated by the plugin, owned by the host after the call).
#[repr(C)]
#[derive(Debug)]
pub struct PluginStatus {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub code: u32,
    /// NUL-terminated message, or null.
    pub message: *mut c_char,
}

/// The entry's type. A Rust trait object passes through `extern "C"`: see the module docs.
#[allow(improper_ctypes_definitions)]
pub type PluginEntry = unsafe extern "C" fn(host: &mut dyn Registrar) -> PluginStatus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_names_compiler_versions_and_features() {
        assert!(ABI_FINGERPRINT.starts_with("lrnnx-plugin-abi v2; lrnnx-framework "));
        assert!(ABI_FINGERPRINT.contains(RUSTC_VERSION), "{ABI_FINGERPRINT}");
        assert!(RUSTC_VERSION.starts_with("rustc "), "{RUSTC_VERSION}");
        assert!(
            ABI_FINGERPRINT.contains("candle-core 0."),
            "{ABI_FINGERPRINT}"
        );
        assert_eq!(
            ABI_FINGERPRINT.contains("features [cuda]"),
            cfg!(feature = "cuda")
        );
        assert_eq!(
            &FINGERPRINT_C[..ABI_FINGERPRINT.len()],
            ABI_FINGERPRINT.as_bytes()
        );
        assert_eq!(FINGERPRINT_C[ABI_FINGERPRINT.len()], 0);
    }
}
