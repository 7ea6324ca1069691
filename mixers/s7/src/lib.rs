//! # lrnnx-s7
//!
//! S7 (Soydan et al. 2024, "Selective and Simplified State Space Layers") as
//! lrnnx defines it: a real diagonal recurrence whose transition, input and
//! output matrices all depend on the input,
//! `s_t = (1 - 1/(A_t^2 + 1/2)) s_{t-1} + B_t^T u_t + bias_t`,
//! `y_t = C_t s_t + D_t u_t`, gated as `sigmoid(gate_proj(gelu(y))) y + x`.
//!
//! Registered as `"S7"` (alias `"s7"`, family LTV). The CPU forward runs the
//! recurrence with `lrnnx_kernels::scan_real_tv` and contracts the per-token
//! `B` and `C` chunk by chunk (`ops`), never holding them for the whole
//! sequence; `B^T u`, a quadratic form in `u`, goes through its symmetric
//! part with 5/8 of the multiply-adds (`ops::quad`). A decoding step runs on
//! raw slices (`step`).
//!
//! Cost: per token `B` and `C` take `2 H^2 N` multiply-adds when formed from
//! `u` (`(5/8 + 1) H^2 N` here), against `~4 H^2` for the other projections;
//! at `H = 256, N = 16` that is ~3.7 GFLOP per 1k tokens, so the forward is
//! bound by the GEMM rate of the machine.

mod config;
pub mod ops;
mod s7;
mod step;

pub use config::S7Config;
pub use s7::S7;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "S7";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: S7Config = args.parse(NAME, &[("d_state", args.d_state.into())])?;
    Ok(Box::new(S7::new(args.d_model, cfg, &args.params).map_err(
        |e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        },
    )?))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({"J": 1, "use_fast_path": true, "layer_idx": null})
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["s7"],
        family: Family::Ltv,
        summary: "S7: input-dependent real diagonal recurrence with gated output and inner residual",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}
