//! Run-time plugins: mixers from a `cdylib` loaded with [`libloading`].
//!
//! # Writing a plugin
//!
//! A plugin is a crate of `crate-type = ["cdylib"]` that depends on
//! `lrnnx-framework`, defines its mixers as any mixer crate does, and ends with
//!
//! ```ignore
//! fn register(host: &mut dyn lrnnx_framework::plugin::Registrar) -> lrnnx_framework::Result<()> {
//!     host.add(MixerSpec { name: "minGRU", /* ... */ source: env!("CARGO_PKG_NAME") })
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
//!   framework version, the exact `rustc -V`, the candle-core version, the
//!   target, the panic strategy, debug assertions and the framework's features
//!   (such as `cuda`), all captured by the framework's `build.rs`.
//! - `lrnnx_plugin_v1`: `extern "C" fn(host: &mut dyn Registrar) -> PluginStatus`.
//!
//! The host opens the library, reads the fingerprint (plain bytes, readable
//! whatever compiler built the plugin) and compares it with its own **before
//! calling anything** in the plugin. Only when they are equal does it call
//! the entry. The entry takes a Rust trait object and the plugin returns
//! Rust values (a [`MixerSpec`] with function pointers, `Box<dyn Mixer>`,
//! candle tensors, [`Error`]s) through plain Rust calls: that is sound only
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
//!   [`Registry`] (it cannot build another mixer by name).
//! - Neither side may set a `#[global_allocator]`: memory allocated on one side
//!   (a boxed mixer, a tensor, an error message) is freed on the other.
//! - Panics must not cross the boundary: the host and the plugin have separate
//!   Rust runtimes, and a panic unwinding from one into the other aborts the
//!   process. The entry catches panics of the registration function, and
//!   every mixer registered through the [`Registrar`] is wrapped, inside the
//!   plugin, so that a panic in its builder or in any [`Mixer`] / [`Lti`] /
//!   [`Ltv`] method comes back as an [`Error::Plugin`]. Build plugins with
//!   `panic = "unwind"` (the default); the fingerprint records the strategy.
//! - Logs a plugin emits with `tracing` go to its own (unset) subscriber.
//! - Training through a plugin mixer is not supported: candle numbers its
//!   tensors from a counter that each copy of candle keeps for itself, and
//!   backpropagation identifies graph nodes by that number. Forward, prefill,
//!   step and generation are unaffected.
//! - A loaded plugin is never unloaded (its code backs every mixer it built);
//!   a library that is refused stays mapped too, since its initialisers
//!   already ran when it was opened.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::{
    BuildArgs, BuildFn, Discretization, Error, Family, ForwardOpts, Lti, Ltv, Mixer, MixerConfig,
    MixerSpec, MixerState, Origin, Registered, Registry, Result, StepOpts,
};

/// What a plugin must have been built with to be loaded by this host (see the module docs).
pub const ABI_FINGERPRINT: &str = env!("LRNNX_ABI_FINGERPRINT");

/// `rustc -V` of the compiler that built this framework.
pub const RUSTC_VERSION: &str = env!("LRNNX_RUSTC_VERSION");

/// Name of the fingerprint symbol a plugin exports.
pub const FINGERPRINT_SYMBOL: &str = "lrnnx_plugin_fingerprint";

/// Name of the registration entry a plugin exports.
pub const ENTRY_SYMBOL: &str = "lrnnx_plugin_v1";

/// The environment variable searched at start-up: plugin files or directories,
/// separated by `:` (`;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "LRNNX_PLUGIN_PATH";

/// Length of [`FINGERPRINT_C`], the trailing NUL included.
#[doc(hidden)]
pub const FINGERPRINT_C_LEN: usize = ABI_FINGERPRINT.len() + 1;

/// [`ABI_FINGERPRINT`] as a NUL-terminated byte array (the exported symbol's value).
#[doc(hidden)]
pub const FINGERPRINT_C: [u8; FINGERPRINT_C_LEN] = {
    let src = ABI_FINGERPRINT.as_bytes();
    let mut out = [0u8; FINGERPRINT_C_LEN];
    let mut i = 0;
    while i < src.len() {
        out[i] = src[i];
        i += 1;
    }
    out
};

/// Longest fingerprint the host reads before giving up on finding its NUL.
const MAX_FINGERPRINT: usize = 4096;

/// Most mixers one plugin can register (each gets a panic-catching builder slot).
pub const MAX_MIXERS_PER_PLUGIN: usize = 32;

/// What a plugin's registration function receives from the host.
pub trait Registrar {
    /// Registers a mixer. Refuses ([`Error::DuplicateMixer`]) a name or alias
    /// that is already registered. Nothing is registered unless the whole
    /// registration function succeeds.
    fn add(&mut self, spec: MixerSpec) -> Result<()>;

    /// The path the plugin was loaded from.
    fn plugin_path(&self) -> &Path;
}

/// The signature of a plugin's registration function, as passed to [`export_plugin!`](crate::export_plugin).
pub type RegisterFn = fn(&mut dyn Registrar) -> Result<()>;

/// Registration succeeded.
pub const STATUS_OK: u32 = 0;
/// The registration function returned an error.
pub const STATUS_ERROR: u32 = 1;
/// The registration function panicked.
pub const STATUS_PANIC: u32 = 2;

/// What the entry returns: a status code and, unless it is [`STATUS_OK`], a
/// message (a `CString` allocated by the plugin, owned by the host after the call).
#[repr(C)]
#[derive(Debug)]
pub struct PluginStatus {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub code: u32,
    /// NUL-terminated message, or null.
    pub message: *mut c_char,
}

/// The entry's type. A Rust trait object passes through `extern "C"`: see the module docs.
#[allow(improper_ctypes_definitions)]
pub type PluginEntry = unsafe extern "C" fn(host: &mut dyn Registrar) -> PluginStatus;

/// Defines a plugin's exported symbols: the ABI fingerprint and the entry
/// `lrnnx_plugin_v1`, which runs `register` with panics caught (a panic comes
/// back to the host as an error). Use it once, at the root of a `cdylib` crate.
///
/// ```ignore
/// fn register(host: &mut dyn lrnnx_framework::plugin::Registrar) -> lrnnx_framework::Result<()> {
///     host.add(my_spec())
/// }
/// lrnnx_framework::export_plugin!(register);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        /// The ABI fingerprint the host checks before calling anything here.
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static lrnnx_plugin_fingerprint: [u8; $crate::plugin::FINGERPRINT_C_LEN] =
            $crate::plugin::FINGERPRINT_C;

        /// The registration entry the host calls after the fingerprint check.
        #[doc(hidden)]
        #[allow(improper_ctypes_definitions)]
        #[unsafe(no_mangle)]
        pub extern "C" fn lrnnx_plugin_v1(
            host: &mut dyn $crate::plugin::Registrar,
        ) -> $crate::plugin::PluginStatus {
            $crate::plugin::run_registration(host, $register)
        }
    };
}

// ---------------------------------------------------------------------------
// Plugin side: this code runs in the plugin's own copy of the framework.

/// Runs a plugin's registration function for the entry: panics are caught,
/// every spec's builder is wrapped so that its mixers catch their panics too.
#[doc(hidden)]
pub fn run_registration(host: &mut dyn Registrar, register: RegisterFn) -> PluginStatus {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut guarding = GuardingRegistrar { host };
        register(&mut guarding)
    }));
    match outcome {
        Ok(Ok(())) => PluginStatus {
            code: STATUS_OK,
            message: std::ptr::null_mut(),
        },
        Ok(Err(e)) => status(STATUS_ERROR, &e.to_string()),
        Err(payload) => status(STATUS_PANIC, &panic_message(payload.as_ref())),
    }
}

fn status(code: u32, message: &str) -> PluginStatus {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    PluginStatus {
        code,
        message: c.into_raw(),
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// The builders of the mixers this copy of the framework registered, by slot.
struct Slot {
    build: BuildFn,
    name: &'static str,
    plugin: PathBuf,
}

static SLOTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// Wraps the host's registrar: each spec's builder goes into a slot and the
/// host receives a trampoline that calls it with panics caught.
struct GuardingRegistrar<'a> {
    host: &'a mut dyn Registrar,
}

impl Registrar for GuardingRegistrar<'_> {
    fn add(&mut self, mut spec: MixerSpec) -> Result<()> {
        let plugin = self.host.plugin_path().to_path_buf();
        let slot = {
            let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_MIXERS_PER_PLUGIN {
                return Err(Error::Plugin {
                    path: plugin,
                    message: format!(
                        "a plugin registers at most {MAX_MIXERS_PER_PLUGIN} mixers; `{}` is one too many",
                        spec.name
                    ),
                });
            }
            slots.push(Slot {
                build: spec.build,
                name: spec.name,
                plugin,
            });
            slots.len() - 1
        };
        spec.build = TRAMPOLINES[slot];
        self.host.add(spec)
    }

    fn plugin_path(&self) -> &Path {
        self.host.plugin_path()
    }
}

fn guarded_build(slot: usize, args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let (build, name, plugin) = {
        let slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let s = slots.get(slot).ok_or_else(|| {
            Error::Config(format!("plugin builder slot {slot} is not registered"))
        })?;
        (s.build, s.name, s.plugin.clone())
    };
    match catch_unwind(AssertUnwindSafe(|| build(args))) {
        Ok(Ok(inner)) => Ok(Box::new(Guarded {
            inner,
            name,
            plugin,
        })),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(Error::Plugin {
            path: plugin,
            message: format!(
                "mixer `{name}` panicked while building layer {}: {}",
                args.layer_idx,
                panic_message(p.as_ref())
            ),
        }),
    }
}

fn trampoline<const SLOT: usize>(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    guarded_build(SLOT, args)
}

macro_rules! trampolines {
    ($($i:literal)*) => { [$(trampoline::<$i> as BuildFn),*] };
}

const TRAMPOLINES: [BuildFn; MAX_MIXERS_PER_PLUGIN] = trampolines!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
);

/// A plugin's mixer with every call guarded against panics (built inside the plugin).
#[derive(Debug)]
struct Guarded {
    inner: Box<dyn Mixer>,
    name: &'static str,
    plugin: PathBuf,
}

impl Guarded {
    fn call<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(Error::Plugin {
                path: self.plugin.clone(),
                message: format!(
                    "mixer `{}` panicked in {what}: {}",
                    self.name,
                    panic_message(p.as_ref())
                ),
            })
        })
    }

    fn lti(&self) -> Result<&dyn Lti> {
        self.inner
            .as_lti()
            .ok_or_else(|| Error::Config(format!("mixer `{}` is not LTI", self.name)))
    }

    fn ltv(&self) -> Result<&dyn Ltv> {
        self.inner
            .as_ltv()
            .ok_or_else(|| Error::Config(format!("mixer `{}` is not LTV", self.name)))
    }
}

impl Mixer for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn config(&self) -> &dyn MixerConfig {
        self.inner.config()
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        self.call("forward", || self.inner.forward(x, opts))
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor> {
        self.call("step", || self.inner.step(x, state, opts))
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        self.call("prefill", || self.inner.prefill(x, state, opts))
    }

    fn init_state(
        &self,
        batch: usize,
        max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        self.call("init_state", || {
            self.inner.init_state(batch, max_seqlen, dtype, device)
        })
    }

    fn family(&self) -> Family {
        self.inner.family()
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        self.inner.as_lti().map(|_| self as &dyn Lti)
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        self.inner.as_ltv().map(|_| self as &dyn Ltv)
    }
}

impl Lti for Guarded {
    fn kernel(&self, len: usize) -> Result<Tensor> {
        self.call("kernel", || self.lti()?.kernel(len))
    }

    fn discretization(&self) -> Discretization {
        self.lti()
            .map(|l| l.discretization())
            .unwrap_or(Discretization::None)
    }
}

impl Ltv for Guarded {
    fn discretization(&self) -> Discretization {
        self.ltv()
            .map(|l| l.discretization())
            .unwrap_or(Discretization::None)
    }

    fn supports_events(&self) -> bool {
        self.ltv().map(|l| l.supports_events()).unwrap_or(false)
    }
}

// ---------------------------------------------------------------------------
// Host side.

/// A plugin this process loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPlugin {
    /// Canonical path of the library.
    pub path: PathBuf,
    /// Canonical names of the mixers it registered.
    pub mixers: Vec<String>,
}

static LOADED: Mutex<Vec<LoadedPlugin>> = Mutex::new(Vec::new());

/// Every plugin loaded so far, in load order.
pub fn loaded_plugins() -> Vec<LoadedPlugin> {
    LOADED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn plugin_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Plugin {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The host's registrar: collects specs, checks names, commits on success.
struct PendingRegistrar {
    path: PathBuf,
    specs: Vec<MixerSpec>,
    conflict: Option<String>,
}

fn names(spec: &MixerSpec) -> impl Iterator<Item = &'static str> {
    std::iter::once(spec.name).chain(spec.aliases.iter().copied())
}

impl Registrar for PendingRegistrar {
    fn add(&mut self, spec: MixerSpec) -> Result<()> {
        for n in names(&spec) {
            let by = match Registry::get(n) {
                Ok(r) => Some(source_label(&r)),
                Err(_) => self
                    .specs
                    .iter()
                    .any(|s| names(s).any(|m| m == n))
                    .then(|| "this plugin".to_string()),
            };
            if let Some(by) = by {
                self.conflict = Some(format!("`{n}` is taken by {by}"));
                return Err(Error::DuplicateMixer(n.to_string()));
            }
        }
        self.specs.push(spec);
        Ok(())
    }

    fn plugin_path(&self) -> &Path {
        &self.path
    }
}

/// Loads the plugin at `path` and registers its mixers (all or none).
///
/// Loading a path already loaded returns the earlier result. Every failure is
/// an [`Error::Plugin`] naming the path and what was expected: a file that is
/// not a loadable library, a library without the fingerprint symbol, a
/// fingerprint other than this host's [`ABI_FINGERPRINT`] (the entry is then
/// never called), a missing entry, a registration that fails (a duplicate
/// mixer name, say) or panics. The registry is unchanged by a failed load.
pub fn load_plugin(path: impl AsRef<Path>) -> Result<LoadedPlugin> {
    let given = path.as_ref();
    let path = given
        .canonicalize()
        .map_err(|e| plugin_error(given, format!("cannot open the plugin file: {e}")))?;
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = loaded.iter().find(|p| p.path == path) {
        return Ok(p.clone());
    }
    // SAFETY: opening a library runs its initialisers; that is the one thing
    // a plugin does before its fingerprint is checked, as with any dlopen.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
        plugin_error(
            &path,
            format!("not a loadable shared library (expected a cdylib built with lrnnx_framework::export_plugin!): {e}"),
        )
    })?;
    // Never unloaded: the plugin's code backs every spec and mixer it hands out.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));

    let found = read_fingerprint(lib).map_err(|m| plugin_error(&path, m))?;
    if found != ABI_FINGERPRINT {
        return Err(plugin_error(
            &path,
            format!(
                "ABI fingerprint mismatch: this host expects `{ABI_FINGERPRINT}` but the plugin was \
                 built with `{found}`; rebuild the plugin against this lrnnx-framework with the same \
                 compiler, candle version, profile and features"
            ),
        ));
    }

    // SAFETY: the fingerprint matched, so the symbol has the type the same
    // framework's `export_plugin!` gave it.
    let entry: PluginEntry = unsafe {
        lib.get::<PluginEntry>(nul_terminated(ENTRY_SYMBOL).as_bytes())
            .map(|s| *s)
    }
    .map_err(|e| {
        plugin_error(
            &path,
            format!(
                "the ABI fingerprint matches but the registration entry `{ENTRY_SYMBOL}` is missing \
                 (define it with lrnnx_framework::export_plugin!): {e}"
            ),
        )
    })?;

    let mut registrar = PendingRegistrar {
        path: path.clone(),
        specs: Vec::new(),
        conflict: None,
    };
    // SAFETY: same compiler, framework and features on both sides (fingerprint).
    let status = unsafe { entry(&mut registrar) };
    let message = if status.message.is_null() {
        String::new()
    } else {
        // SAFETY: a CString the plugin leaked for us; one allocator on both sides.
        unsafe { CString::from_raw(status.message) }
            .to_string_lossy()
            .into_owned()
    };
    match status.code {
        STATUS_OK => {}
        STATUS_ERROR => {
            let detail = registrar
                .conflict
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(plugin_error(
                &path,
                format!("registration failed: {message}{detail}"),
            ));
        }
        STATUS_PANIC => {
            return Err(plugin_error(
                &path,
                format!("registration panicked: {message}"),
            ))
        }
        other => {
            return Err(plugin_error(
                &path,
                format!("registration returned unknown status {other}: {message}"),
            ))
        }
    }
    if registrar.specs.is_empty() {
        return Err(plugin_error(&path, "the plugin registered no mixer"));
    }
    let mut mixers = Vec::new();
    for spec in registrar.specs {
        Registry::add(spec, Origin::Plugin(path.clone()))
            .map_err(|e| plugin_error(&path, e.to_string()))?;
        mixers.push(spec.name.to_string());
    }
    tracing::info!(plugin = %path.display(), ?mixers, "plugin loaded");
    let plugin = LoadedPlugin { path, mixers };
    loaded.push(plugin.clone());
    Ok(plugin)
}

fn nul_terminated(s: &str) -> String {
    format!("{s}\0")
}

/// Reads the exported fingerprint as text.
fn read_fingerprint(lib: &libloading::Library) -> std::result::Result<String, String> {
    // SAFETY: the symbol's address is only read as bytes, up to a NUL or
    // MAX_FINGERPRINT bytes.
    let ptr = unsafe { lib.get::<*const u8>(nul_terminated(FINGERPRINT_SYMBOL).as_bytes()) }
        .map(|s| *s)
        .map_err(|e| {
            format!(
                "not an lrnnx plugin: the ABI fingerprint symbol `{FINGERPRINT_SYMBOL}` is missing \
                 (define it with lrnnx_framework::export_plugin!): {e}"
            )
        })?;
    if ptr.is_null() {
        return Err(format!("the symbol `{FINGERPRINT_SYMBOL}` is null"));
    }
    let mut bytes = Vec::new();
    for i in 0..MAX_FINGERPRINT {
        // SAFETY: see above.
        let b = unsafe { *ptr.add(i) };
        if b == 0 {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        bytes.push(b);
    }
    Err(format!(
        "the ABI fingerprint `{FINGERPRINT_SYMBOL}` is not a NUL-terminated string of at most \
         {MAX_FINGERPRINT} bytes"
    ))
}

/// The plugin files a search-path list names: each entry (separated by `:`,
/// `;` on Windows; empty entries skipped) is a library file, or a directory
/// whose files with the platform's library extension (`.so`, `.dylib`, `.dll`)
/// are taken in name order.
pub fn plugin_files(list: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::env::split_paths(list) {
        if entry.as_os_str().is_empty() {
            continue;
        }
        if entry.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&entry)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file()
                                && p.extension().and_then(|e| e.to_str())
                                    == Some(std::env::consts::DLL_EXTENSION)
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            files.extend(found);
        } else {
            files.push(entry);
        }
    }
    files
}

/// Loads every plugin a search-path list names (see [`plugin_files`]); one
/// result per file, in order. A failure does not stop the others.
pub fn load_plugin_list(list: &str) -> Vec<Result<LoadedPlugin>> {
    plugin_files(list).into_iter().map(load_plugin).collect()
}

/// Loads the plugins named by `LRNNX_PLUGIN_PATH` (nothing when unset).
pub fn load_env_plugins() -> Vec<Result<LoadedPlugin>> {
    match std::env::var(PLUGIN_PATH_VAR) {
        Ok(list) => load_plugin_list(&list),
        Err(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Recording where a saved model's mixers came from.

/// Prefix of a recorded source that names a plugin file.
pub const PLUGIN_SOURCE_PREFIX: &str = "plugin:";

/// Where a registered mixer comes from, as a model config records it: the
/// crate name for a linked mixer, `plugin:PATH` for a plugin's.
pub fn source_label(entry: &Registered) -> String {
    match &entry.origin {
        Origin::Linked => entry.spec.source.to_string(),
        Origin::Plugin(p) => format!("{PLUGIN_SOURCE_PREFIX}{}", p.display()),
    }
}

/// Turns the [`Error::UnknownMixer`] met while building layer `layer` into
/// an error naming where the mixer came from when the model was saved
/// (`recorded`, a [`source_label`]): for a plugin, an [`Error::Plugin`] naming
/// the plugin and how to load it. Other errors pass through.
pub fn explain_missing_mixer(err: Error, layer: usize, recorded: Option<&str>) -> Error {
    let (Error::UnknownMixer { name, registered }, Some(src)) = (&err, recorded) else {
        return err;
    };
    if let Some(path) = src.strip_prefix(PLUGIN_SOURCE_PREFIX) {
        return Error::Plugin {
            path: PathBuf::from(path),
            message: format!(
                "layer {layer} uses mixer `{name}`, which this plugin registered when the model was \
                 saved, but the plugin is not loaded; load it with `--plugin {path}` or list it in \
                 {PLUGIN_PATH_VAR} (library: lrnnx_framework::plugin::load_plugin)"
            ),
        };
    }
    Error::Config(format!(
        "layer {layer} uses mixer `{name}` from crate `{src}`, which this program does not link \
         (registered mixers: {})",
        registered.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_names_compiler_versions_and_features() {
        assert!(ABI_FINGERPRINT.starts_with("lrnnx-plugin-abi v1; lrnnx-framework "));
        assert!(ABI_FINGERPRINT.contains(RUSTC_VERSION), "{ABI_FINGERPRINT}");
        assert!(RUSTC_VERSION.starts_with("rustc "), "{RUSTC_VERSION}");
        assert!(
            ABI_FINGERPRINT.contains("candle-core 0."),
            "{ABI_FINGERPRINT}"
        );
        assert_eq!(
            ABI_FINGERPRINT.contains("features [cuda]"),
            cfg!(feature = "cuda")
        );
        assert_eq!(
            &FINGERPRINT_C[..ABI_FINGERPRINT.len()],
            ABI_FINGERPRINT.as_bytes()
        );
        assert_eq!(FINGERPRINT_C[ABI_FINGERPRINT.len()], 0);
    }

    #[test]
    fn missing_and_non_library_files_are_plugin_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.so");
        let e = load_plugin(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.so") && e.contains("cannot open"), "{e}");

        let junk = dir.path().join("junk.so");
        std::fs::write(&junk, b"\x7fELF but not really, just some bytes").unwrap();
        let e = load_plugin(&junk).unwrap_err();
        assert!(matches!(e, Error::Plugin { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("junk.so") && e.contains("not a loadable shared library"),
            "{e}"
        );
    }

    #[test]
    fn search_path_lists_files_and_library_files_of_directories() {
        let dir = tempfile::tempdir().unwrap();
        let ext = std::env::consts::DLL_EXTENSION;
        for f in [
            format!("b.{ext}"),
            format!("a.{ext}"),
            "notes.txt".to_string(),
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let single = dir.path().join("notes.txt");
        let list = std::env::join_paths([dir.path(), Path::new(""), single.as_path()])
            .unwrap()
            .into_string()
            .unwrap();
        let files = plugin_files(&list);
        assert_eq!(
            files,
            vec![
                dir.path().join(format!("a.{ext}")),
                dir.path().join(format!("b.{ext}")),
                single
            ]
        );
        // Every file fails (none is a library), each with its own error.
        assert!(load_plugin_list(&list).iter().all(|r| r.is_err()));
    }

    #[test]
    fn a_missing_plugin_mixer_names_the_plugin() {
        let unknown = || Error::UnknownMixer {
            name: "minGRU".into(),
            registered: vec!["LRU".into()],
        };
        let e = explain_missing_mixer(unknown(), 2, Some("plugin:/opt/p/libmingru.so")).to_string();
        assert!(
            e.contains("/opt/p/libmingru.so")
                && e.contains("layer 2")
                && e.contains("`minGRU`")
                && e.contains("--plugin"),
            "{e}"
        );
        let e = explain_missing_mixer(unknown(), 0, Some("my-crate")).to_string();
        assert!(e.contains("my-crate") && e.contains("minGRU"), "{e}");
        let e = explain_missing_mixer(unknown(), 0, None).to_string();
        assert!(e.starts_with("unknown mixer"), "{e}");
    }
}
