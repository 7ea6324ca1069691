//! The error type of the framework and of every mixer built on it.

use std::path::PathBuf;

/// Everything that can go wrong when building, loading or running a model.
///
/// Each variant says what was expected and what was found, so that a user
/// who mistyped a mixer name or handed over a tensor of the wrong shape can
/// fix it from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A mixer name that no built-in crate or loaded plugin registered.
    #[error(
        "unknown mixer `{name}`; registered mixers: {}. If `{name}` comes from a plugin, load it first \
         (`--plugin PATH` or LRNNX_PLUGIN_PATH)",
        registered.join(", ")
    )]
    UnknownMixer {
        name: String,
        registered: Vec<String>,
    },

    /// A mixer looked up before any mixer crate registered: the linker drops
    /// crates nothing references, so their registrations never ran.
    #[error(
        "no linked mixers are registered (looking up `{0}`): call lrnnx::init() at start-up \
         (or call `link()` of each mixer crate you depend on directly)"
    )]
    NoMixersLinked(String),

    /// A constructor argument a mixer does not accept, or a bad value for one.
    #[error("layer {layer} ({mixer}): {message}")]
    BadKwargs {
        layer: usize,
        mixer: String,
        message: String,
    },

    /// A model or mixer configuration that is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),

    /// An input tensor with the wrong shape, rank or dtype.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },

    /// A parameter missing from a checkpoint.
    #[error("checkpoint has no tensor `{key}`{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingTensor { key: String, hint: Option<String> },

    /// A parameter whose stored shape differs from the one the model needs.
    #[error("checkpoint tensor `{key}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// Tensors in a checkpoint that no layer of the model uses.
    #[error("checkpoint has tensors the model does not use: {}", keys.join(", "))]
    UnexpectedTensors { keys: Vec<String> },

    /// A file that could not be read, parsed or written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// A plugin that could not be loaded.
    #[error("plugin {}: {message}", path.display())]
    Plugin { path: PathBuf, message: String },

    /// A registration that clashes with one already made.
    #[error("mixer name `{0}` is already registered")]
    DuplicateMixer(String),
}

/// Result with the framework's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds a [`Error::Shape`] for an input named `what`.
    pub fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            found: format!("{found:?}"),
        }
    }

    /// Builds a [`Error::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
