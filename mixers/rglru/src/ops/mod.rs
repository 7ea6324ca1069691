//! Fused CPU ops of the RG-LRU block, each a candle custom op with its backward.

pub mod block;
pub mod gate_scan;
pub mod gelu_mul;

pub use gate_scan::gate_scan;
pub use gelu_mul::gelu_mul;
pub use lrnnx_kernels::depthwise_conv::depthwise_conv;
