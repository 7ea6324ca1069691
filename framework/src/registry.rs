//! The mixer registry: built-in crates register at link time with
//! [`inventory`], plugins at run time through [`Registry::add`].

use std::sync::{OnceLock, RwLock};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Error, Family, Mixer, ParamBuilder, Result};

/// The arguments a mixer's builder receives.
#[derive(Debug, Clone)]
pub struct BuildArgs {
    /// Model width `H`.
    pub d_model: usize,
    /// State size `N` the model asks for (a kwarg may override it).
    pub d_state: usize,
    /// Index of the layer in the model (0 for a standalone mixer).
    pub layer_idx: usize,
    /// Constructor keyword arguments, as lrnnx accepts them.
    pub kwargs: Map<String, Value>,
    /// Where the mixer gets its parameters (already prefixed with the layer's path).
    pub params: ParamBuilder,
}

impl BuildArgs {
    /// Parses the kwargs into the mixer's config type `T`, after filling in
    /// `defaults` for keys the kwargs lack (typically `d_state`). `T` should
    /// deny unknown fields; serde's message names the key and the accepted ones.
    pub fn parse<T: DeserializeOwned>(&self, mixer: &str, defaults: &[(&str, Value)]) -> Result<T> {
        let mut obj = self.kwargs.clone();
        obj.remove("type");
        for (k, v) in defaults {
            obj.entry(k.to_string()).or_insert_with(|| v.clone());
        }
        serde_json::from_value(Value::Object(obj)).map_err(|e| Error::BadKwargs {
            layer: self.layer_idx,
            mixer: mixer.to_string(),
            message: e.to_string(),
        })
    }

    /// An error about a kwarg's value, naming the layer and mixer.
    pub fn bad(&self, mixer: &str, message: impl Into<String>) -> Error {
        Error::BadKwargs {
            layer: self.layer_idx,
            mixer: mixer.to_string(),
            message: message.into(),
        }
    }
}

/// Builds a mixer from its arguments.
pub type BuildFn = fn(&BuildArgs) -> Result<Box<dyn Mixer>>;

/// What a mixer crate registers.
///
/// ```ignore
/// inventory::submit! {
///     lrnnx_framework::MixerSpec {
///         name: "LRU", aliases: &["lru"], family: Family::Lti,
///         summary: "Linear Recurrent Unit", build: build_lru,
///         default_config: default_lru_config, source: env!("CARGO_PKG_NAME"),
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MixerSpec {
    /// Canonical name, as in `mixer_types`.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// LTI, LTV, attention or other.
    pub family: Family,
    /// One line for `lrnnx mixers`.
    pub summary: &'static str,
    /// The builder.
    pub build: BuildFn,
    /// JSON of the default config (kwargs with every default).
    pub default_config: fn() -> Value,
    /// Crate (or plugin) that registered it.
    pub source: &'static str,
}

inventory::collect!(MixerSpec);

/// Where a registered mixer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Linked into this binary (a built-in or external crate).
    Linked,
    /// Loaded at run time from the plugin at this path.
    Plugin(std::path::PathBuf),
}

/// One registry entry.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The spec.
    pub spec: MixerSpec,
    /// Where it came from.
    pub origin: Origin,
}

/// All mixers known to this process.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<Registered>,
}

static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();

fn global() -> &'static RwLock<Registry> {
    REGISTRY.get_or_init(|| {
        let mut reg = Registry::default();
        for spec in inventory::iter::<MixerSpec> {
            // Two linked crates with one name is a build mistake; the first wins
            // and the clash is logged rather than aborting start-up.
            if let Err(e) = reg.insert(*spec, Origin::Linked) {
                tracing::warn!("{e}");
            }
        }
        RwLock::new(reg)
    })
}

impl Registry {
    fn insert(&mut self, spec: MixerSpec, origin: Origin) -> Result<()> {
        let names = std::iter::once(spec.name).chain(spec.aliases.iter().copied());
        for n in names {
            if self.find(n).is_some() {
                return Err(Error::DuplicateMixer(n.to_string()));
            }
        }
        self.entries.push(Registered { spec, origin });
        Ok(())
    }

    fn find(&self, name: &str) -> Option<&Registered> {
        self.entries
            .iter()
            .find(|r| r.spec.name == name || r.spec.aliases.contains(&name))
    }

    /// Adds a spec at run time (plugins). Refuses a name or alias already taken.
    pub fn add(spec: MixerSpec, origin: Origin) -> Result<()> {
        let mut reg = global().write().unwrap_or_else(|e| e.into_inner());
        reg.insert(spec, origin)
    }

    /// Looks a mixer up by name or alias; the error lists every registered name.
    pub fn get(name: &str) -> Result<Registered> {
        let reg = global().read().unwrap_or_else(|e| e.into_inner());
        if reg.entries.is_empty() {
            return Err(Error::NoMixersLinked(name.to_string()));
        }
        reg.find(name).cloned().ok_or_else(|| Error::UnknownMixer {
            name: name.to_string(),
            registered: reg
                .entries
                .iter()
                .map(|r| r.spec.name.to_string())
                .collect(),
        })
    }

    /// Every registered mixer, sorted by name (case-insensitive).
    pub fn all() -> Vec<Registered> {
        let reg = global().read().unwrap_or_else(|e| e.into_inner());
        let mut v = reg.entries.clone();
        v.sort_by_key(|r| r.spec.name.to_lowercase());
        v
    }

    /// Builds the mixer `name` (name or alias).
    pub fn build(name: &str, args: &BuildArgs) -> Result<Box<dyn Mixer>> {
        let entry = Self::get(name)?;
        (entry.spec.build)(args)
    }
}

/// A mixer's full configuration, serialized with typetag as `{"type": NAME, ...}`.
///
/// Deserialization goes through the [`Registry`] (the `type` tag names the spec,
/// the rest is handed to its builder as kwargs) so that configs of plugin
/// mixers, which typetag's own link-time registry never sees, read back too.
#[typetag::serde(tag = "type")]
pub trait MixerConfig: std::fmt::Debug + Send + Sync {}

/// Serializes a mixer config to JSON (`{"type": NAME, ...}`).
pub fn config_to_json(cfg: &dyn MixerConfig) -> Result<Value> {
    serde_json::to_value(cfg)
        .map_err(|e| Error::Config(format!("cannot serialize mixer config: {e}")))
}
