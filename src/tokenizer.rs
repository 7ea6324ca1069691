//! Hugging Face tokenizers (a `tokenizer.json`) as [`Tokenizer`]s, for
//! training on and generating text with subword vocabularies (cargo feature
//! `tokenizers`, on by default).
//!
//! ```
//! use lrnnx::tokenizer::HfTokenizer;
//! use lrnnx::train::Tokenizer;
//! // A word-level vocabulary of three words, split on whitespace.
//! let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
//!   "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
//!   "decoder": null, "model": {"type": "WordLevel", "vocab": {"in": 0, "the": 1, "beginning": 2},
//!   "unk_token": "in"}}"#;
//! let tok = HfTokenizer::from_bytes(json.as_bytes())?;
//! assert_eq!(tok.encode("in the beginning")?, vec![0, 1, 2]);
//! assert_eq!(tok.vocab_size(), 3);
//! # Ok::<(), lrnnx::Error>(())
//! ```

use std::path::Path;

use crate::train::{ByteTokenizer, Tokenizer};
use crate::{Error, Result};

/// Largest `tokenizer.json` read (the big vocabularies take a few megabytes).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The file name a model directory keeps its tokenizer under.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A Hugging Face tokenizer (the `tokenizers` crate) loaded from a
/// `tokenizer.json`: encodes without adding special tokens, decodes keeping
/// them.
pub struct HfTokenizer(tokenizers::Tokenizer);

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.0.get_vocab_size(true))
            .finish_non_exhaustive()
    }
}

impl HfTokenizer {
    /// Reads `path`: a regular file of at most [`MAX_TOKENIZER_BYTES`]
    /// holding a `tokenizer.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_regular_file(path, MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        Self::from_bytes(&bytes).map_err(|e| Error::file(path, e))
    }

    /// Parses the contents of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        tokenizers::Tokenizer::from_bytes(bytes)
            .map(Self)
            .map_err(|e| Error::Config(format!("not a readable tokenizer.json: {e}")))
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.0
    }
}

fn tokenizer_error(e: tokenizers::Error) -> Error {
    Error::Config(format!("tokenizer: {e}"))
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.0.encode(text, false).map_err(tokenizer_error)?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.0.decode(ids, false).map_err(tokenizer_error)
    }

    /// Ids of the vocabulary, added tokens included.
    fn vocab_size(&self) -> usize {
        self.0.get_vocab_size(true)
    }
}

/// The tokenizer in the `tokenizer.json` at `path`, or bytes
/// ([`ByteTokenizer`]) when `None`.
pub fn load_tokenizer(path: Option<&Path>) -> Result<Box<dyn Tokenizer>> {
    match path {
        None => Ok(Box::new(ByteTokenizer)),
        Some(p) => Ok(Box::new(HfTokenizer::from_file(p)?)),
    }
}

/// The tokenizer saved next to a model (`dir/tokenizer.json`), else bytes.
pub fn tokenizer_for_model(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    let p = dir.join(TOKENIZER_FILE);
    load_tokenizer(p.exists().then_some(p.as_path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_file_that_is_not_a_tokenizer_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, b"{\"model\": 3}").unwrap();
        let e = HfTokenizer::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("not a readable tokenizer.json"),
            "{e}"
        );
        // A directory is not read.
        let e = HfTokenizer::from_file(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("expected a regular file, found a directory"),
            "{e}"
        );
        // No file: bytes.
        assert_eq!(
            tokenizer_for_model(dir.path().join("none").as_path())
                .unwrap()
                .vocab_size(),
            256
        );
    }
}
