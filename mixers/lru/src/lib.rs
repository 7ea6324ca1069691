//! # lrnnx-lru
//!
//! The Linear Recurrent Unit (Orvieto et al. 2023) as lrnnx defines it: a
//! complex diagonal recurrence `h_t = lambda * h_{t-1} + (gamma * B) x_t`,
//! read out as `y_t = Re(C h_t) + D * x_t`, with
//! `lambda = exp(-exp(nu_log) + i exp(theta_log))` and `gamma = exp(gamma_log)`.
//!
//! Registered as `"LRU"`. The CPU forward runs the recurrence as a scan that
//! is parallel over batch and state channels (`lrnnx_kernels::scan`); with
//! feature `cuda` the same op runs as a CUDA kernel.

mod config;
mod lru;

pub use config::LruConfig;
pub use lru::Lru;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "LRU";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: LruConfig = args.parse(NAME, &[("d_state", args.d_state.into())])?;
    Ok(Box::new(
        Lru::new(args.d_model, cfg, &args.params).map_err(|e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        })?,
    ))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({"r_min": 0.0, "r_max": 1.0, "max_phase": std::f64::consts::TAU})
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["lru"],
        family: Family::Lti,
        summary: "Linear Recurrent Unit: complex diagonal recurrence, stable exponential parametrization",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
