//! # lrnnx-lru
//!
//! The Linear Recurrent Unit (Orvieto et al. 2023) as lrnnx defines it: a
//! complex diagonal recurrence `h_t = lambda * h_{t-1} + (gamma * B) x_t`,
//! read out as `y_t = Re(C h_t) + D * x_t`, with
//! `lambda = exp(-exp(nu_log) + i exp(theta_log))` and `gamma = exp(gamma_log)`.
//!
//! Registered as `"LRU"`. The CPU forward runs the recurrence as a scan that
//! is parallel over batch and state channels (`lrnnx_kernels::scan`); with
//! feature `cuda` the same op runs as a CUDA kernel; on other devices (and
//! under `lrnnx_kernels::portable::with_portable`) a log-depth scan of candle
//! ops. The projections run in the input's dtype (parameters are cast at
//! use); the states are f32 for bf16/f16 inputs (f64 stays f64).

mod config;
mod lru;
mod step;

pub use config::LruConfig;
pub use lru::Lru;

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "LRU" {
        aliases: ["lru"],
        family: Lti,
        summary: "Linear Recurrent Unit: complex diagonal recurrence, stable exponential parametrization",
        config: LruConfig,
        new: Lru::new,
    }
}
