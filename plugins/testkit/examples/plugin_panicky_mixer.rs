//! Registers fine, but one mixer panics when built and another in `forward`:
//! the host must get errors, not a crash.

use lrnnx_framework::plugin::Registrar;
use lrnnx_framework::{BuildArgs, Mixer, Result};
use lrnnx_plugin_testkit::{build_toy_panicking_in_forward, toy_spec};

fn build_panics(_: &BuildArgs) -> Result<Box<dyn Mixer>> {
    panic!("builder exploded on purpose")
}

fn register(host: &mut dyn Registrar) -> Result<()> {
    host.add(toy_spec(
        "PanickyForward",
        lrnnx_framework::guarded_build!(build_toy_panicking_in_forward),
    ))?;
    host.add(toy_spec(
        "PanickyBuild",
        lrnnx_framework::guarded_build!(build_panics),
    ))
}

lrnnx_framework::export_plugin!(register);
