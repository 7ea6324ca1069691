//! S4D against a slow, obviously right reference; step, prefill, scan vs
//! convolution, kernel, lengths, l_max, gradients, a long sequence, errors.

use lrnnx_framework::Lti;
use lrnnx_s4::s4d::{S4d, S4dConfig, S4dDisc};
use lrnnx_testing::vec1;
use num_complex::Complex64 as Cx;
use serde_json::{json, Value};

mod common;
use common::Params;

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
fn reference_ssm(
    p: &Params,
    cfg: &S4dConfig,
    xs: &[f64],
    (b, l, h): (usize, usize, usize),
) -> Vec<f64> {
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
            let (da, db) = if cfg.disc.is_zoh() {
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
    ys
}

#[test]
fn forward_matches_reference_in_both_modes() {
    let cases = [
        (2, 20, 4, json!({"disc": "bilinear", "dt_tie": false})),
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
    common::forward_matches_reference_in_both_modes::<S4d>(cases);
}

#[test]
fn kernel_is_the_impulse_response() {
    let (k, p, (h, n2, l), m) = common::two_channel_kernel::<S4d>();
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

common::ssm_layer_tests!(S4d, S4dDisc, name = "S4D", gradient_params = 15);

#[test]
fn parameters_are_saved_under_lrnnx_names() {
    let t = common::saved_tensors::<S4d>(&[
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
    ]);
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
    common::bad_shapes_and_kwargs_are_named::<S4d>(
        &[
            (r#"{"disc": "euler"}"#, &["disc", "euler"]),
            (r#"{"gate": 1}"#, &["gate", "output_gate"]),
        ],
        json!("zoh"),
    );
}
