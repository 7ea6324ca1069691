//! The host side: loading a plugin library, checking its fingerprint,
//! registering its mixers; and naming, in a saved model, where each mixer
//! came from.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::abi::{
    PluginEntry, Registrar, ABI_FINGERPRINT, ENTRY_SYMBOL, FINGERPRINT_SYMBOL, MAX_FINGERPRINT,
    STATUS_ERROR, STATUS_OK, STATUS_PANIC,
};
use super::discovery::PLUGIN_PATH_VAR;
use crate::{Error, MixerSpec, Origin, Registered, Registry, Result};

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
    // dlopen of a FIFO would block forever, of a device read without end.
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(plugin_error(
                &path,
                "expected a shared library (a regular file), found a directory, FIFO or device",
            ))
        }
        Err(e) => {
            return Err(plugin_error(
                &path,
                format!("cannot open the plugin file: {e}"),
            ))
        }
    }
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
