//! # lrnnx-plugin-testkit
//!
//! Test plugins for the run-time plugin loader, one `cdylib` example each
//! (see `examples/`): a wrong ABI fingerprint, no fingerprint, no entry, a
//! registration that panics, one that registers a taken name, mixers that
//! panic when built or run, one with more mixers than ABI v1 allowed (50).
//! This library holds the toy mixer they share.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{
    check_step_input, BuildArgs, Family, ForwardOpts, Mixer, MixerConfig, MixerSpec, MixerState,
    Result, StepOpts,
};
use serde::{Deserialize, Serialize};

/// The toy mixer's (empty) config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyConfig {}

#[typetag::serde(name = "Toy")]
impl MixerConfig for ToyConfig {}

/// The identity map, optionally panicking in `forward`.
#[derive(Debug)]
pub struct Toy {
    cfg: ToyConfig,
    d_model: usize,
    panic_in_forward: bool,
}

impl Mixer for Toy {
    fn name(&self) -> &str {
        "Toy"
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        if self.panic_in_forward {
            panic!("toy forward exploded");
        }
        Ok(x.clone())
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        check_step_input(x, self.d_model, "Toy step input")?;
        state.seqlen_offset += 1;
        Ok(x.clone())
    }

    fn init_state(&self, _: usize, _: usize, _: DType, _: &Device) -> Result<MixerState> {
        Ok(MixerState::new())
    }

    fn family(&self) -> Family {
        Family::Other
    }
}

/// Builds a well-behaved toy.
pub fn build_toy(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    Ok(Box::new(Toy {
        cfg: args.parse("Toy", &[])?,
        d_model: args.d_model,
        panic_in_forward: false,
    }))
}

/// Builds a toy whose `forward` panics.
pub fn build_toy_panicking_in_forward(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    Ok(Box::new(Toy {
        cfg: args.parse("Toy", &[])?,
        d_model: args.d_model,
        panic_in_forward: true,
    }))
}

/// A spec named `name` building with `build` (in a plugin: a wrapper made by
/// `lrnnx_framework::guarded_build!`).
pub fn toy_spec(name: &'static str, build: fn(&BuildArgs) -> Result<Box<dyn Mixer>>) -> MixerSpec {
    MixerSpec {
        name,
        aliases: &[],
        family: Family::Other,
        summary: "test toy",
        build,
        default_config: || serde_json::json!({}),
        source: env!("CARGO_PKG_NAME"),
    }
}
