//! # lrnnx-s4d
//!
//! S4D (Gu et al. 2022, "On the Parameterization and Initialization of
//! Diagonal State Space Models") as lrnnx defines it: a diagonal complex SSM
//! per feature, discretized by zero-order hold or bilinear (Tustin), inside
//! the S4 block `gelu(Linear(gelu(gelu(ssm(x) + D x))))`.
//!
//! Registered as `"S4D"`. The forward runs either as the recurrence (a
//! complex diagonal scan over `H * N/2` channels, `lrnnx_kernels::scan`) or as
//! a causal convolution with the kernel `K = 2 Re(C dB dA^l)`
//! (`lrnnx_kernels::fft_conv`); `forward_mode = "auto"` picks the scan below
//! [`s4d::AUTO_CONV_FROM`] (4) positions and the convolution from there on
//! (measured: the convolution wins from about 4 positions at every shape
//! tried). Both give the same outputs. The kernel is computed by a
//! small custom op with backward (`vandermonde`: running powers in f64,
//! `O(H N L)`, no `(H, N, L)` tensor).

mod config;
pub mod s4d;
mod vandermonde;

pub use config::S4dConfig;
pub use s4d::{ForwardMode, S4d};

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "S4D";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: S4dConfig = args.parse(NAME, &[("d_state", args.d_state.into())])?;
    Ok(Box::new(
        S4d::new(args.d_model, cfg, &args.params).map_err(|e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        })?,
    ))
}

fn default_config() -> serde_json::Value {
    serde_json::json!({
        "bottleneck": null, "gate": null, "final_act": "glu", "postact": null, "dropout": 0.0,
        "tie_dropout": false, "transposed": false, "l_max": null, "channels": 1,
        "dt_min": 0.001, "dt_max": 0.1, "dt_tie": true, "dt_transform": "exp", "dt_fast": false,
        "rank": 1, "n_ssm": null, "init": "legs", "deterministic": false,
        "real_transform": "exp", "imag_transform": "none", "is_real": false, "lr": null,
        "wd": 0.0, "verbose": true, "disc": "zoh", "swap_channels": false, "drop_kernel": 0.0,
        "B_clip": 2.0, "diagonalize_precision": true, "forward_mode": "auto"
    })
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["s4d"],
        family: Family::Lti,
        summary: "S4D: diagonal complex SSM (zoh / bilinear), scan or FFT convolution, S4 block with GELUs",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static [&'static str] {
    &[NAME]
}
