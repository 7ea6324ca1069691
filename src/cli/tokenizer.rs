//! Tokenizers for the CLI: bytes by default, or a Hugging Face `tokenizer.json`.

use std::path::Path;

use lrnnx::train::{ByteTokenizer, Tokenizer};

/// A Hugging Face tokenizer loaded from `tokenizer.json`.
pub struct HfTokenizer(tokenizers::Tokenizer);

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> lrnnx::Result<Vec<u32>> {
        let enc = self
            .0
            .encode(text, false)
            .map_err(|e| lrnnx::Error::Config(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
    fn decode(&self, ids: &[u32]) -> lrnnx::Result<String> {
        self.0
            .decode(ids, false)
            .map_err(|e| lrnnx::Error::Config(format!("tokenizer: {e}")))
    }
    fn vocab_size(&self) -> usize {
        self.0.get_vocab_size(true)
    }
}

/// Loads `path` (a `tokenizer.json`), or the byte tokenizer when `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<Box<dyn Tokenizer>> {
    match path {
        None => Ok(Box::new(ByteTokenizer)),
        Some(p) => {
            let t = tokenizers::Tokenizer::from_file(p).map_err(|e| {
                anyhow::anyhow!("{}: not a readable tokenizer.json: {e}", p.display())
            })?;
            Ok(Box::new(HfTokenizer(t)))
        }
    }
}

/// The tokenizer saved next to a model (`tokenizer.json`), else bytes.
pub fn for_model(dir: &Path) -> anyhow::Result<Box<dyn Tokenizer>> {
    let p = dir.join("tokenizer.json");
    load(p.exists().then_some(p.as_path()))
}
