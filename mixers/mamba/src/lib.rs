//! # lrnnx-mamba
//!
//! lrnnx's Mamba (S6) selective state-space mixer, registered as `"Mamba"`
//! (aliases `"mamba"` and `"S6"`, the name lrnnx's docstring uses).
//!
//! `in_proj` splits the input into `x` and a gate `z`; `x` goes through a
//! causal depthwise convolution and silu to `u`; `x_proj(u)` gives a low-rank
//! step `dt_low` and the input-dependent `B` and `C`; then per channel
//!
//! ```text
//! delta = softplus(dt_proj(dt_low)),  A = -exp(A_log)
//! h_t   = Abar(delta A) h_{t-1} + gain(delta, A) B_t u_t
//! y_t   = (C_t h_t + D u_t) * silu(z_t),   out = out_proj(y)
//! ```
//!
//! with the `mamba` (default), `zoh`, `bilinear` or `dirac` discretization,
//! and an event mode where `integration_timesteps` set the `A`-side step.
//!
//! ## How it runs (CPU)
//!
//! - `in_proj` and `out_proj` are candle matmuls.
//! - [`conv_silu`] (`cpu/conv.rs`): one fused op for the causal depthwise
//!   convolution + silu (the `z` half of `in_proj`'s output is passed
//!   through), with backward.
//! - [`selective_scan`] (`cpu/selective_scan.rs`, kernels in
//!   `cpu/recurrence/` and `cpu/xproj.rs`): one fused op for `x_proj`, `dt_proj` + softplus, the
//!   discretization, the recurrence, the `C` read-out, the `D` skip and the
//!   `silu(z)` gate, with backward. It is parallel over (batch, channel
//!   blocks), vectorized over channels, never forms the `(B, L, D, N)`
//!   states, and its backward recomputes them chunk by chunk from states
//!   saved every `CHUNK` (32) positions.
//! - `cpu/step.rs` is one fused pass on slices (small-batch matrix-vector products
//!   for the projections, then the forward's own scan kernel over one
//!   position), so step equals forward for every discretization.
//!
//! The kernels use the explicit SIMD of [`lrnnx_kernels::cpu::simd`]:
//! AVX-512 or AVX2 + FMA when the CPU has them (picked at run time;
//! `LRNNX_NO_AVX512=1` / `LRNNX_NO_SIMD=1` turn them off), otherwise
//! portable code; f64 always takes the portable path. The f32 `exp` is a
//! Cephes-style polynomial, within about 1 ulp.
//!
//! ## How it runs (GPU, feature `cuda`)
//!
//! `candle_ops.rs`: candle ops for `in_proj`, the conv, `x_proj`,
//! `dt_proj` + softplus and `out_proj`, and one CUDA kernel
//! (`cuda/selective_scan.cu`, launched from [`cuda`]) for the discretization, the recurrence, the
//! read-out, the skip and the gate, chunked over `L` inside each block.
//! Forward, prefill and step run there (step = forward), `d_state` up to 64.
//! The kernel has no backward: a forward whose inputs are in an autograd
//! graph (training) runs `portable_scan.rs` instead, the same scan from
//! candle ops (`O(B L D N log L)` memory), which is also what the CPU runs
//! inside `lrnnx_kernels::portable::with_portable` (how it is tested here).

mod candle_ops;
pub mod config;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod mamba;
pub mod portable_scan;
pub mod reference;
mod scan_args;

pub use config::{DtRank, MambaConfig};
pub use cpu::recurrence::Rule;
pub use cpu::{conv_silu, selective_scan};
pub use mamba::Mamba;
pub use scan_args::ScanArgs;

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "Mamba" {
        aliases: ["mamba", "S6"],
        family: Ltv,
        summary: "Mamba (S6): selective state space, input-dependent dt/B/C, causal conv, silu gate; mamba/zoh/bilinear/dirac, event mode",
        config: MambaConfig,
        new: Mamba::new,
    }
}
