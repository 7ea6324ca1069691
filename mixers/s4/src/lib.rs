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
pub mod s4;
pub mod s4d;
pub mod ssm;

pub use config::S4Config;
pub use s4::{ForwardMode, S4};
pub use s4d::link as link_s4d;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "S4";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: S4Config = args.parse(NAME, &[("d_state", args.d_state.into())])?;
    Ok(Box::new(S4::new(args.d_model, cfg, &args.params).map_err(
        |e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        },
    )?))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({
        "bottleneck": null, "gate": null, "final_act": "glu", "postact": null, "dropout": 0.0,
        "tie_dropout": false, "transposed": false, "l_max": null, "channels": 1,
        "dt_min": 0.001, "dt_max": 0.1, "dt_tie": true, "dt_transform": "exp", "dt_fast": false,
        "rank": 1, "n_ssm": null, "init": "legs", "deterministic": false,
        "real_transform": "exp", "imag_transform": "none", "is_real": false, "lr": null,
        "wd": 0.0, "verbose": true, "disc": null, "swap_channels": false, "drop_kernel": 0.0,
        "B_clip": 2.0, "diagonalize_precision": true, "forward_mode": "auto"
    })
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["s4"],
        family: Family::Lti,
        summary: "S4: DPLR (HiPPO-LegS) SSM, bilinear, linear-time recurrence or FFT convolution, S4 block",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
