//! S4D against a slow, obviously right reference; step, prefill, scan vs
//! convolution, kernel, lengths, l_max, gradients, a long sequence, errors.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{BuildArgs, ForwardOpts, Lti, Mixer, ParamStore, StepOpts};
use lrnnx_s4::s4d::{ForwardMode, S4d, S4dConfig};
use lrnnx_testing::{max_err, randn, vec1};
use num_complex::Complex64 as Cx;
use serde_json::{json, Value};

mod common;
use common::{forward_with, gelu, linear, params, post};

fn config(kw: Value) -> S4dConfig {
    let mut obj = json!({"d_state": 8, "transposed": false});
    for (k, v) in kw.as_object().unwrap() {
        obj[k] = v.clone();
    }
    serde_json::from_value(obj).unwrap()
}

fn build(h: usize, kw: Value, seed: u64, dtype: DType) -> (S4d, std::sync::Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = S4d::new(h, config(kw), &store.builder()).unwrap();
    (m, store)
}

/// lrnnx's `param_transform`.
fn transform(name: &str, x: f64) -> f64 {
    match name {
        "none" => x,
        "exp" => x.exp(),
        "relu" => x.max(0.0) + 1e-4,
        "sigmoid" => 1.0 / (1.0 + (-x).exp()),
        "softplus" => x.exp().ln_1p(),
        other => panic!("{other}"),
    }
}

/// The whole layer in f64 loops: mask, gate, bottleneck, recurrence, D, two
/// GELUs, output gate, output linear + GELU.
fn reference(
    store: &ParamStore,
    cfg: &S4dConfig,
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
    let (n2, c) = (cfg.d_state / 2, cfg.channels);
    let n_ssm = p["A_real"].len() / n2;
    let dt_tie = p["inv_dt"].len() == h;
    let mut ys = vec![0.0; b * l * c * h];
    for hi in 0..h {
        let k = hi % n_ssm;
        for n in 0..n2 {
            let raw = p["inv_dt"][if dt_tie { hi } else { hi * n2 + n }];
            let raw = if cfg.dt_fast { raw.sinh() } else { raw };
            let dt = transform(&cfg.dt_transform, raw);
            let lam = Cx::new(
                -transform(&cfg.real_transform, p["A_real"][k * n2 + n]),
                -transform(&cfg.imag_transform, p["A_imag"][k * n2 + n]),
            );
            let bb = Cx::new(p["B"][(k * n2 + n) * 2], p["B"][(k * n2 + n) * 2 + 1]);
            let dta = lam * dt;
            let (da, db) = if cfg.disc == "zoh" {
                let da = dta.exp();
                (da, bb * ((da - 1.0) / lam))
            } else {
                let den = 1.0 - dta / 2.0;
                ((1.0 + dta / 2.0) / den, bb * dt / den)
            };
            for bi in 0..b {
                let mut s = Cx::default();
                for t in 0..l {
                    let u = xs[(bi * l + t) * h + hi];
                    s = da * s + db * u;
                    for ci in 0..c {
                        let at = ((ci * h + hi) * n2 + n) * 2;
                        let cc = Cx::new(p["C"][at], p["C"][at + 1]);
                        ys[((bi * l + t) * c + ci) * h + hi] += 2.0 * (cc * s).re;
                    }
                }
            }
        }
    }
    post(
        &p,
        cfg.gate,
        cfg.swap_channels,
        &ys,
        &xs,
        v.as_deref(),
        b * l,
        h,
        c,
    )
}

#[test]
fn forward_matches_reference_in_both_modes() {
    let cases = [
        (1, 1, 3, json!({"d_state": 2})),
        (3, 37, 5, json!({"d_state": 7})),
        (2, 20, 4, json!({"disc": "bilinear", "dt_tie": false})),
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
        (
            2,
            10,
            3,
            json!({"dt_transform": "softplus", "real_transform": "sigmoid", "imag_transform": "exp", "dt_fast": true}),
        ),
        (
            2,
            10,
            3,
            json!({"real_transform": "relu", "imag_transform": "softplus", "deterministic": true}),
        ),
        (2, 10, 4, json!({"init": "all", "d_state": 6})),
    ];
    for (b, l, h, kw) in cases {
        let (mut m, store) = build(h, kw.clone(), 3, DType::F64);
        let x = randn(&[b, l, h], 7, DType::F64);
        let want = reference(&store, &config(kw.clone()), &x, None);
        for mode in [ForwardMode::Scan, ForwardMode::Conv, ForwardMode::Auto] {
            let got = forward_with(&mut m, mode, &x, &ForwardOpts::default());
            let err = max_err(&got, &want);
            assert!(err < 1e-10, "{kw} ({b},{l},{h}) {mode:?}: {err}");
        }
        // f32 parameters and input.
        let (m32, store32) = build(h, kw.clone(), 3, DType::F32);
        let x32 = x.to_dtype(DType::F32).unwrap();
        let got = vec1(&m32.forward(&x32, &ForwardOpts::default()).unwrap());
        let want = reference(&store32, &config(kw.clone()), &x32, None);
        // Relative to the output's scale, as the conformance criterion; f32
        // rounding of exp(dtA) - 1 for tiny dtA (fourier modes) reaches ~1e-4.
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        let err = max_err(&got, &want) / scale;
        assert!(err < 3e-4, "{kw} f32: {err}");
    }
}

#[test]
fn kernel_is_the_impulse_response() {
    let (h, n2, l) = (3, 4, 25);
    let (m, store) = build(h, json!({"channels": 2}), 4, DType::F64);
    let k = vec1(&m.kernel(l).unwrap());
    assert_eq!(m.kernel(l).unwrap().dims(), &[2 * h, l]);
    let p = params(&store);
    for hi in 0..h {
        for ci in 0..2 {
            for t in 0..l {
                let mut acc = 0.0;
                for n in 0..n2 {
                    let dt = p["inv_dt"][hi].exp();
                    let lam = Cx::new(-p["A_real"][hi * n2 + n].exp(), -p["A_imag"][hi * n2 + n]);
                    let bb = Cx::new(p["B"][(hi * n2 + n) * 2], p["B"][(hi * n2 + n) * 2 + 1]);
                    let da = (lam * dt).exp();
                    let db = bb * ((da - 1.0) / lam);
                    let at = ((ci * h + hi) * n2 + n) * 2;
                    let mut z = Cx::new(p["C"][at], p["C"][at + 1]) * db;
                    for _ in 0..t {
                        z *= da;
                    }
                    acc += 2.0 * z.re;
                }
                assert!((k[(ci * h + hi) * l + t] - acc).abs() < 1e-12);
            }
        }
    }
    assert_eq!(m.discretization(), lrnnx_framework::Discretization::Zoh);
}

/// Configurations the shared step test runs.
fn step_cases() -> Vec<Value> {
    vec![
        json!({}),
        json!({"disc": "bilinear", "channels": 2, "gate": 3}),
    ]
}

common::ssm_layer_tests!(S4d, S4dConfig, ForwardMode, gradient_params = 15);

#[test]
fn parameters_are_saved_under_lrnnx_names() {
    let (_, store) = build(4, json!({}), 0, DType::F32);
    let keys: Vec<String> = store.tensors().into_keys().collect();
    for k in [
        "A_imag",
        "A_real",
        "B",
        "C",
        "D",
        "inv_dt",
        "layer.kernel.A_imag",
        "layer.kernel.A_real",
        "layer.kernel.B",
        "layer.kernel.C",
        "layer.kernel.inv_dt",
        "output_linear.0.bias",
        "output_linear.0.weight",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
    }
    assert_eq!(keys.len(), 13, "{keys:?}");
    let t = store.tensors();
    assert_eq!(t["B"].dims(), &[1, 4, 4, 2]);
    assert_eq!(t["C"].dims(), &[1, 4, 4, 2]);
    assert_eq!(t["inv_dt"].dims(), &[4, 1]);
    // A_real = log 0.5 for legs; dt within [dt_min, dt_max].
    assert!(vec1(&t["A_real"])
        .iter()
        .all(|v| (v - 0.5f64.ln()).abs() < 1e-6));
    assert!(vec1(&t["inv_dt"])
        .iter()
        .all(|v| v.exp() >= 0.001 - 1e-9 && v.exp() <= 0.1 + 1e-9));
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (m, _) = build(4, json!({}), 1, DType::F32);
    let e = m
        .forward(&randn(&[2, 8, 5], 1, DType::F32), &ForwardOpts::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(batch, seqlen, 4)") && e.contains("[2, 8, 5]"),
        "{e}"
    );
    let mut st = m.init_state(2, 8, DType::F32, &Device::Cpu).unwrap();
    let e = m
        .step(
            &randn(&[2, 3], 1, DType::F32),
            &mut st,
            &StepOpts::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 3]"), "{e}");
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let build = |kw: &str| {
        let args = BuildArgs {
            d_model: 4,
            d_state: 8,
            layer_idx: 2,
            kwargs: serde_json::from_str(kw).unwrap(),
            params: store.builder(),
        };
        lrnnx_framework::Registry::build("S4D", &args)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = build(r#"{"transposed": true}"#);
    assert!(
        e.contains("layer 2") && e.contains("transposed") && e.contains("(batch, seqlen, d_model)"),
        "{e}"
    );
    let e = build(r#"{"disc": "euler"}"#);
    assert!(e.contains("disc") && e.contains("euler"), "{e}");
    let e = build(r#"{"d_stat": 8}"#);
    assert!(e.contains("d_stat") && e.contains("d_state"), "{e}");
    let e = build(r#"{"bottleneck": 2}"#);
    assert!(e.contains("bottleneck") && e.contains('2'), "{e}");
    let e = build(r#"{"gate": 1}"#);
    assert!(e.contains("gate") && e.contains("output_gate"), "{e}");
    let e = build(r#"{"forward_mode": "fast"}"#);
    assert!(e.contains("forward_mode") && e.contains("fast"), "{e}");
    let e = build(r#"{"init": "legt"}"#);
    assert!(e.contains("legt"), "{e}");
    let e = build(r#"{"n_ssm": 3}"#);
    assert!(e.contains("n_ssm") && e.contains('3'), "{e}");
    let e = build(r#"{"is_real": true}"#);
    assert!(e.contains("is_real"), "{e}");
    // The default build works and its config round-trips through JSON.
    let args = BuildArgs {
        d_model: 4,
        d_state: 8,
        layer_idx: 0,
        kwargs: serde_json::Map::new(),
        params: ParamStore::init(0, DType::F32, &Device::Cpu).builder(),
    };
    let m = lrnnx_framework::Registry::build("S4D", &args).unwrap();
    let j = lrnnx_framework::config_to_json(m.config()).unwrap();
    assert_eq!(j["type"], "S4D");
    assert_eq!(j["disc"], "zoh");
    assert_eq!(j["B_clip"], 2.0);
}
