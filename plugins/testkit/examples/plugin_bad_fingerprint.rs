//! A plugin built "by another compiler": its fingerprint differs from the
//! host's, so the host must refuse it without calling its entry (which would
//! abort the process).

use lrnnx_framework::plugin::{PluginStatus, Registrar};

const FAKE: &[u8] = b"lrnnx-plugin-abi v1; lrnnx-framework 0.1.0; rustc 1.0.0 (a59807616 2015-05-15); \
candle-core 0.11.1; target x86_64-unknown-linux-gnu; panic unwind; debug-assertions on; features []\0";

/// The (wrong) fingerprint.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static lrnnx_plugin_fingerprint: [u8; FAKE.len()] = {
    let mut out = [0u8; FAKE.len()];
    let mut i = 0;
    while i < FAKE.len() {
        out[i] = FAKE[i];
        i += 1;
    }
    out
};

/// Must never run: the host checks the fingerprint first.
#[allow(improper_ctypes_definitions)]
#[unsafe(no_mangle)]
pub extern "C" fn lrnnx_plugin_v1(_host: &mut dyn Registrar) -> PluginStatus {
    eprintln!("plugin_bad_fingerprint: the entry was called despite the fingerprint mismatch");
    std::process::abort()
}
