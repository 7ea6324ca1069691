//! # lrnnx-s4
//!
//! The S4 family as lrnnx defines it: S4 (crate root, [`S4`]) and S4D
//! ([`s4d`]), which share the block around the SSM and the SSM parameters
//! with their HiPPO initialisations ([`ssm`], lrnnx's `s4_utils`).
//!
//! S4 (Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured
//! State Spaces") as lrnnx defines it: per feature, a diagonal-plus-low-rank
//! (DPLR) complex SSM initialised from HiPPO-LegS, discretized by the bilinear
//! transform, inside the S4 block `gelu(Linear(gelu(gelu(ssm(x) + D x))))`.
//!
//! Registered as `"S4"`. The recurrence runs as a custom candle op
//! ([`dplr`]): each step applies `Ā = (I - M/2)^{-1}(I + M/2)` in linear time
//! with the Woodbury identity (no dense `N x N` matrix), in parallel over batch
//! and features, with a hand-written adjoint for the backward pass. The
//! convolution form takes the kernel as that recurrence's impulse response
//! (`O(L H N)`, exact, no `C~` needed) and convolves with
//! `lrnnx_kernels::fft_conv`. `forward_mode = "auto"` runs the recurrence at
//! batch 1 or below [`s4::AUTO_CONV_FROM`] (4) positions and the convolution
//! otherwise (measured; see that constant).
//!
//! lrnnx keeps S4's `C` as `C~ = C (I - Ā^l_kernel)`; see [`S4`] for how it is
//! converted on load.

mod config;
pub mod ctilde;
pub mod dplr;
pub mod dplr_portable;
pub mod s4;
pub mod s4d;
pub mod ssm;

pub use config::{S4Config, S4Disc};
pub use s4::{ForwardMode, S4};

lrnnx_framework::mixers! {
    /// The registered name of S4.
    NAME = "S4" {
        aliases: ["s4"],
        family: Lti,
        summary: "S4: DPLR (HiPPO-LegS) SSM, bilinear, linear-time recurrence or FFT convolution, S4 block",
        config: S4Config,
        new: S4::new,
    }

    /// The registered name of S4D.
    NAME_S4D = "S4D" {
        aliases: ["s4d"],
        family: Lti,
        summary: "S4D: diagonal complex SSM (zoh / bilinear), scan or FFT convolution, S4 block with GELUs",
        config: s4d::S4dConfig,
        new: s4d::S4d::new,
    }
}
