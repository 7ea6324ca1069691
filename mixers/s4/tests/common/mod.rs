//! What the tests of the S4 and S4D layers share (the same wrapper around two
//! SSMs): the reference helpers for the wrapper (plain f64 loops) and the
//! tests that read the same for both layers, generic over [`SsmLayer`]. Each
//! test file implements [`SsmLayer`] for its layer and calls the shared tests
//! from one-line `#[test]` functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Lti, Mixer, ParamBuilder, ParamStore, Result, StepOpts};
use lrnnx_s4::ssm::{SsmBlockConfig, SsmDisc};
use lrnnx_s4::ForwardMode;
use lrnnx_testing::{
    assert_mentions, assert_wrong_width_is_named, central_difference, max_err, randn, step_error,
    vec1, BuildSite,
};
use serde_json::{json, Value};

/// The parameters of a stored layer as `f64` values, by name.
pub type Params = BTreeMap<String, Vec<f64>>;

/// A layer the shared tests run on, with its slow reference.
pub trait SsmLayer: Mixer + Sized {
    /// The type of the layer's `disc` argument.
    type Disc: SsmDisc;
    /// The layer's registered name.
    const NAME: &'static str;
    /// Parameters of the gradient test's layer (gate 2, bottleneck 1,
    /// dt_tie false), the input included.
    const GRADIENT_PARAMS: usize;
    /// The layer's constructor.
    fn new_layer(h: usize, cfg: SsmBlockConfig<Self::Disc>, pb: &ParamBuilder) -> Result<Self>;
    /// The SSM part of the slow, obviously right forward of the layer stored
    /// as `p`: `ys (B, L, channels, H)` from the SSM's input `xs (B, L, H)`.
    fn reference_ssm(
        p: &Params,
        cfg: &SsmBlockConfig<Self::Disc>,
        xs: &[f64],
        dims: (usize, usize, usize),
    ) -> Vec<f64>;
    /// Picks how the forward is computed.
    fn set_mode(&mut self, mode: ForwardMode);
    /// Configurations the shared step test runs.
    fn step_cases() -> Vec<Value>;
}

/// The config of `kw` over the test defaults (`d_state = 8`, `transposed = false`).
pub fn config<D: SsmDisc>(kw: Value) -> SsmBlockConfig<D> {
    let mut obj = json!({"d_state": 8, "transposed": false});
    for (k, v) in kw.as_object().unwrap() {
        obj[k] = v.clone();
    }
    serde_json::from_value(obj).unwrap()
}

/// The layer of width `h` and config `kw` on a fresh store drawn from `seed`.
pub fn build<L: SsmLayer>(h: usize, kw: Value, seed: u64, dtype: DType) -> (L, Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = L::new_layer(h, config(kw), &store.builder()).unwrap();
    (m, store)
}

/// The whole layer stored in `store` in f64 loops: mask, gate, bottleneck,
/// the layer's reference SSM, D, two GELUs, output gate, output linear + GELU.
pub fn reference<L: SsmLayer>(
    store: &ParamStore,
    cfg: &SsmBlockConfig<L::Disc>,
    x: &Tensor,
    lengths: Option<&[usize]>,
) -> Vec<f64> {
    let p = params(store);
    let (b, l, h) = x.dims3().unwrap();
    let mut xs = vec1(x);
    if let Some(lens) = lengths {
        for bi in 0..b {
            for t in lens[bi]..l {
                for i in 0..h {
                    xs[(bi * l + t) * h + i] = 0.0;
                }
            }
        }
    }
    let v = cfg.gate.map(|_| {
        linear(&p, "input_gate.0", &xs, h)
            .into_iter()
            .map(gelu)
            .collect::<Vec<_>>()
    });
    if cfg.bottleneck.is_some() {
        xs = linear(&p, "input_linear", &xs, h);
    }
    let ys = L::reference_ssm(&p, cfg, &xs, (b, l, h));
    post(
        &p,
        cfg.gate,
        cfg.swap_channels,
        &ys,
        &xs,
        v.as_deref(),
        b * l,
        h,
        cfg.channels,
    )
}

/// Implements [`SsmLayer`] for `$layer` from the test file's
/// `reference_ssm` and `step_cases` functions and the layer's `new` and
/// `set_forward_mode`, and adds the shared tests as `#[test]` functions.
macro_rules! ssm_layer_tests {
    // One `#[test]` per shared test function, run on `$layer`.
    (@tests $layer:ty: $($test:ident),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                common::$test::<$layer>();
            }
        )+
    };
    ($layer:ty, $disc:ty, name = $name:expr, gradient_params = $params:expr) => {
        impl common::SsmLayer for $layer {
            type Disc = $disc;
            const NAME: &'static str = $name;
            const GRADIENT_PARAMS: usize = $params;
            fn new_layer(
                h: usize,
                cfg: lrnnx_s4::ssm::SsmBlockConfig<$disc>,
                pb: &lrnnx_framework::ParamBuilder,
            ) -> lrnnx_framework::Result<Self> {
                <$layer>::new(h, cfg, pb)
            }
            fn reference_ssm(
                p: &common::Params,
                cfg: &lrnnx_s4::ssm::SsmBlockConfig<$disc>,
                xs: &[f64],
                dims: (usize, usize, usize),
            ) -> Vec<f64> {
                reference_ssm(p, cfg, xs, dims)
            }
            fn set_mode(&mut self, mode: lrnnx_s4::ForwardMode) {
                self.set_forward_mode(mode);
            }
            fn step_cases() -> Vec<Value> {
                step_cases()
            }
        }

        common::ssm_layer_tests!(@tests $layer:
            lengths_mask_the_inputs_and_l_max_truncates_the_kernel,
            gradients_match_finite_differences,
            long_sequence_stays_finite_and_matches_stepping,
            scan_equals_convolution_at_length,
            step_and_prefill_equal_forward,
        );
    };
}
pub(crate) use ssm_layer_tests;

/// `GELU(x)`, the exact erf form.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

/// `x (rows, din) W^T + b` with `W (dout, din)`.
pub fn linear(p: &Params, key: &str, x: &[f64], din: usize) -> Vec<f64> {
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
pub fn params(store: &ParamStore) -> Params {
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
    p: &Params,
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
    mode: ForwardMode,
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
    let (m, store) = build::<L>(h, json!({}), 6, DType::F64);
    let x = randn(&[b, l, h], 2, DType::F64);
    let opts = ForwardOpts {
        lengths: Some(Tensor::new(&[40i64, 23], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let got = vec1(&m.forward(&x, &opts).unwrap());
    let want = reference::<L>(&store, &config(json!({})), &x, Some(&[40, 23]));
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
            &reference::<L>(&store, &config(json!({})), &x, Some(&[23, 23]))
        ) < 1e-10
    );
    let bad = ForwardOpts {
        lengths: Some(Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let e = m.forward(&x, &bad).unwrap_err().to_string();
    assert!(e.contains("lengths") && e.contains("[3]"), "{e}");

    // l_max = 10 < L: the taps past 10 are dropped (as lrnnx); prefix outputs agree.
    let (mut ml, _) = build::<L>(h, json!({"l_max": 10}), 6, DType::F64);
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
    ml.set_mode(ForwardMode::Scan);
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
    let (mut m, store) = build::<L>(h, kw, 8, DType::F64);
    let x = Var::from_tensor(&randn(&[b, l, h], 3, DType::F64)).unwrap();
    let w = randn(&[b, l, h], 4, DType::F64);
    let mut params: Vec<(String, Var)> = store.vars().into_iter().collect();
    params.push(("x".into(), x.clone()));
    assert_eq!(params.len(), L::GRADIENT_PARAMS);
    for mode in [ForwardMode::Scan, ForwardMode::Conv] {
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
    let (mut m, _) = build::<L>(h, json!({"d_state": 4}), 1, DType::F32);
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
    for mode in [ForwardMode::Scan, ForwardMode::Conv] {
        m.set_mode(mode);
        let y = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
        assert!(y.iter().all(|v| v.is_finite()), "{mode:?}");
        let err = max_err(&y[(l - 8) * h..], &stepped);
        assert!(err < 1e-4, "{mode:?}: last 8 positions vs stepping: {err}");
    }
}

/// The recurrence and the convolution agree at 300 positions.
pub fn scan_equals_convolution_at_length<L: SsmLayer>() {
    let (mut m, _) = build::<L>(8, json!({"d_state": 16}), 5, DType::F32);
    let x = randn(&[3, 300, 8], 1, DType::F32);
    let a = forward_with(&mut m, ForwardMode::Scan, &x, &ForwardOpts::default());
    let b = forward_with(&mut m, ForwardMode::Conv, &x, &ForwardOpts::default());
    let err = max_err(&a, &b);
    assert!(err < 2e-5, "scan vs conv: {err}");
}

/// Stepping, prefill then steps, and two prefills all equal the forward.
pub fn step_and_prefill_equal_forward<L: SsmLayer>() {
    for kw in L::step_cases() {
        let (b, l, h) = (3, 40, 6);
        let (m, _) = build::<L>(h, kw.clone(), 2, DType::F32);
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

/// The forward in every mode, in f64 and in f32, against the slow reference
/// for each `(B, L, H, kwargs)` the two layers share (odd sizes, channels,
/// `n_ssm`, swapped channels, gate and bottleneck, no output linear, inits)
/// and then each of the layer's `own_cases`.
pub fn forward_matches_reference_in_both_modes<L: SsmLayer>(
    own_cases: impl IntoIterator<Item = (usize, usize, usize, Value)>,
) {
    let shared = [
        (1, 1, 3, json!({"d_state": 2})),
        (3, 37, 5, json!({"d_state": 7})),
        (
            2,
            33,
            6,
            json!({"channels": 2, "n_ssm": 3, "dt_min": 0.01, "dt_max": 0.5}),
        ),
        (2, 17, 4, json!({"channels": 3, "swap_channels": true})),
        (2, 12, 4, json!({"gate": 2, "bottleneck": 1})),
        (2, 12, 4, json!({"final_act": null, "init": "diag-lin"})),
        (1, 9, 4, json!({"init": "hippo", "n_ssm": 2})),
    ];
    for (b, l, h, kw) in shared.into_iter().chain(own_cases) {
        let (mut m, store) = build::<L>(h, kw.clone(), 3, DType::F64);
        let x = randn(&[b, l, h], 7, DType::F64);
        let want = reference::<L>(&store, &config(kw.clone()), &x, None);
        for mode in [ForwardMode::Scan, ForwardMode::Conv, ForwardMode::Auto] {
            let got = forward_with(&mut m, mode, &x, &ForwardOpts::default());
            let err = max_err(&got, &want);
            assert!(err < 1e-10, "{kw} ({b},{l},{h}) {mode:?}: {err}");
        }
        // f32 parameters and input.
        let (m32, store32) = build::<L>(h, kw.clone(), 3, DType::F32);
        let x32 = x.to_dtype(DType::F32).unwrap();
        let got = vec1(&m32.forward(&x32, &ForwardOpts::default()).unwrap());
        let want = reference::<L>(&store32, &config(kw.clone()), &x32, None);
        // Relative to the output's scale, as the conformance criterion; f32
        // rounding of exp(dtA) - 1 for tiny dtA (fourier modes) reaches ~1e-4.
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        let err = max_err(&got, &want) / scale;
        assert!(err < 3e-4, "{kw} f32: {err}");
    }
}

/// The default layer of width 4 saves exactly `keys`; returns its tensors.
pub fn saved_tensors<L: SsmLayer>(keys: &[&str]) -> BTreeMap<String, Tensor> {
    let (_, store) = build::<L>(4, json!({}), 0, DType::F32);
    let t: BTreeMap<String, Tensor> = store.tensors().into_iter().collect();
    let saved: Vec<&String> = t.keys().collect();
    for k in keys {
        assert!(t.contains_key(*k), "{k} missing from {saved:?}");
    }
    assert_eq!(t.len(), keys.len(), "{saved:?}");
    t
}

/// Bad input shapes and bad kwargs are refused naming what was wrong: the
/// kwargs both layers refuse, then `own_bad_kwargs` (kwargs and the words
/// the error names); the default build's saved config has `disc` = `disc`.
pub fn bad_shapes_and_kwargs_are_named<L: SsmLayer>(
    own_bad_kwargs: &[(&str, &[&str])],
    disc: Value,
) {
    let (m, _) = build::<L>(4, json!({}), 1, DType::F32);
    assert_wrong_width_is_named(&m, 4);
    assert_mentions(&step_error(&m, &[2, 3]), &["[2, 3]"]);
    let site = BuildSite::new(4, 8, 2);
    let shared: [(&str, &[&str]); 7] = [
        (
            r#"{"transposed": true}"#,
            &["layer 2", "transposed", "(batch, seqlen, d_model)"],
        ),
        (r#"{"d_stat": 8}"#, &["d_stat", "d_state"]),
        (r#"{"bottleneck": 2}"#, &["bottleneck", "2"]),
        (r#"{"forward_mode": "fast"}"#, &["forward_mode", "fast"]),
        (r#"{"init": "legt"}"#, &["legt"]),
        (r#"{"n_ssm": 3}"#, &["n_ssm", "3"]),
        (r#"{"is_real": true}"#, &["is_real"]),
    ];
    for (kw, parts) in shared.iter().chain(own_bad_kwargs) {
        assert_mentions(&site.build_error(L::NAME, kw), parts);
    }
    // The default build works and its config round-trips through JSON.
    let m = BuildSite::new(4, 8, 0).build(L::NAME, "{}").unwrap();
    let j = lrnnx_framework::config_to_json(m.config()).unwrap();
    assert_eq!(j["type"], L::NAME);
    assert_eq!(j["disc"], disc);
    assert_eq!(j["B_clip"], 2.0);
}

/// The kernel of 25 taps of a layer of width 3, `d_state = 8`, two channels
/// (its shape checked), the layer's parameters and `(H, N/2, len)`; the
/// layer to check its discretization.
pub fn two_channel_kernel<L: SsmLayer + Lti>() -> (Vec<f64>, Params, (usize, usize, usize), L) {
    let (h, n2, l) = (3, 4, 25);
    let (m, store) = build::<L>(h, json!({"channels": 2}), 4, DType::F64);
    let k = m.kernel(l).unwrap();
    assert_eq!(k.dims(), &[2 * h, l]);
    (vec1(&k), params(&store), (h, n2, l), m)
}
