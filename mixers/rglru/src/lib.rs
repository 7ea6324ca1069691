//! # lrnnx-rglru
//!
//! The RG-LRU block of Griffin (De et al. 2024) as lrnnx defines it: a gated
//! real diagonal recurrence `h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)`
//! with `a_t = sigmoid(a_log)^(c r_t)`, between a depthwise causal convolution
//! and a GELU-gated output projection.
//!
//! Registered as `"RGLRU"` (alias `"rglru"`, family LTV). The CPU forward runs
//! the gates and the recurrence as one fused op, parallel over batch and
//! channel blocks, with a fused backward (`ops`). Everywhere else (CUDA,
//! bf16/f16, or inside `lrnnx_kernels::portable::with_portable`) the same
//! block runs from candle ops (`ops::portable`: gates in f32, the log-depth
//! real scan), differentiable by autograd.

mod config;
pub mod ops;
mod rglru;
mod step;

pub use config::RgLruConfig;
pub use rglru::RgLru;

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "RGLRU" {
        aliases: ["rglru"],
        family: Ltv,
        summary: "Griffin RG-LRU: gated real diagonal recurrence with depthwise conv and GELU gate",
        config: RgLruConfig,
        new: RgLru::new,
    }
}
