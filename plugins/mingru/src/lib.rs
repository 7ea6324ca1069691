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
use lrnnx_framework::{BuildArgs, Error, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "minGRU";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: MinGruConfig = args.parse(NAME, &[])?;
    let m = MinGru::new(args.d_model, cfg, &args.params).map_err(|e| match e {
        Error::Config(m) => args.bad(NAME, m),
        other => other,
    })?;
    Ok(Box::new(m))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({"expansion_factor": 1.0, "proj_out": null})
}

/// The registry entry of minGRU.
pub fn spec() -> MixerSpec {
    MixerSpec {
        name: NAME,
        aliases: &["mingru"],
        family: Family::Ltv,
        summary: "minGRU (Feng et al. 2024): gated linear recurrence, parallel scan (plugin)",
        // Panics in the builder or the mixer come back to the host as errors.
        build: lrnnx_framework::guarded_build!(build),
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Registers minGRU with the host (the plugin's entry calls this).
pub fn register(host: &mut dyn Registrar) -> Result<()> {
    host.add(spec())
}

lrnnx_framework::export_plugin!(register);
