//! # lrnnx-testing
//!
//! What the tests of the mixer crates share: seeded random inputs drawn the
//! way parameters are (so a seed means the same numbers everywhere), values
//! as `f64`, the error measures the tests assert on, and the checks every
//! mixer's tests make: decoding against the forward ([`decoding`]),
//! gradients against finite differences ([`gradients`]), the errors of bad
//! input and kwargs ([`errors`]), options lrnnx ignores ([`options`]),
//! conformance cases ([`conformance`]) and, with feature `bench`, the
//! criterion scaffolding of the benches ([`bench`]). Test code: it panics on
//! failure instead of returning errors.

pub mod attention;
#[cfg(feature = "bench")]
pub mod bench;
pub mod conformance;
pub mod decoding;
pub mod errors;
pub mod gradients;
pub mod options;
pub mod parity;
pub mod random;

pub use conformance::{assert_case_passes, checks_step, golden_case};
pub use decoding::{
    assert_decoding_matches_forward, assert_lm_decoding_matches_forward,
    assert_prefills_then_steps_match_forward, assert_steps_match_forward,
};
pub use errors::{
    assert_mentions, assert_wrong_width_is_named, forward_error, step_error, BuildSite,
};
pub use gradients::{central_difference, first_middle_last, GradientCheck, FD_STEP};
pub use options::assert_lengths_change_nothing;
pub use parity::{assert_parity, Candidate, Tolerance};
pub use random::uniform_vec;

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{Init, ParamStore};

/// A `N(0, 1)` tensor on the CPU, reproducible from `seed`.
///
/// ```
/// use candle_core::DType;
/// let a = lrnnx_testing::randn(&[2, 3], 7, DType::F32);
/// let b = lrnnx_testing::randn(&[2, 3], 7, DType::F32);
/// assert_eq!(lrnnx_testing::vec1(&a), lrnnx_testing::vec1(&b));
/// ```
pub fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    normal(shape, seed, 0.0, 1.0, dtype)
}

/// A `N(mean, std²)` tensor on the CPU, reproducible from `seed` (the same
/// numbers as [`randn`]'s, scaled and moved).
pub fn normal(shape: &[usize], seed: u64, mean: f64, std: f64, dtype: DType) -> Tensor {
    draw(shape, seed, dtype, Init::Normal { mean, std })
}

/// A tensor on the CPU drawn from `init` as a parameter seeded `seed` is.
pub fn draw(shape: &[usize], seed: u64, dtype: DType, init: Init) -> Tensor {
    ParamStore::init(seed, dtype, &Device::Cpu)
        .builder()
        .get(shape, "x", init)
        .expect("a random tensor")
}

/// Every element of `t` (any device, any float dtype) as `f64`, flattened.
pub fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor values")
}

/// `max |a|` (0 for no elements).
pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `max |a - b|`; the lengths must agree.
pub fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `max |a - b|` over two tensors of the same shape (any device, any float
/// dtype, compared in f64).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let b = Tensor::new(&[10f64, -20.0], &Device::Cpu).unwrap();
/// let a = Tensor::new(&[10.5f64, -20.0], &Device::Cpu).unwrap();
/// assert_eq!(lrnnx_testing::max_abs_diff(&a, &b), 0.5);
/// ```
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "compared tensors differ in shape");
    max_err(&vec1(a), &vec1(b))
}

/// `max |a - b| / max(1, max |b|)`: the error relative to the reference `b`'s
/// scale (the conformance criterion's form).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let b = Tensor::new(&[10f32, -20.0], &Device::Cpu).unwrap();
/// let a = Tensor::new(&[10f32, -19.0], &Device::Cpu).unwrap();
/// assert!((lrnnx_testing::max_rel(&a, &b) - 0.05).abs() < 1e-12);
/// ```
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (vec1(a), vec1(b));
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    max_err(&a, &b) / scale
}
