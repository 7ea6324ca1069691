//! Run-time plugins: mixers from a `cdylib` loaded with [`libloading`].
//!
//! - `abi.rs`: what host and plugin share (fingerprint, symbols, status, [`Registrar`]).
//! - `guest.rs`: the plugin side ([`export_plugin!`](crate::export_plugin) and the panic guards).
//! - `host.rs`: loading a library ([`load_plugin`]) and naming where mixers came from.
//! - `discovery.rs`: finding plugin files ([`plugin_files`], `LRNNX_PLUGIN_PATH`).
//!
//! # Writing a plugin
//!
//! A plugin is a crate of `crate-type = ["cdylib"]` that depends on
//! `lrnnx-framework`, defines its mixers as any mixer crate does, and ends with
//!
//! ```ignore
//! fn register(host: &mut dyn lrnnx_framework::plugin::Registrar) -> lrnnx_framework::Result<()> {
//!     host.add(MixerSpec {
//!         name: "minGRU",
//!         build: lrnnx_framework::guarded_build!(build),
//!         /* ... */
//!         source: env!("CARGO_PKG_NAME"),
//!     })
//! }
//! lrnnx_framework::export_plugin!(register);
//! ```
//!
//! The host loads it with [`load_plugin`] (the CLI: `--plugin PATH` or
//! `LRNNX_PLUGIN_PATH`, see [`load_plugin_list`]).
//!
//! # The ABI
//!
//! [`export_plugin!`](crate::export_plugin) defines two unmangled symbols:
//!
//! - `lrnnx_plugin_fingerprint`: a NUL-terminated byte string, the
//!   [`ABI_FINGERPRINT`] of the framework the plugin was built against: the
//!   ABI version (`lrnnx-plugin-abi v2`), the framework version, the exact `rustc -V`, the candle-core version, the
//!   target, the panic strategy, debug assertions and the framework's features
//!   (such as `cuda`), all captured by the framework's `build.rs`.
//! - `lrnnx_plugin_v1`: `extern "C" fn(host: &mut dyn Registrar) -> PluginStatus`.
//!
//! The host opens the library, reads the fingerprint (plain bytes, readable
//! whatever compiler built the plugin) and compares it with its own **before
//! calling anything** in the plugin. Only when they are equal does it call
//! the entry. The entry takes a Rust trait object and the plugin returns
//! Rust values (a [`MixerSpec`](crate::MixerSpec) with function pointers, `Box<dyn Mixer>`,
//! candle tensors, [`Error`](crate::Error)s) through plain Rust calls: that is sound only
//! because the fingerprint guarantees the same compiler, the same framework
//! and candle versions and the same features on both sides, so every type has
//! the same layout and every vtable the same shape. The `extern "C"` on the
//! entry only fixes its calling convention and symbol name.
//!
//! Rules that follow from the plugin linking its own copy of the framework and
//! of candle:
//!
//! - Register through the [`Registrar`], never with `inventory`: a plugin's
//!   `inventory::submit!` lands in its own copy of the registry, which the host
//!   never reads. For the same reason a plugin does not see the host's
//!   [`Registry`](crate::Registry) (it cannot build another mixer by name).
//! - Neither side may set a `#[global_allocator]`: memory allocated on one side
//!   (a boxed mixer, a tensor, an error message) is freed on the other.
//! - Panics must not cross the boundary: the host and the plugin have separate
//!   Rust runtimes, and a panic unwinding from one into the other aborts the
//!   process. The entry catches panics of the registration function, and
//!   every builder registered through the [`Registrar`] must be wrapped, inside
//!   the plugin, with [`guarded_build!`](crate::guarded_build), so that a panic
//!   in it or in any [`Mixer`](crate::Mixer) / [`Lti`](crate::Lti) / [`Ltv`](crate::Ltv) method of what it builds
//!   comes back as an [`Error::Plugin`](crate::Error::Plugin); a spec with a bare builder is refused.
//!   Each use of the macro defines its own wrapper function, so a plugin may
//!   register any number of mixers (ABI v1 wrapped builders through a fixed
//!   table of 32 and refused a 33rd; v2 replaced it). Build plugins with
//!   `panic = "unwind"` (the default); the fingerprint records the strategy.
//! - Logs a plugin emits with `tracing` go to its own (unset) subscriber.
//! - Training through a plugin mixer is not supported: candle numbers its
//!   tensors from a counter that each copy of candle keeps for itself, and
//!   backpropagation identifies graph nodes by that number. Forward, prefill,
//!   step and generation are unaffected.
//! - A loaded plugin is never unloaded (its code backs every mixer it built);
//!   a library that is refused stays mapped too, since its initialisers
//!   already ran when it was opened.

mod abi;
mod discovery;
mod guest;
mod host;

pub use abi::*;
pub use discovery::{load_env_plugins, load_plugin_list, plugin_files, PLUGIN_PATH_VAR};
#[doc(hidden)]
pub use guest::{call_guarded, mark_guarded, run_registration};
pub use host::{
    explain_missing_mixer, load_plugin, loaded_plugins, source_label, LoadedPlugin,
    PLUGIN_SOURCE_PREFIX,
};
