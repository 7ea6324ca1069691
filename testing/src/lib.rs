//! # lrnnx-testing
//!
//! What the tests of the mixer crates share: seeded random inputs drawn the
//! way parameters are (so a seed means the same numbers everywhere), values
//! as `f64`, and the two error measures the tests assert on. Test code: it
//! panics on failure instead of returning errors.

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Init, Mixer, MixerState, ParamStore, StepOpts};

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

/// Checks a mixer's decoding against its parallel forward on `x (B, L, H)`:
/// every position stepped from a fresh state (alternating `(B, H)` and
/// `(B, 1, H)` inputs, whose rank the output must keep), then prefills of
/// `prefills` positions each followed by steps for the rest. Each must equal
/// the forward to `tol` (max abs error); the state must count the positions.
pub fn assert_decoding_matches_forward(
    m: &dyn Mixer,
    x: &Tensor,
    prefills: &[usize],
    tol: f64,
    what: &str,
) {
    let (b, l, h) = x.dims3().expect("x is (B, L, H)");
    let (dtype, dev) = (x.dtype(), x.device());
    let want = vec1(&m.forward(x, &ForwardOpts::default()).expect("forward"));
    let position = |t: usize| x.narrow(1, t, 1).expect("position");
    let step =
        |st: &mut MixerState, xt: &Tensor| m.step(xt, st, &StepOpts::default()).expect("step");

    let mut st = m.init_state(b, l, dtype, dev).expect("state");
    let mut ys = Vec::with_capacity(l);
    for t in 0..l {
        let xt = match t % 2 {
            0 => position(t).squeeze(1).expect("(B, H) step input"),
            _ => position(t),
        };
        let yt = step(&mut st, &xt);
        assert_eq!(yt.rank(), xt.rank(), "{what}: step keeps the input's rank");
        ys.push(yt.reshape((b, 1, h)).expect("(B, 1, H)"));
    }
    assert_eq!(st.seqlen_offset, l, "{what}: positions counted by steps");
    let err = max_err(&vec1(&Tensor::cat(&ys, 1).expect("cat")), &want);
    assert!(err < tol, "{what}: step vs forward: {err:e}");

    let mut st = m.init_state(b, l, dtype, dev).expect("state");
    let mut parts = Vec::new();
    let mut t = 0;
    for &n in prefills {
        let part = x.narrow(1, t, n).expect("prefill part");
        parts.push(
            m.prefill(&part, &mut st, &ForwardOpts::default())
                .expect("prefill"),
        );
        t += n;
    }
    assert_eq!(st.seqlen_offset, t, "{what}: positions counted by prefill");
    for t in t..l {
        parts.push(step(&mut st, &position(t)));
    }
    let err = max_err(&vec1(&Tensor::cat(&parts, 1).expect("cat")), &want);
    assert!(
        err < tol,
        "{what}: prefill {prefills:?} + steps vs forward: {err:e}"
    );
}
