//! Ops of the S7 layer. The fused ones are candle custom ops with their
//! backward, on CPU f32/f64 only; each entry function ([`b_input`],
//! [`c_output`], [`gelu`], [`gate_residual`]) runs [`portable`]'s tensor-op
//! version for any other device or dtype, or inside
//! `lrnnx_kernels::portable::with_portable`.

pub mod bilinear;
mod contract;
pub mod gate;
pub mod gelu;
pub mod portable;
pub mod quad;

pub use bilinear::{b_input, c_output};
pub use gate::gate_residual;
pub use gelu::gelu;
