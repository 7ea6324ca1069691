//! # lrnnx-s5
//!
//! S5 (Smith et al. 2023, "Simplified State Space Layers") as lrnnx defines
//! it, in both of lrnnx's classes:
//!
//! - **LTI** (`lrnnx.models.lti.S5`, [`S5Lti`]): `h_t = A_bar h_{t-1} + B_bar x_t`,
//!   `y_t = Re(C h_t) + x_t @ D`, with `A = -softplus(A[:,0]) + i A[:,1]`, real
//!   `B (N, H)`, a full `D (H, H)`, and lrnnx's `core` discretizations: zoh,
//!   bilinear (**sign-flipped** against Tustin, as lrnnx's `core.bilinear`),
//!   dirac, no_discretization. `discretization` has no default (as in lrnnx).
//!   The forward pass runs as a diagonal complex scan, or (`forward_mode =
//!   "conv"`) as a causal FFT convolution of each state channel with
//!   `A_bar^l`; [`lrnnx_framework::Lti::kernel`] gives the `(H, H, len)` kernel.
//! - **LTV / event** (`lrnnx.models.ltv.S5`, [`S5Ltv`]): raw `A`, complex `B`
//!   and `C`, `D (H)` elementwise, textbook discretizations (zoh, bilinear,
//!   dirac), and event mode: with `integration_timesteps` `tau` the
//!   transition uses `exp(tau dt A)` (or its bilinear form) while the input
//!   gain keeps `dt`. That forward runs the time-varying scan
//!   ([`lrnnx_kernels::scan_tv`]).
//!
//! ## Names
//!
//! - `"S5"` (family LTI; alias `"s5"`) builds the **LTI** class, unless the
//!   kwargs contain `use_fast_path`, which only lrnnx's LTV class accepts:
//!   then it builds the **LTV** class. This is how lrnnx's golden cases tell
//!   them apart (`s5_lti_*` have no `use_fast_path`, `s5_ltv_*` pass
//!   `use_fast_path=false`), and it is also the LM rule: lrnnx's LM registry
//!   maps `"S5"` to the LTI class, and the LTI constructor would reject
//!   `use_fast_path`. A model saved with such a layer writes `use_fast_path`
//!   back into its config, so it reloads as the same class.
//! - `"S5LTV"` (family LTV; alias `"s5_ltv"`) always builds the LTV class.
//!
//! ## Forward mode (LTI)
//!
//! `forward_mode` is `"auto"` (default), `"scan"` or `"conv"`. Both compute
//! the same states (the tests check it, and the conv mode also passes the
//! golden cases). The scan is `O(B L N)` after the two projections; the
//! convolution (each complex state channel convolved with `A_bar^l` by
//! `lrnnx_kernels::fft_conv::causal_conv`, the powers taken from a scan of
//! an impulse) is `O(B L N log L)` plus the same projections. Measured on
//! the 2-core CPU (best of 5, f32):
//!
//! | B, L, H, N | scan | conv |
//! |---|---|---|
//! | 1, 64, 32, 8 | 0.12 ms | 0.32 ms |
//! | 1, 512, 64, 16 | 0.60 ms | 3.9 ms |
//! | 4, 1024, 128, 64 | 16 ms | 56 ms |
//! | 8, 2048, 256, 64 (benches/s5.rs) | 245 ms | 498 ms |
//! | 1, 8192, 64, 256 | 100 ms | 837 ms |
//! | 2, 16384, 16, 16 | 2.9 ms | 125 ms |
//!
//! There is no crossover, so `auto` means the scan.
//!
//! ## Stability
//!
//! lrnnx's LTI `bilinear` (the sign-flipped `core.bilinear`) gives
//! `|A_bar| > 1` whenever `Re(A) < 0`, which the LTI parametrization always
//! has: outputs grow geometrically with the length, as in lrnnx (the golden
//! case is 16 positions long). zoh and dirac stay bounded (tested at
//! L = 100000); `no_discretization` uses the continuous `A` as the transition.

mod config;
mod hippo;
mod lti;
mod ltv;
mod util;

pub use config::{
    ForwardMode, LtiDiscretization, LtvDiscretization, S5Config, S5LtiConfig, S5LtvConfig,
};
pub use hippo::make_dplr_hippo;
pub use lti::S5Lti;
pub use ltv::S5Ltv;

use lrnnx_framework::{BuildArgs, Mixer, Result};

lrnnx_framework::mixers! {
    /// The registered name (LTI class; LTV when the kwargs hold `use_fast_path`).
    NAME = "S5" {
        aliases: ["s5"],
        family: Lti,
        summary: "S5: MIMO diagonal complex SSM (LTI; kwargs with use_fast_path give the LTV/event class)",
        config: S5LtiConfig,
        build: build,
        required: ["discretization"],
    }

    /// The registered name of the LTV / event class.
    NAME_LTV = "S5LTV" {
        aliases: ["s5_ltv"],
        family: Ltv,
        summary: "S5, LTV class: event-driven (integration_timesteps) diagonal complex SSM",
        config: S5LtvConfig,
        new: |d_model, cfg, params: &_| S5Ltv::new(d_model, cfg, params, false),
    }
}

/// The `"S5"` builder: lrnnx has two classes under one name, told apart by
/// `use_fast_path` (only the LTV class takes it).
fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    if args.kwargs.contains_key("use_fast_path") {
        let cfg: S5LtvConfig = args.config(NAME, &[])?;
        let m = args.built(NAME, S5Ltv::new(args.d_model, cfg, &args.params, true))?;
        return Ok(Box::new(m));
    }
    if !args.kwargs.contains_key("discretization") {
        return Err(args.bad(
            NAME,
            "the LTI S5 needs `discretization` (lrnnx gives it no default): one of zoh, bilinear, \
             dirac, no_discretization (kwargs with `use_fast_path` select the LTV class, whose default is zoh)",
        ));
    }
    let cfg: S5LtiConfig = args.config(NAME, &[])?;
    let m = args.built(NAME, S5Lti::new(args.d_model, cfg, &args.params))?;
    Ok(Box::new(m))
}
