//! # lrnnx-framework
//!
//! The core of lrnnx: the [`Mixer`] / [`Lti`] / [`Ltv`] traits every sequence
//! mixer implements, the [`Registry`] mixers join (at link time with
//! `inventory`, at run time through plugins), one [`Discretization`] module,
//! the layers of a block, and the [`LRNNLMHeadModel`] language model with its
//! save, load and generation.
//!
//! This crate names no mixer; the mixer crates (`lrnnx-lru`, `lrnnx-attn`, ...)
//! depend on it and register themselves.

pub mod complex;
pub mod conformance;
pub mod declare;
pub mod device;
pub mod discretization;
pub mod error;
pub mod io;
pub mod layers;
pub mod lm;
pub mod mixer;
pub mod params;
pub mod plugin;
pub mod pytorch;
pub mod registry;
pub mod state;
pub mod train;

pub use complex::Complex;
pub use discretization::{Discrete, Discretization};
pub use error::{Error, Result};
pub use lm::{
    generate, GenerateOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts, LmState, LoadOptions,
    MixerKwargs, Precision, Sampler, LM_STATE_FORMAT, MAX_STATE_FILE_BYTES,
};
pub use mixer::{
    check_sequence, check_step_input, match_step_rank, Family, ForwardOpts, Lti, Ltv, Mixer,
    StepOpts,
};
pub use params::{Init, ParamBuilder, ParamStore, Role};
pub use plugin::{load_plugin, LoadedPlugin, Registrar};
pub use registry::{
    config_to_json, BuildArgs, BuildFn, MixerConfig, MixerSpec, Origin, Registered, Registry,
};
pub use state::MixerState;

// Re-exported so that mixer crates and plugins register with the very same
// `inventory` and `typetag` the framework collects from.
pub use inventory;
pub use typetag;
