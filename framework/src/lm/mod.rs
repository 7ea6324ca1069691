//! The language model: config, model, recurrent state, save and load, generation.

mod config;
pub mod foreign;
mod generate;
mod model;
mod precision;
mod pretrained;
mod ragged;
mod state_file;

pub use config::{LmConfig, MixerKwargs};
pub use generate::{generate, GenerateOpts, Sampler};
pub use model::{LRNNLMHeadModel, LmForwardOpts, LmState};
pub use precision::{LoadOptions, Precision};
pub(crate) use ragged::lengths_of;
pub use state_file::{LM_STATE_FORMAT, MAX_STATE_FILE_BYTES};
