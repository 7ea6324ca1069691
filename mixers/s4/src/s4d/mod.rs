//! S4D (Gu et al. 2022, "On the Parameterization and Initialization of
//! Diagonal State Space Models") as lrnnx defines it: a diagonal complex SSM
//! per feature, discretized by zero-order hold or bilinear (Tustin), inside
//! the S4 block `gelu(Linear(gelu(gelu(ssm(x) + D x))))`.
//!
//! Registered as `"S4D"`. The forward runs either as the recurrence (a
//! complex diagonal scan over `H * N/2` channels, `lrnnx_kernels::scan`) or as
//! a causal convolution with the kernel `K = 2 Re(C dB dA^l)`
//! (`lrnnx_kernels::fft_conv`); `forward_mode = "auto"` picks the scan below
//! [`layer::AUTO_CONV_FROM`] (4) positions and the convolution from there on
//! (measured: the convolution wins from about 4 positions at every shape
//! tried). Both give the same outputs. The kernel is computed by a
//! small custom op with backward (`vandermonde`: running powers in f64,
//! `O(H N L)`, no `(H, N, L)` tensor).
//!
//! Files: [`layer`] (the layer), `config` (its arguments), `vandermonde`
//! (the kernel op), `register` (the `"S4D"` registration).

mod config;
pub mod layer;
mod powers;
mod vandermonde;

pub use crate::NAME_S4D as NAME;
pub use config::{S4dConfig, S4dDisc};
pub use layer::{ForwardMode, S4d};
