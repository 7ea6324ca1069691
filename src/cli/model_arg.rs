//! The model directory of `info` and `generate`: a positional `MODEL`, or
//! the same as `--model MODEL` (the spelling `generate` always took).
//!
//! The flag spellings every subcommand shares (old spellings stay as visible
//! aliases):
//!
//! | concept | canonical | also accepted |
//! |---|---|---|
//! | model directory | positional `MODEL` | `--model MODEL` |
//! | tokens per sequence | `--seq-len` | `--seqlen` |
//! | sequences per batch | `--batch-size` | `--batch` |
//! | tokens to generate | `--max-tokens` | `--tokens` |

use std::path::{Path, PathBuf};

/// A model directory, given positionally or with `--model` (exactly one).
/// Its Debug text is the directory alone, whichever spelling gave it.
#[derive(Clone, clap::Args)]
#[group(id = "model_dir", required = true, multiple = false)]
pub struct ModelArg {
    /// Model directory: `config.json` + `model.safetensors` (ours) or
    /// `pytorch_model.bin` (Python lrnnx's; add --mixer-kwargs if it needs them).
    #[arg(value_name = "MODEL")]
    positional: Option<PathBuf>,
    /// The model directory as a flag (the same as the positional MODEL).
    #[arg(long = "model", value_name = "MODEL")]
    flag: Option<PathBuf>,
}

impl ModelArg {
    /// The model directory `path`, as if given positionally.
    pub fn new(path: PathBuf) -> Self {
        Self {
            positional: Some(path),
            flag: None,
        }
    }

    /// The directory given. Clap requires one of the two spellings; a value
    /// built without either (not through clap) is an error, not a panic.
    pub fn path(&self) -> anyhow::Result<&Path> {
        self.positional
            .as_deref()
            .or(self.flag.as_deref())
            .ok_or_else(|| {
                anyhow::anyhow!("expected a model directory (MODEL or --model MODEL), found none")
            })
    }
}

impl std::fmt::Debug for ModelArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ModelArg")
            .field(&self.positional.as_ref().or(self.flag.as_ref()))
            .finish()
    }
}
