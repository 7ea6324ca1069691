//! Language models in the tests: token ids, logits compared, decoding
//! stepped, saved checkpoints read back and edited.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, WithDType};
use lrnnx::{LRNNLMHeadModel, LmForwardOpts};

/// `(b, l)` token ids on the CPU: `(i * stride + offset) % vocab` at flat
/// position `i`, a fixed sequence that visits many ids.
pub fn token_ids(b: usize, l: usize, stride: usize, offset: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..b * l)
        .map(|i| ((i * stride + offset) % vocab) as u32)
        .collect();
    Tensor::from_vec(v, (b, l), &Device::Cpu).unwrap()
}

/// `max |t|` over every element, as a `T` (`t`'s dtype).
pub fn abs_max<T: WithDType>(t: &Tensor) -> T {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<T>()
        .unwrap()
}

/// `max |a - b|` over every element of two f32 tensors, computed in f32.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_max(&(a - b).unwrap())
}

/// `max |a - b| / max(1, max |b|)`, computed in f64: the error relative to
/// the reference `b`'s scale.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    abs_max::<f64>(&(&a - &b).unwrap()) / abs_max::<f64>(&b).max(1.0)
}

/// The logits of stepping `m` through every position of `x (B, L)` from a
/// fresh state, stacked to `(B, L, V)` like the forward's.
pub fn stepped_logits(m: &LRNNLMHeadModel, x: &Tensor) -> Tensor {
    let (b, l) = x.dims2().unwrap();
    let mut st = m.init_state(b, l).unwrap();
    let steps: Vec<Tensor> = (0..l)
        .map(|t| {
            m.step(&x.narrow(1, t, 1).unwrap(), &mut st, None)
                .unwrap()
                .unsqueeze(1)
                .unwrap()
        })
        .collect();
    Tensor::cat(&steps, 1).unwrap()
}

/// The position-`t` logits of `logits (B, L, V)` as `(B, V)`.
pub fn logits_at(logits: &Tensor, t: usize) -> Tensor {
    logits.narrow(1, t, 1).unwrap().squeeze(1).unwrap()
}

/// `config.json` of the model saved in `dir`, parsed.
pub fn saved_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The message of the error that loading the model in `dir` (no kwargs, CPU)
/// gives; panics if it loads.
pub fn load_err(dir: &Path) -> String {
    lrnnx::init();
    LRNNLMHeadModel::from_pretrained(dir, None, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

/// Lets `edit` change the tensors of `dir/model.safetensors` and writes them back.
pub fn rewrite_safetensors(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors: BTreeMap<String, Tensor> = lrnnx::io::read_safetensors(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut tensors);
    lrnnx::io::write_safetensors(&path, &tensors, None).unwrap();
}

/// The forward's logits of `m` on `x` with default options.
pub fn forward(m: &LRNNLMHeadModel, x: &Tensor) -> Tensor {
    m.forward(x, &LmForwardOpts::default()).unwrap()
}

/// A fresh state for `x (B, L)` after a prefill of its first `n` tokens,
/// with the logits of the prefill's last position `(B, V)`.
pub fn prefilled(m: &LRNNLMHeadModel, x: &Tensor, n: usize) -> (Tensor, lrnnx::LmState) {
    let (b, l) = x.dims2().unwrap();
    let mut st = m.init_state(b, l).unwrap();
    let last = m
        .prefill(
            &x.narrow(1, 0, n).unwrap(),
            &mut st,
            &LmForwardOpts::default(),
        )
        .unwrap();
    (last, st)
}
