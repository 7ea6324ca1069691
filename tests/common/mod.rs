//! What the facade's integration tests share: running the `lrnnx` binary
//! ([`cli`]) and building, stepping, saving and reloading language models
//! ([`lm`]). Each test file is its own crate and uses only part of this.
#![allow(dead_code)]

pub mod cli;
pub mod lm;

/// Asserts that the message `e` mentions every one of `parts`.
pub fn assert_mentions(e: &str, parts: &[&str]) {
    for part in parts {
        assert!(e.contains(part), "{part:?} is not named in: {e}");
    }
}
