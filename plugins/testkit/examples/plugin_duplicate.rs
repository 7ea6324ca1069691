//! A registration that adds a fresh name, then one a built-in already holds
//! (`LRU`): the host must refuse the plugin and register neither.

use lrnnx_framework::plugin::Registrar;
use lrnnx_plugin_testkit::{build_toy, toy_spec};

fn register(host: &mut dyn Registrar) -> lrnnx_framework::Result<()> {
    host.add(toy_spec(
        "DupTestB",
        lrnnx_framework::guarded_build!(build_toy),
    ))?;
    host.add(toy_spec("LRU", lrnnx_framework::guarded_build!(build_toy)))
}

lrnnx_framework::export_plugin!(register);
