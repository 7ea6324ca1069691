//! What lrnnx's `S4` and `S4D` classes share: the block around the SSM kernel
//! ([`SsmWrapper`]: input gate, bottleneck linear, `D` skip, the two GELUs,
//! output gate, output linear, `lengths` masking) and the SSM parameters
//! ([`SsmParams`]: `inv_dt`, `A_real`, `A_imag`, `B`, `C`, `P` with their
//! transforms, their `layer.kernel.*` aliases and the HiPPO initialisations of
//! `lrnnx/ops/s4_utils.py`).
//!
//! The forward of both classes is
//! `gelu(output_linear(gelu([output_gate] gelu(ssm(x) + D x))))`: lrnnx's
//! `final_act="glu"` is a `Linear` followed by a GELU (not a GLU), and there
//! are two GELUs before it (`conv_activation`, then `mult_activation`). Every
//! GELU is the exact erf form of `nn.GELU()`.
//!
//! Files: [`wrapper`] (the block), [`block`] (the block's passes around a
//! layer's own SSM part, the forward mode), [`block_config`] (the arguments
//! both take), [`params`] (the parameters, their transforms and aliases),
//! [`hippo`] (the HiPPO/DPLR initialisations).

pub mod block;
pub mod block_config;
pub mod hippo;
pub mod params;
pub mod wrapper;

pub use block::{f64_values, ForwardMode, SsmBlock};
pub use block_config::{SsmBlockConfig, SsmDisc};
pub use params::{SsmParams, SsmSpec, Transform};
pub use wrapper::{mask_lengths, GateStyle, SsmWrapper, SsmWrapperOpts};
