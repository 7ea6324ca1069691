//! # lrnnx-mingru
//!
//! minGRU (Feng et al. 2024, "Were RNNs All We Needed?") as an lrnnx mixer,
//! built as a run-time plugin: `lrnnx mixers --plugin target/release/liblrnnx_mingru.so`.
//!
//! ```text
//! [h~_t, k_t] = W x_t            (to_hidden_and_gate, no bias)
//! z_t = sigmoid(k_t)
//! h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t),  g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0)
//! y_t = W_out h_t                (to_out, when proj_out)
//! ```
//!
//! `g` keeps the candidate state positive, as the paper's log-space form
//! needs; the same recurrence runs here as a plain linear scan over the
//! sequence (parallel over the batch, with a backward pass), and as an O(1)
//! step when decoding. Registered as `"minGRU"` (alias `"mingru"`), family LTV.
//!
//! The crate is a `cdylib` whose [`register`] the host calls through
//! [`lrnnx_framework::export_plugin!`]; it is also an `rlib`, so a program
//! may link it and call `Registry::add(lrnnx_mingru::spec(), Origin::Linked)`.

mod config;
mod mingru;
mod scan;

pub use config::MinGruConfig;
pub use mingru::MinGru;
pub use scan::linear_scan;

use lrnnx_framework::plugin::Registrar;
use lrnnx_framework::{MixerSpec, Result};

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "minGRU" {
        aliases: ["mingru"],
        family: Ltv,
        summary: "minGRU (Feng et al. 2024): gated linear recurrence, parallel scan (plugin)",
        config: MinGruConfig,
        new: MinGru::new,
    }
}

/// The registry entry of minGRU (as declared above).
pub fn spec() -> Result<MixerSpec> {
    lrnnx_framework::declare::declared_spec(NAME)
}

/// Registers minGRU with the host (the plugin's entry calls this).
pub fn register(host: &mut dyn Registrar) -> Result<()> {
    lrnnx_framework::declare::register_declared(host, link())
}

lrnnx_framework::export_plugin!(register);
