//! The right fingerprint but no registration entry.

/// The host's own fingerprint.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static lrnnx_plugin_fingerprint: [u8; lrnnx_framework::plugin::FINGERPRINT_C_LEN] =
    lrnnx_framework::plugin::FINGERPRINT_C;
