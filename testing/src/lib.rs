//! # lrnnx-testing
//!
//! What the tests of the mixer crates share: seeded random inputs drawn the
//! way parameters are (so a seed means the same numbers everywhere), values
//! as `f64`, and the two error measures the tests assert on. Test code: it
//! panics on failure instead of returning errors.

use candle_core::{DType, Device, Tensor, Var};
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

/// The central difference `(loss(v + eps e_idx) - loss(v - eps e_idx)) / 2 eps`
/// of `loss` in element `idx` of `var` (any shape; set through `f64`, so use
/// f64 variables for tight checks). `var` holds its old values afterwards.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let v = Var::new(&[1.0f64, 2.0, 3.0], &Device::Cpu).unwrap();
/// let square_sum = || v.as_tensor().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
/// let d = lrnnx_testing::central_difference(&v, 1, 1e-6, square_sum);
/// assert!((d - 4.0).abs() < 1e-6);
/// assert_eq!(lrnnx_testing::vec1(v.as_tensor()), vec![1.0, 2.0, 3.0]);
/// ```
pub fn central_difference(var: &Var, idx: usize, eps: f64, mut loss: impl FnMut() -> f64) -> f64 {
    let base = vec1(var.as_tensor());
    let (shape, dtype, device) = (var.shape().clone(), var.dtype(), var.device().clone());
    let set = |values: Vec<f64>| {
        let t = Tensor::from_vec(values, shape.clone(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(&device))
            .expect("a bumped copy of the variable");
        var.set(&t).expect("same shape and dtype");
    };
    let mut at = |delta: f64| {
        let mut bumped = base.clone();
        bumped[idx] += delta;
        set(bumped);
        let out = loss();
        set(base.clone());
        out
    };
    (at(eps) - at(-eps)) / (2.0 * eps)
}
