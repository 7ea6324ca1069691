//! The RG-LRU block's ops. On CPU f32/f64 each is a fused candle custom op
//! with a hand-written backward; elsewhere (CUDA, bf16/f16, or inside
//! `lrnnx_kernels::portable::with_portable`) the entry functions run
//! [`portable`]'s tensor-op versions, whose backward is candle's autograd.

pub mod block;
pub mod gate_scan;
pub mod gelu_mul;
pub mod portable;

pub use gate_scan::gate_scan;
pub use gelu_mul::gelu_mul;
pub use lrnnx_kernels::depthwise_conv::depthwise_conv;
