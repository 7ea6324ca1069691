//! Building blocks shared by mixers and models: linear maps, norms, the gated MLP and the residual block.

mod block;
pub mod diagonal;
pub mod gated;
mod linear;
mod mlp;
mod norm;

pub use block::Block;
pub use linear::{
    linear, linear_maybe_bias, linear_no_bias, project, project_linear, residual_output, Linear,
};
pub use mlp::GatedMlp;
pub use norm::{Norm, NormKind};
