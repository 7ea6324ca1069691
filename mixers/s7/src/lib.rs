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

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "S7" {
        aliases: ["s7"],
        family: Ltv,
        summary: "S7: input-dependent real diagonal recurrence with gated output and inner residual",
        config: S7Config,
        new: S7::new,
    }
}
