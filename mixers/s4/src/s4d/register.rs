//! The `"S4D"` registration: name, builder, default config.

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

use super::{S4d, S4dConfig};

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
pub fn link() -> &'static str {
    NAME
}
