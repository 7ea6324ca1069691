//! Building blocks shared by mixers and models: linear maps, norms, the gated MLP and the residual block.

mod block;
mod linear;
mod mlp;
mod norm;
mod ssm;

pub use block::Block;
pub use linear::{linear, linear_maybe_bias, linear_no_bias, project, project_linear, Linear};
pub use mlp::GatedMlp;
pub use norm::{Norm, NormKind};
pub use ssm::defaults as ssm_defaults;
pub use ssm::{
    hippo, mask_lengths, GateStyle, SsmParams, SsmSpec, SsmWrapper, SsmWrapperOpts, Transform,
};
