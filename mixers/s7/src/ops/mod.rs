//! CPU ops of the S7 layer, each a candle custom op with its backward.

pub mod bilinear;
mod contract;
pub mod gate;
pub mod gelu;
pub mod quad;

pub use bilinear::{b_input, c_output};
pub use gate::gate_residual;
pub use gelu::gelu;
