//! Mamba's fused CPU path: the causal conv + silu op ([`conv`]), the
//! selective-scan op ([`selective_scan`]: `x_proj`, `dt_proj` + softplus,
//! discretization, recurrence, read-out, skip and gate, with backward), the
//! explicit-SIMD kernels under it ([`recurrence`], [`xproj`]) and the fused
//! decoding step ([`step`]). The vector backends and their dispatch are
//! `lrnnx_kernels::cpu`'s.

pub(crate) mod conv;
pub(crate) mod recurrence;
pub(crate) mod selective_scan;
pub(crate) mod step;
mod xproj;

pub use conv::conv_silu;
pub use selective_scan::selective_scan;
