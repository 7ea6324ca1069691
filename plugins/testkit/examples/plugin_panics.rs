//! A registration that adds a mixer and then panics: the host must report
//! the panic and register nothing.

use lrnnx_framework::plugin::Registrar;
use lrnnx_plugin_testkit::{build_toy, toy_spec};

fn register(host: &mut dyn Registrar) -> lrnnx_framework::Result<()> {
    host.add(toy_spec(
        "PanicTestA",
        lrnnx_framework::guarded_build!(build_toy),
    ))?;
    panic!("registration exploded on purpose");
}

lrnnx_framework::export_plugin!(register);
