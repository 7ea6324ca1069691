//! # lrnnx-centaurus
//!
//! Centaurus (Pei 2025, "Let SSMs be ConvNets", arXiv 2501.13230) as lrnnx
//! defines it (`lrnnx.models.lti.centaurus`, registered as `"Centaurus"`):
//! `N` states, each made of `M` complex diagonal sub-states
//! `s[n,m]_t = Ā[n,m] s[n,m]_{t-1} + u[n]_t` with `Ā = exp(δA)` and the Euler
//! input `u = δB x` (lrnnx calls this "ZOH"; it is exponential on the state and
//! Euler on the input), read out as `y = C (Σ_m E[n,m] Re s[n,m])`.
//! No skip term, no activation.
//!
//! Modes (`mode` kwarg):
//! - `neck` (default): dense `B (N, H)`, `C (H, N)`;
//! - `pw` (also `pointwise`, `s5`): `N·M` SISO lanes with dense `B (N·M, H)`,
//!   `C (H, N·M)` and no `E`;
//! - `dws`: one state per channel, `B (H)`, `C (H)`; needs `d_state == d_model`;
//! - `full`: one SISO system (with `M` E-mixed sub-states) per (output, input)
//!   channel pair: state `s` feeds from input `s % H` and into output `s / H`,
//!   `B (N)`, `C (N)`; needs `d_state >= d_model²`, states past `d_model²` are
//!   inert. lrnnx's own `full` fails unless `d_state >= d_model²` (its scatter
//!   needs it), so it has no reference vectors: this crate implements it from
//!   the paper's definition (the layout lrnnx's index buffers encode) and tests
//!   it against a slow reference and against its own step.
//!
//! Other kwargs: `sub_state_dim` (`M`) is required, as in lrnnx.
//! `discretization` (default `"zoh"`) must be one of lrnnx's names (`zoh`,
//! `bilinear`, `dirac`, `async`, `no_discretization`) and is otherwise unused,
//! as in lrnnx. `forward_mode` (ours: `auto`, `scan`, `conv`) picks how
//! `forward` runs:
//! - `scan`: the complex diagonal scan (`lrnnx_kernels::scan`) over the `N·M`
//!   sub-states, then `Re`, `E` mixing and `C`;
//! - `conv`: the causal convolution (`lrnnx_kernels::fft_conv`, direct or FFT)
//!   of `δBx` with the real state kernel `K[n,l] = Σ_m E[n,m] Re(Ā[n,m]^l)`,
//!   then `C`; on the CPU by FFT, elsewhere (CUDA, or under
//!   `lrnnx_kernels::portable::with_portable`) by Toeplitz matmuls, which
//!   refuse lengths past `lrnnx_kernels::portable::conv::TOEPLITZ_BUDGET`;
//! - `auto` (default): on the CPU, conv for neck/dws/full from [`CONV_MIN_LEN`]
//!   positions on (except a single sequence of [`SCAN_MIN_LEN_SINGLE`] or
//!   more), scan otherwise and always for pw; scan off the CPU (and under
//!   `with_portable`). The
//!   thresholds were measured at H=256, N=64, M=4 (see
//!   [`Centaurus::resolve_forward_mode`]).
//!
//! `step` keeps the complex sub-states `(B, N, M)` (O(1) in the length);
//! `prefill` runs the scan. [`lrnnx_framework::Lti::kernel`] gives the
//! input-output kernel `(H, H, len)`.
//!
//! Dtypes: the input and output maps run in the input's dtype (parameters
//! are cast at use, so f32 master weights take bf16 activations); the
//! sub-states and the convolution's state channels are computed in f32 for
//! bf16/f16 inputs (f64 stays f64), and so is the decoding state.
//!
//! Checkpoints: `A` is a complex `(N, M)` parameter in lrnnx, stored here in
//! PyTorch's `view_as_real` layout `(N, M, 2)`.

mod centaurus;
mod config;
mod system;

pub use centaurus::{Centaurus, CONV_MIN_LEN, SCAN_MIN_LEN_SINGLE};
pub use config::{CentaurusConfig, ForwardMode, Mode, DISCRETIZATIONS};

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "Centaurus" {
        aliases: ["centaurus"],
        family: Lti,
        summary: "Centaurus: E-mixed complex diagonal sub-states, neck/pw/dws/full channel maps, scan or FFT conv",
        config: CentaurusConfig,
        new: Centaurus::new,
        required: ["sub_state_dim"],
    }
}
