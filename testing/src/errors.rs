//! The errors a mixer gives for bad input and bad kwargs, as text to assert on.

use std::sync::Arc;

use candle_core::{DType, Device};
use lrnnx_framework::{BuildArgs, ForwardOpts, Mixer, ParamStore, Registry, StepOpts};

use crate::randn;

/// The error `forward` gives for a random f32 input of `shape`; panics if it succeeds.
pub fn forward_error(m: &dyn Mixer, shape: &[usize]) -> String {
    let x = randn(shape, 1, DType::F32);
    match m.forward(&x, &ForwardOpts::default()) {
        Ok(y) => panic!("forward on {shape:?} succeeded with {:?}", y.dims()),
        Err(e) => e.to_string(),
    }
}

/// The error `step` gives for a random f32 input of `shape` (from a fresh
/// state for `shape[0]` sequences of 8 positions); panics if it succeeds.
pub fn step_error(m: &dyn Mixer, shape: &[usize]) -> String {
    let mut st = m
        .init_state(shape[0], 8, DType::F32, &Device::Cpu)
        .expect("state");
    let x = randn(shape, 1, DType::F32);
    match m.step(&x, &mut st, &StepOpts::default()) {
        Ok(y) => panic!("step on {shape:?} succeeded with {:?}", y.dims()),
        Err(e) => e.to_string(),
    }
}

/// Asserts that the message `e` mentions every one of `parts`.
pub fn assert_mentions(e: &str, parts: &[&str]) {
    for part in parts {
        assert!(e.contains(part), "{part:?} is not named in: {e}");
    }
}

/// Asserts that `forward` on a `(2, 8, d_model + 1)` input fails naming the
/// shape it expects, `(batch, seqlen, d_model)`, and the one it got.
pub fn assert_wrong_width_is_named(m: &dyn Mixer, d_model: usize) {
    let e = forward_error(m, &[2, 8, d_model + 1]);
    assert_mentions(
        &e,
        &[
            &format!("(batch, seqlen, {d_model})"),
            &format!("[2, 8, {}]", d_model + 1),
        ],
    );
}

/// Where a registry test builds its mixer: the model's sizes and the index
/// of the layer, which errors name.
#[derive(Debug, Clone, Copy)]
pub struct BuildSite {
    /// The model width `H`.
    pub d_model: usize,
    /// The state size the model asks for.
    pub d_state: usize,
    /// The index of the layer.
    pub layer_idx: usize,
}

impl BuildSite {
    /// Layer `layer_idx` of a model of width `d_model` and state size `d_state`.
    pub const fn new(d_model: usize, d_state: usize, layer_idx: usize) -> Self {
        Self {
            d_model,
            d_state,
            layer_idx,
        }
    }

    /// The build arguments with `kwargs` (a JSON object) and parameters from `store`.
    pub fn args(&self, store: &Arc<ParamStore>, kwargs: &str) -> BuildArgs {
        BuildArgs {
            d_model: self.d_model,
            d_state: self.d_state,
            layer_idx: self.layer_idx,
            kwargs: serde_json::from_str(kwargs).expect("kwargs are a JSON object"),
            params: store.builder(),
        }
    }

    /// The registered mixer `name` built with `kwargs` on fresh f32 parameters.
    pub fn build(&self, name: &str, kwargs: &str) -> lrnnx_framework::Result<Box<dyn Mixer>> {
        let store = ParamStore::init(0, DType::F32, &Device::Cpu);
        Registry::build(name, &self.args(&store, kwargs))
    }

    /// The error building the registered mixer `name` with `kwargs` gives;
    /// panics if it builds.
    pub fn build_error(&self, name: &str, kwargs: &str) -> String {
        match self.build(name, kwargs) {
            Ok(_) => panic!("{name} built with {kwargs}"),
            Err(e) => e.to_string(),
        }
    }
}
