//! [`mixers!`](crate::mixers): the one declaration a mixer crate writes to
//! register its mixers.
//!
//! A declaration names the mixer once and produces everything the registry
//! needs: the name constant, the `typetag` tag of its config, the builder
//! (kwargs parsed into the config, `d_state` filled from the model, required
//! keys checked, config errors reported against the layer and mixer), the
//! default kwargs (from the config's `impl Default`), the [`MixerSpec`]
//! submitted to `inventory`, and a `link()` function the facade calls so that
//! the linker keeps the crate.
//!
//! [`MixerSpec`]: crate::MixerSpec

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

use crate::plugin::Registrar;
use crate::{BuildArgs, Error, MixerSpec, Result};

/// A JSON value (what `MixerSpec::default_config` returns).
pub type Json = Value;

/// The key a mixer's config holds its state size under; filled from the
/// model's `d_state` when the kwargs lack it and the config has the field.
const D_STATE: &str = "d_state";

/// `T::default()` as a JSON object (empty if it does not serialize to one).
fn defaults_of<T: Default + Serialize>() -> Map<String, Value> {
    match serde_json::to_value(T::default()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The default kwargs of config `T` as `lrnnx mixers --defaults` shows them:
/// every field of `T::default()` except `d_state` (it comes from the model)
/// and the `required` keys (they have no default).
pub fn default_kwargs<T: Default + Serialize>(required: &[&str]) -> Value {
    let mut m = defaults_of::<T>();
    m.remove(D_STATE);
    for k in required {
        m.remove(*k);
    }
    Value::Object(m)
}

/// The panic-guarded builder [`mixers!`](crate::mixers) declares beside each
/// spec, for plugins (see [`guarded_build!`](crate::guarded_build)).
#[derive(Debug, Clone, Copy)]
pub struct GuardedBuild {
    /// The mixer's registered name.
    pub name: &'static str,
    /// Its builder, wrapped.
    pub build: crate::BuildFn,
}

inventory::collect!(GuardedBuild);

/// The spec [`mixers!`](crate::mixers) declared for `name` in this binary
/// (or, in a plugin, in the plugin's own copy of the framework).
pub fn declared_spec(name: &str) -> Result<MixerSpec> {
    inventory::iter::<MixerSpec>
        .into_iter()
        .find(|s| s.name == name)
        .copied()
        .ok_or_else(|| {
            Error::Config(format!(
                "no mixer `{name}` was declared with lrnnx_framework::mixers! in this binary"
            ))
        })
}

/// Hands the host every mixer a plugin declared, each with its builder
/// guarded against panics: what a plugin's registration function does with
/// the names its `link()` returns.
///
/// ```ignore
/// fn register(host: &mut dyn Registrar) -> Result<()> {
///     lrnnx_framework::declare::register_declared(host, link())
/// }
/// lrnnx_framework::export_plugin!(register);
/// ```
pub fn register_declared(host: &mut dyn Registrar, names: &[&str]) -> Result<()> {
    for name in names {
        let mut spec = declared_spec(name)?;
        let guarded = inventory::iter::<GuardedBuild>
            .into_iter()
            .find(|g| g.name == *name)
            .ok_or_else(|| Error::Config(format!("no guarded builder declared for `{name}`")))?;
        spec.build = crate::plugin::mark_guarded(guarded.build);
        host.add(spec)?;
    }
    Ok(())
}

impl BuildArgs {
    /// Parses the kwargs into config `T` for mixer `mixer`: checks that every
    /// `required` key is given, fills `d_state` from the model when `T` has
    /// such a field and the kwargs lack it, then deserializes (`T` denies
    /// unknown fields, so a typo is an error naming the accepted keys).
    pub fn config<T: DeserializeOwned + Default + Serialize>(
        &self,
        mixer: &str,
        required: &[&str],
    ) -> Result<T> {
        if let Some(k) = required.iter().find(|k| !self.kwargs.contains_key(**k)) {
            return Err(self.bad(
                mixer,
                format!(
                    "`{k}` is required (it has no default, as in lrnnx); kwargs given: {}",
                    {
                        let keys: Vec<&str> = self.kwargs.keys().map(String::as_str).collect();
                        if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.join(", ")
                        }
                    }
                ),
            ));
        }
        let d_state = defaults_of::<T>()
            .contains_key(D_STATE)
            .then(|| (D_STATE, Value::from(self.d_state)));
        self.parse(mixer, d_state.as_slice())
    }

    /// Passes `built` through, turning a config error of mixer `mixer` into
    /// one that names the layer and the mixer.
    pub fn built<M>(&self, mixer: &str, built: Result<M>) -> Result<M> {
        built.map_err(|e| match e {
            Error::Config(m) => self.bad(mixer, m),
            other => other,
        })
    }
}

/// Declares a crate's mixers: one entry per registered name.
///
/// Each entry is `CONST = "Name" { ... }` with, in this order:
/// - `aliases: [..]`: other accepted spellings;
/// - `family:` a [`Family`](crate::Family) variant;
/// - `summary:` one line for `lrnnx mixers`;
/// - `config:` the config type (`Default + Serialize + Deserialize`; put the
///   defaults in `impl Default`, deny unknown fields);
/// - `new:` a `fn(d_model, Config, &ParamBuilder) -> Result<impl Mixer>`,
///   or `build:` a whole `fn(&BuildArgs) -> Result<Box<dyn Mixer>>` for a
///   mixer that picks its class from the kwargs (the config's `typetag` impl
///   is then the author's);
/// - optionally `required: [..]`: keys with no default (checked before
///   parsing, left out of the default kwargs).
///
/// It expands to `pub const CONST: &str = "Name"`, the config's
/// `#[typetag::serde(name = "Name")] impl MixerConfig` (with `new:`), the
/// registration, and one `pub fn link() -> &'static [&'static str]` for the
/// whole crate.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use lrnnx_framework::{
///     Family, ForwardOpts, Init, Mixer, MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
/// };
///
/// /// `y = w * x`, one weight per channel.
/// #[derive(Debug)]
/// pub struct Scale {
///     w: Tensor,
///     cfg: ScaleConfig,
/// }
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// pub struct ScaleConfig {
///     pub init: f64,
/// }
///
/// impl Default for ScaleConfig {
///     fn default() -> Self {
///         Self { init: 1.0 }
///     }
/// }
///
/// impl Scale {
///     fn new(d_model: usize, cfg: ScaleConfig, p: &ParamBuilder) -> Result<Self> {
///         Ok(Self { w: p.get(d_model, "w", Init::Const(cfg.init))?, cfg })
///     }
/// }
///
/// impl Mixer for Scale {
///     fn name(&self) -> &str { NAME }
///     fn config(&self) -> &dyn MixerConfig { &self.cfg }
///     fn family(&self) -> Family { Family::Other }
///     fn forward(&self, x: &Tensor, _: &ForwardOpts) -> Result<Tensor> {
///         Ok(x.broadcast_mul(&self.w)?)
///     }
///     fn init_state(&self, _: usize, _: usize, _: DType, _: &Device) -> Result<MixerState> {
///         Ok(MixerState::new())
///     }
///     fn step(&self, x: &Tensor, _: &mut MixerState, _: &StepOpts) -> Result<Tensor> {
///         Ok(x.broadcast_mul(&self.w)?)
///     }
/// }
///
/// lrnnx_framework::mixers! {
///     /// The registered name.
///     NAME = "Scale" {
///         aliases: ["scale"],
///         family: Other,
///         summary: "per-channel scale",
///         config: ScaleConfig,
///         new: Scale::new,
///     }
/// }
///
/// # fn main() -> lrnnx_framework::Result<()> {
/// assert_eq!(link(), ["Scale"]);
/// let spec = lrnnx_framework::Registry::get("scale")?.spec;
/// assert_eq!((spec.default_config)(), serde_json::json!({"init": 1.0}));
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! mixers {
    ($(
        $(#[$doc:meta])*
        $konst:ident = $name:tt {
            aliases: [$($alias:expr),* $(,)?],
            family: $family:ident,
            summary: $summary:expr,
            config: $cfg:ty,
            $how:ident: $build:expr
            $(, required: [$($req:expr),* $(,)?])? $(,)?
        }
    )+) => {
        $(
            $(#[$doc])*
            pub const $konst: &str = $name;
            $crate::__mixer_entry!(
                $konst, $name, [$($alias),*], $family, $summary, $cfg, [$($($req),*)?], $how: $build
            );
        )+

        /// The names this crate registers. The `lrnnx` facade calls it so
        /// that the linker keeps the crate (and so its registrations).
        pub fn link() -> &'static [&'static str] {
            &[$($konst),+]
        }
    };
}

/// One entry of [`mixers!`]. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __mixer_entry {
    ($konst:ident, $name:tt, [$($alias:expr),*], $family:ident, $summary:expr, $cfg:ty, [$($req:expr),*], new: $new:expr) => {
        const _: () = {
            use $crate::typetag;

            #[typetag::serde(name = $name)]
            impl $crate::MixerConfig for $cfg {}

            fn build(args: &$crate::BuildArgs) -> $crate::Result<::std::boxed::Box<dyn $crate::Mixer>> {
                let cfg: $cfg = args.config($konst, &[$($req),*])?;
                let mixer = args.built($konst, ($new)(args.d_model, cfg, &args.params))?;
                Ok(::std::boxed::Box::new(mixer))
            }

            $crate::__mixer_spec!($konst, [$($alias),*], $family, $summary, $cfg, [$($req),*], build);
        };
    };
    ($konst:ident, $name:tt, [$($alias:expr),*], $family:ident, $summary:expr, $cfg:ty, [$($req:expr),*], build: $build:expr) => {
        const _: () = {
            $crate::__mixer_spec!($konst, [$($alias),*], $family, $summary, $cfg, [$($req),*], $build);
        };
    };
}

/// The `inventory` submission of one entry. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __mixer_spec {
    ($konst:ident, [$($alias:expr),*], $family:ident, $summary:expr, $cfg:ty, [$($req:expr),*], $build:expr) => {
        fn default_config() -> $crate::declare::Json {
            $crate::declare::default_kwargs::<$cfg>(&[$($req),*])
        }

        // What a plugin hands its host instead of `build`: the same builder
        // with panics (in it and in the mixers it builds) caught.
        fn guarded(args: &$crate::BuildArgs) -> $crate::Result<::std::boxed::Box<dyn $crate::Mixer>> {
            $crate::plugin::call_guarded(guarded, ::core::stringify!($build), env!("CARGO_PKG_NAME"), $build, args)
        }

        $crate::inventory::submit! {
            $crate::declare::GuardedBuild { name: $konst, build: guarded }
        }

        $crate::inventory::submit! {
            $crate::MixerSpec {
                name: $konst,
                aliases: &[$($alias),*],
                family: $crate::Family::$family,
                summary: $summary,
                build: $build,
                default_config,
                source: env!("CARGO_PKG_NAME"),
            }
        }
    };
}
