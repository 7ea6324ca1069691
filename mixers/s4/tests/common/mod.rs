//! What the tests of the S4 and S4D layers share (the same wrapper around two
//! SSMs): the reference helpers for the wrapper (plain f64 loops) and the
//! tests that read the same for both layers, generic over [`SsmLayer`]. Each
//! test file implements [`SsmLayer`] for its layer and calls the shared tests
//! from one-line `#[test]` functions.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_testing::{central_difference, max_err, randn, vec1};
use serde_json::{json, Value};

/// How a layer's forward is computed, as the shared tests need it: both
/// layers have their own `ForwardMode` with these two variants.
pub trait Modes: Copy + Debug {
    /// The recurrence.
    const SCAN: Self;
    /// The convolution.
    const CONV: Self;
}

impl Modes for lrnnx_s4::ForwardMode {
    const SCAN: Self = Self::Scan;
    const CONV: Self = Self::Conv;
}

impl Modes for lrnnx_s4::s4d::ForwardMode {
    const SCAN: Self = Self::Scan;
    const CONV: Self = Self::Conv;
}

/// A layer the shared tests run on, with its slow reference.
pub trait SsmLayer: Mixer + Sized {
    /// The layer's arguments.
    type Config;
    /// The layer's forward modes.
    type Mode: Modes;
    /// Parameters of the gradient test's layer (gate 2, bottleneck 1,
    /// dt_tie false), the input included.
    const GRADIENT_PARAMS: usize;
    /// The config of `kw` over the test defaults.
    fn layer_config(kw: Value) -> Self::Config;
    /// The layer of width `h` and config `kw` on a fresh store drawn from `seed`.
    fn build(h: usize, kw: Value, seed: u64, dtype: DType) -> (Self, Arc<ParamStore>);
    /// The slow, obviously right forward of the layer stored in `store`.
    fn reference(
        store: &ParamStore,
        cfg: &Self::Config,
        x: &Tensor,
        lengths: Option<&[usize]>,
    ) -> Vec<f64>;
    /// Picks how the forward is computed.
    fn set_mode(&mut self, mode: Self::Mode);
    /// Configurations the shared step test runs.
    fn step_cases() -> Vec<Value>;
}

/// Implements [`SsmLayer`] for `$layer` from the test file's `config`,
/// `build`, `reference` and `step_cases` functions and its
/// `set_forward_mode`, and adds the shared tests as `#[test]` functions.
macro_rules! ssm_layer_tests {
    ($layer:ty, $config:ty, $mode:ty, gradient_params = $params:expr) => {
        impl common::SsmLayer for $layer {
            type Config = $config;
            type Mode = $mode;
            const GRADIENT_PARAMS: usize = $params;
            fn layer_config(kw: Value) -> $config {
                config(kw)
            }
            fn build(
                h: usize,
                kw: Value,
                seed: u64,
                dtype: DType,
            ) -> (Self, std::sync::Arc<ParamStore>) {
                build(h, kw, seed, dtype)
            }
            fn reference(
                store: &ParamStore,
                cfg: &$config,
                x: &Tensor,
                lengths: Option<&[usize]>,
            ) -> Vec<f64> {
                reference(store, cfg, x, lengths)
            }
            fn set_mode(&mut self, mode: $mode) {
                self.set_forward_mode(mode);
            }
            fn step_cases() -> Vec<Value> {
                step_cases()
            }
        }

        #[test]
        fn lengths_mask_the_inputs_and_l_max_truncates_the_kernel() {
            common::lengths_mask_the_inputs_and_l_max_truncates_the_kernel::<$layer>();
        }

        #[test]
        fn gradients_match_finite_differences() {
            common::gradients_match_finite_differences::<$layer>();
        }

        #[test]
        fn long_sequence_stays_finite_and_matches_stepping() {
            common::long_sequence_stays_finite_and_matches_stepping::<$layer>();
        }

        #[test]
        fn scan_equals_convolution_at_length() {
            common::scan_equals_convolution_at_length::<$layer>();
        }

        #[test]
        fn step_and_prefill_equal_forward() {
            common::step_and_prefill_equal_forward::<$layer>();
        }
    };
}
pub(crate) use ssm_layer_tests;

/// `GELU(x)`, the exact erf form.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

/// `x (rows, din) W^T + b` with `W (dout, din)`.
pub fn linear(p: &BTreeMap<String, Vec<f64>>, key: &str, x: &[f64], din: usize) -> Vec<f64> {
    let w = &p[&format!("{key}.weight")];
    let b = &p[&format!("{key}.bias")];
    let dout = b.len();
    let rows = x.len() / din;
    let mut y = vec![0.0; rows * dout];
    for r in 0..rows {
        for o in 0..dout {
            let mut acc = b[o];
            for i in 0..din {
                acc += w[o * din + i] * x[r * din + i];
            }
            y[r * dout + o] = acc;
        }
    }
    y
}

/// Every parameter of `store` as `f64` values, by name.
pub fn params(store: &ParamStore) -> BTreeMap<String, Vec<f64>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, vec1(&t)))
        .collect()
}

/// The wrapper after the SSM on plain values: `D` skip, GELUs, gates and the
/// output linear, as the layers compute them.
#[allow(clippy::too_many_arguments)]
pub fn post(
    p: &BTreeMap<String, Vec<f64>>,
    gate: Option<usize>,
    swap: bool,
    ys: &[f64],
    xs: &[f64],
    v: Option<&[f64]>,
    rows: usize,
    h: usize,
    c: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; rows * c * h];
    for r in 0..rows {
        for ci in 0..c {
            for hi in 0..h {
                let val = ys[(r * c + ci) * h + hi] + xs[r * h + hi] * p["D"][ci * h + hi];
                let col = if swap { hi * c + ci } else { ci * h + hi };
                y[r * c * h + col] = gelu(val);
            }
        }
    }
    let mut width = c * h;
    if let (Some(g), Some(v)) = (gate, v) {
        if p.contains_key("output_gate.weight") {
            y = linear(p, "output_gate", &y, width);
        }
        width = h * g;
        y = y.iter().zip(v).map(|(a, b)| a * b).collect();
    }
    let y: Vec<f64> = y.into_iter().map(gelu).collect();
    if p.contains_key("output_linear.0.weight") {
        linear(p, "output_linear.0", &y, width)
            .into_iter()
            .map(gelu)
            .collect()
    } else {
        y
    }
}

/// The layer's forward in `mode`, as `f64` values.
pub fn forward_with<L: SsmLayer>(
    m: &mut L,
    mode: L::Mode,
    x: &Tensor,
    opts: &ForwardOpts,
) -> Vec<f64> {
    m.set_mode(mode);
    vec1(&m.forward(x, opts).unwrap())
}

/// `lengths` zero the inputs past each length (a `(1,)` length broadcasts, a
/// wrong one is named); `l_max` below `L` drops the later kernel taps and
/// makes the scan refuse.
pub fn lengths_mask_the_inputs_and_l_max_truncates_the_kernel<L: SsmLayer>() {
    let (b, l, h) = (2, 40, 4);
    let (m, store) = L::build(h, json!({}), 6, DType::F64);
    let x = randn(&[b, l, h], 2, DType::F64);
    let opts = ForwardOpts {
        lengths: Some(Tensor::new(&[40i64, 23], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let got = vec1(&m.forward(&x, &opts).unwrap());
    let want = L::reference(&store, &L::layer_config(json!({})), &x, Some(&[40, 23]));
    assert!(max_err(&got, &want) < 1e-10);
    // A length equal to L everywhere changes nothing; a (1,) length broadcasts.
    let opts1 = ForwardOpts {
        lengths: Some(Tensor::new(&[23u32], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let got = vec1(&m.forward(&x, &opts1).unwrap());
    assert!(
        max_err(
            &got,
            &L::reference(&store, &L::layer_config(json!({})), &x, Some(&[23, 23]))
        ) < 1e-10
    );
    let bad = ForwardOpts {
        lengths: Some(Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let e = m.forward(&x, &bad).unwrap_err().to_string();
    assert!(e.contains("lengths") && e.contains("[3]"), "{e}");

    // l_max = 10 < L: the taps past 10 are dropped (as lrnnx); prefix outputs agree.
    let (mut ml, _) = L::build(h, json!({"l_max": 10}), 6, DType::F64);
    let full = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
    let cut = vec1(&ml.forward(&x, &ForwardOpts::default()).unwrap());
    for bi in 0..b {
        for t in 0..l {
            for i in 0..h {
                let at = (bi * l + t) * h + i;
                if t < 10 {
                    assert!((full[at] - cut[at]).abs() < 1e-12);
                }
            }
        }
    }
    assert!(max_err(&full, &cut) > 1e-6);
    ml.set_mode(L::Mode::SCAN);
    let e = ml
        .forward(&x, &ForwardOpts::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("l_max"), "{e}");
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in f64,
/// for every parameter (gate and bottleneck included) and the input, in both modes.
pub fn gradients_match_finite_differences<L: SsmLayer>() {
    let (b, l, h) = (2, 6, 3);
    let kw = json!({"d_state": 6, "gate": 2, "bottleneck": 1, "dt_tie": false});
    let (mut m, store) = L::build(h, kw, 8, DType::F64);
    let x = Var::from_tensor(&randn(&[b, l, h], 3, DType::F64)).unwrap();
    let w = randn(&[b, l, h], 4, DType::F64);
    let mut params: Vec<(String, Var)> = store.vars().into_iter().collect();
    params.push(("x".into(), x.clone()));
    assert_eq!(params.len(), L::GRADIENT_PARAMS);
    for mode in [L::Mode::SCAN, L::Mode::CONV] {
        m.set_mode(mode);
        let loss = |m: &L| -> f64 {
            (m.forward(x.as_tensor(), &ForwardOpts::default()).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (m.forward(x.as_tensor(), &ForwardOpts::default()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in &params {
            let g = vec1(
                grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}")),
            );
            let base = vec1(var.as_tensor());
            for idx in [0, base.len() / 2, base.len() - 1] {
                let eps = 1e-6;
                let fd = central_difference(var, idx, eps, || loss(&m));
                let err = (fd - g[idx]).abs() / (1.0 + fd.abs());
                assert!(
                    err < 1e-6,
                    "{mode:?} {name}[{idx}]: autograd {} vs finite differences {fd}",
                    g[idx]
                );
            }
        }
    }
}

/// L = 100000 in both modes: finite, and the last positions equal stepping
/// the recurrence on from the state a prefill of the first L - 8 positions reaches.
pub fn long_sequence_stays_finite_and_matches_stepping<L: SsmLayer>() {
    let (l, h) = (100_000, 4);
    let (mut m, _) = L::build(h, json!({"d_state": 4}), 1, DType::F32);
    let x = randn(&[1, l, h], 5, DType::F32);
    let mut st = m.init_state(1, l, DType::F32, &Device::Cpu).unwrap();
    m.prefill(
        &x.narrow(1, 0, l - 8).unwrap(),
        &mut st,
        &ForwardOpts::default(),
    )
    .unwrap();
    let mut stepped = Vec::new();
    for t in l - 8..l {
        stepped.extend(vec1(
            &m.step(&x.narrow(1, t, 1).unwrap(), &mut st, &StepOpts::default())
                .unwrap(),
        ));
    }
    for mode in [L::Mode::SCAN, L::Mode::CONV] {
        m.set_mode(mode);
        let y = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
        assert!(y.iter().all(|v| v.is_finite()), "{mode:?}");
        let err = max_err(&y[(l - 8) * h..], &stepped);
        assert!(err < 1e-4, "{mode:?}: last 8 positions vs stepping: {err}");
    }
}

/// The recurrence and the convolution agree at 300 positions.
pub fn scan_equals_convolution_at_length<L: SsmLayer>() {
    let (mut m, _) = L::build(8, json!({"d_state": 16}), 5, DType::F32);
    let x = randn(&[3, 300, 8], 1, DType::F32);
    let a = forward_with(&mut m, L::Mode::SCAN, &x, &ForwardOpts::default());
    let b = forward_with(&mut m, L::Mode::CONV, &x, &ForwardOpts::default());
    let err = max_err(&a, &b);
    assert!(err < 2e-5, "scan vs conv: {err}");
}

/// Stepping, prefill then steps, and two prefills all equal the forward.
pub fn step_and_prefill_equal_forward<L: SsmLayer>() {
    for kw in L::step_cases() {
        let (b, l, h) = (3, 40, 6);
        let (m, _) = L::build(h, kw.clone(), 2, DType::F32);
        let x = randn(&[b, l, h], 9, DType::F32);
        let y = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
        let mut st = m.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
        let mut ys = Vec::new();
        for t in 0..l {
            let xt = x.narrow(1, t, 1).unwrap();
            let xt = if t % 2 == 0 {
                xt.squeeze(1).unwrap()
            } else {
                xt
            };
            let yt = m.step(&xt, &mut st, &StepOpts::default()).unwrap();
            assert_eq!(yt.rank(), xt.rank());
            ys.push(yt.reshape((b, 1, ())).unwrap());
        }
        let err = max_err(&vec1(&Tensor::cat(&ys, 1).unwrap()), &y);
        assert!(err < 1e-5, "{kw} step vs forward: {err}");
        // Prefill (convolution path at 35 positions, scan at 5), then steps.
        for split in [35, 5] {
            let mut st = m.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
            let mut parts = vec![m
                .prefill(
                    &x.narrow(1, 0, split).unwrap(),
                    &mut st,
                    &ForwardOpts::default(),
                )
                .unwrap()];
            for t in split..l {
                parts.push(
                    m.step(&x.narrow(1, t, 1).unwrap(), &mut st, &StepOpts::default())
                        .unwrap(),
                );
            }
            let err = max_err(&vec1(&Tensor::cat(&parts, 1).unwrap()), &y);
            assert!(err < 1e-5, "{kw} prefill {split} + step vs forward: {err}");
            assert_eq!(st.seqlen_offset, l);
        }
        // Two prefills in a row (the second starts from a state).
        let mut st = m.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
        let p1 = m
            .prefill(
                &x.narrow(1, 0, 20).unwrap(),
                &mut st,
                &ForwardOpts::default(),
            )
            .unwrap();
        let p2 = m
            .prefill(
                &x.narrow(1, 20, l - 20).unwrap(),
                &mut st,
                &ForwardOpts::default(),
            )
            .unwrap();
        let err = max_err(&vec1(&Tensor::cat(&[p1, p2], 1).unwrap()), &y);
        assert!(err < 1e-5, "{kw} prefill + prefill: {err}");
    }
}
