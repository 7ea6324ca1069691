//! Autograd against central finite differences: for any scalar loss of a
//! set of variables, and for the loss every mixer's gradient test uses.

use candle_core::{DType, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore};

use crate::{randn, vec1};

/// The step of the central differences every gradient test takes.
pub const FD_STEP: f64 = 1e-6;

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
        let t = Tensor::from_vec(values, shape.clone(), &candle_core::Device::Cpu)
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

/// The first, middle and last element of `len`: the indices most checks take.
pub fn first_middle_last(_name: &str, len: usize) -> Vec<usize> {
    vec![0, len / 2, len - 1]
}

/// What a gradient check compares and how closely.
pub struct GradientCheck<'a> {
    /// The largest `|fd - autograd| / (1 + |fd|)` allowed.
    pub tol: f64,
    /// What is checked, named in a failure.
    pub what: &'a str,
    /// The elements checked of a variable, from its name and its length.
    pub indices: &'a dyn Fn(&str, usize) -> Vec<usize>,
    /// Whether the variable of this name may get no gradient at all; its
    /// gradient is then zero, which the finite differences must confirm.
    pub may_lack_gradient: &'a dyn Fn(&str) -> bool,
}

impl GradientCheck<'static> {
    /// A check to `tol` at the first, middle and last element of every
    /// variable, each of which must get a gradient.
    pub fn new(tol: f64) -> Self {
        Self {
            tol,
            what: "",
            indices: &first_middle_last,
            may_lack_gradient: &|_| false,
        }
    }
}

impl GradientCheck<'_> {
    /// Asserts that the autograd gradient of the scalar `loss` in each of the
    /// named `vars` equals its central differences (step [`FD_STEP`]) at
    /// the checked elements. Returns how many elements were checked.
    pub fn assert(&self, vars: &[(String, Var)], loss: impl Fn() -> Tensor) -> usize {
        let what = self.what;
        let grads = loss().backward().expect("backward");
        let mut checked = 0;
        for (name, var) in vars {
            let len = var.elem_count();
            let g = match grads.get(var.as_tensor()) {
                Some(g) => vec1(g),
                None if (self.may_lack_gradient)(name) => vec![0.0; len],
                None => panic!("{what}: no gradient for {name}"),
            };
            for idx in (self.indices)(name, len) {
                let fd = central_difference(var, idx, FD_STEP, || {
                    loss().to_scalar::<f64>().expect("a scalar f64 loss")
                });
                let err = (fd - g[idx]).abs() / (1.0 + fd.abs());
                assert!(
                    err < self.tol,
                    "{what} {name}[{idx}]: autograd {} vs finite differences {fd}",
                    g[idx]
                );
                checked += 1;
            }
        }
        checked
    }

    /// The check of a mixer's gradients: of `sum(forward(x) * w)` (f64, `x`
    /// and `w` drawn `N(0, 1)` of `shape` from seeds 3 and 4) in every
    /// parameter of `store` (the mixer's) and in the input, named `x`.
    /// Returns the names of the variables checked and how many elements.
    pub fn assert_mixer(
        &self,
        m: &dyn Mixer,
        store: &ParamStore,
        shape: &[usize],
    ) -> (Vec<String>, usize) {
        let x = Var::from_tensor(&randn(shape, 3, DType::F64)).expect("input variable");
        let w = randn(shape, 4, DType::F64);
        let mut vars: Vec<(String, Var)> = store.vars().into_iter().collect();
        vars.push(("x".into(), x.clone()));
        let loss = || {
            let y = m
                .forward(x.as_tensor(), &ForwardOpts::default())
                .expect("forward");
            (y * &w).and_then(|t| t.sum_all()).expect("weighted sum")
        };
        let checked = self.assert(&vars, loss);
        (vars.into_iter().map(|(name, _)| name).collect(), checked)
    }
}
