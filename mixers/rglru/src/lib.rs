//! # lrnnx-rglru
//!
//! The RG-LRU block of Griffin (De et al. 2024) as lrnnx defines it: a gated
//! real diagonal recurrence `h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)`
//! with `a_t = sigmoid(a_log)^(c r_t)`, between a depthwise causal convolution
//! and a GELU-gated output projection.
//!
//! Registered as `"RGLRU"` (alias `"rglru"`, family LTV). The CPU forward runs
//! the gates and the recurrence as one fused op, parallel over batch and
//! channel blocks, with a fused backward (`ops`).

mod config;
pub mod ops;
mod rglru;
mod step;

pub use config::RgLruConfig;
pub use rglru::RgLru;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "RGLRU";

/// Builds from lrnnx kwargs. `BuildArgs::d_state` is ignored: lrnnx's RGLRU
/// takes no `d_state` (an LM does not pass it), and a `d_state` kwarg is an error, as there.
fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: RgLruConfig = args.parse(NAME, &[])?;
    Ok(Box::new(
        RgLru::new(args.d_model, cfg, &args.params).map_err(|e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        })?,
    ))
}

fn default_config() -> serde_json::Value {
    serde_json::to_value(RgLruConfig::default()).unwrap_or_default()
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["rglru"],
        family: Family::Ltv,
        summary: "Griffin RG-LRU: gated real diagonal recurrence with depthwise conv and GELU gate",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
