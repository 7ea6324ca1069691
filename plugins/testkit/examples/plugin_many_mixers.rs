//! A plugin with more mixers than ABI v1's 32 wrapper slots allowed: 40 with
//! a wrapper each (one `guarded_build!` per spec) and 10 more sharing one.

use lrnnx_framework::plugin::Registrar;
use lrnnx_framework::{guarded_build, Result};
use lrnnx_plugin_testkit::{build_toy, toy_spec};

/// One spec per number, each with its own guarded wrapper.
macro_rules! toys {
    ($($n:literal)*) => {
        [$(toy_spec(concat!("ManyToy", $n), guarded_build!(build_toy))),*]
    };
}

fn register(host: &mut dyn Registrar) -> Result<()> {
    let own = toys!(
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
        20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39
    );
    for spec in own {
        host.add(spec)?;
    }
    let shared = guarded_build!(build_toy);
    for i in 40..50 {
        let name: &'static str = Box::leak(format!("ManyToy{i}").into_boxed_str());
        host.add(toy_spec(name, shared))?;
    }
    Ok(())
}

lrnnx_framework::export_plugin!(register);
