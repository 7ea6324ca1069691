//! # lrnnx-testing
//!
//! What the tests of the mixer crates share: seeded random inputs drawn the
//! way parameters are (so a seed means the same numbers everywhere), values
//! as `f64`, and the two error measures the tests assert on. Test code: it
//! panics on failure instead of returning errors.

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
    let init = Init::Normal {
        mean: 0.0,
        std: 1.0,
    };
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

/// `max |a - b|`; the lengths must agree.
pub fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
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
