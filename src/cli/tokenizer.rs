//! Tokenizers for the CLI: bytes by default, or a Hugging Face
//! `tokenizer.json` through the library's [`lrnnx::tokenizer::HfTokenizer`].

use std::path::Path;

use lrnnx::train::Tokenizer;

/// Loads `path` (a `tokenizer.json`), or the byte tokenizer when `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<Box<dyn Tokenizer>> {
    Ok(lrnnx::tokenizer::load_tokenizer(path)?)
}

/// The tokenizer saved next to a model (`tokenizer.json`), else bytes.
pub fn for_model(dir: &Path) -> anyhow::Result<Box<dyn Tokenizer>> {
    Ok(lrnnx::tokenizer::tokenizer_for_model(dir)?)
}
