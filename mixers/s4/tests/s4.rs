//! S4 against a slow, obviously right reference; step, prefill, scan vs
//! convolution, kernel, lengths, l_max, gradients, a long sequence, errors.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, Lti, Mixer, ParamStore};
use lrnnx_s4::{S4Config, S4Disc, S4};
use lrnnx_testing::{max_err, randn, vec1};
use num_complex::Complex64 as Cx;
use serde_json::{json, Value};

mod common;
use common::{params, Params};

fn inverse(a: &[Cx], n: usize) -> Vec<Cx> {
    let mut m = a.to_vec();
    let mut inv = vec![Cx::default(); n * n];
    for i in 0..n {
        inv[i * n + i] = Cx::new(1.0, 0.0);
    }
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[i * n + col].norm().total_cmp(&m[j * n + col].norm()))
            .unwrap();
        for j in 0..n {
            m.swap(piv * n + j, col * n + j);
            inv.swap(piv * n + j, col * n + j);
        }
        let d = m[col * n + col].inv();
        for j in 0..n {
            m[col * n + j] *= d;
            inv[col * n + j] *= d;
        }
        for i in 0..n {
            if i != col {
                let f = m[i * n + col];
                for j in 0..n {
                    let (a, b) = (f * m[col * n + j], f * inv[col * n + j]);
                    m[i * n + j] -= a;
                    inv[i * n + j] -= b;
                }
            }
        }
    }
    inv
}

/// Dense bilinear system of feature `hi` in the conjugate-augmented basis:
/// `(Abar (2N2 x 2N2), Bbar (2N2))`, `Abar = (2/dt - A)^{-1}(2/dt + A)`, `A = diag(Λa) - pa pa^H`.
fn dense_system(p: &Params, hi: usize, n2: usize, h: usize) -> (Vec<Cx>, Vec<Cx>) {
    let n_ssm = p["A_real"].len() / n2;
    let k = hi % n_ssm;
    let dt_tie = p["inv_dt"].len() == h;
    let aug = |f: &dyn Fn(usize) -> Cx| -> Vec<Cx> {
        (0..2 * n2)
            .map(|i| {
                let z = f(i % n2);
                if i < n2 {
                    z
                } else {
                    z.conj()
                }
            })
            .collect()
    };
    let lam = aug(&|n| Cx::new(-p["A_real"][k * n2 + n].exp(), -p["A_imag"][k * n2 + n]));
    let pa = aug(&|n| Cx::new(p["P"][(k * n2 + n) * 2], p["P"][(k * n2 + n) * 2 + 1]));
    let ba = aug(&|n| Cx::new(p["B"][(k * n2 + n) * 2], p["B"][(k * n2 + n) * 2 + 1]));
    let dt: Vec<f64> = (0..2 * n2)
        .map(|i| p["inv_dt"][if dt_tie { hi } else { hi * n2 + i % n2 }].exp())
        .collect();
    let m = 2 * n2;
    let mut minus = vec![Cx::default(); m * m];
    let mut plus = vec![Cx::default(); m * m];
    for i in 0..m {
        for j in 0..m {
            let mut a = -(pa[i] * pa[j].conj());
            if i == j {
                a += lam[i];
            }
            let d = Cx::new(if i == j { 2.0 / dt[i] } else { 0.0 }, 0.0);
            minus[i * m + j] = d - a;
            plus[i * m + j] = d + a;
        }
    }
    let inv = inverse(&minus, m);
    let mut abar = vec![Cx::default(); m * m];
    let mut bbar = vec![Cx::default(); m];
    for i in 0..m {
        for j in 0..m {
            for l in 0..m {
                abar[i * m + j] += inv[i * m + l] * plus[l * m + j];
            }
            bbar[i] += inv[i * m + j] * (ba[j] * 2.0);
        }
    }
    (abar, bbar)
}

fn matvec(a: &[Cx], v: &[Cx]) -> Vec<Cx> {
    let m = v.len();
    (0..m)
        .map(|i| (0..m).map(|j| a[i * m + j] * v[j]).sum())
        .collect()
}

/// `C_c` of feature `hi`, conjugate-augmented.
fn c_aug(p: &Params, ci: usize, hi: usize, h: usize, n2: usize) -> Vec<Cx> {
    (0..2 * n2)
        .map(|i| {
            let at = ((ci * h + hi) * n2 + i % n2) * 2;
            Cx::new(
                p["C"][at],
                if i < n2 {
                    p["C"][at + 1]
                } else {
                    -p["C"][at + 1]
                },
            )
        })
        .collect()
}

/// The whole layer in f64 with dense matrices: mask, gate, bottleneck,
/// `v = Abar v + Bbar x`, `y = Re(C v)`, D, two GELUs, output gate, output linear + GELU.
fn reference_ssm(
    p: &Params,
    cfg: &S4Config,
    xs: &[f64],
    (b, l, h): (usize, usize, usize),
) -> Vec<f64> {
    let (n2, c) = (cfg.d_state / 2, cfg.channels);
    let mut ys = vec![0.0; b * l * c * h];
    for hi in 0..h {
        let (abar, bbar) = dense_system(p, hi, n2, h);
        for bi in 0..b {
            let mut s = vec![Cx::default(); 2 * n2];
            for t in 0..l {
                let u = xs[(bi * l + t) * h + hi];
                s = matvec(&abar, &s)
                    .into_iter()
                    .zip(&bbar)
                    .map(|(z, bb)| z + bb * u)
                    .collect();
                for ci in 0..c {
                    let ca = c_aug(p, ci, hi, h, n2);
                    let y: f64 = ca.iter().zip(&s).map(|(a, z)| (a * z).re).sum();
                    ys[((bi * l + t) * c + ci) * h + hi] = y;
                }
            }
        }
    }
    ys
}

#[test]
fn forward_matches_reference_in_both_modes() {
    let cases = [
        (2, 20, 4, json!({"dt_tie": false, "disc": "zoh"})),
        (2, 11, 4, json!({"init": "dplr-lin", "d_state": 10})),
    ];
    common::forward_matches_reference_in_both_modes::<S4>(cases);
}

#[test]
fn kernel_is_the_impulse_response() {
    let (k, p, (h, n2, l), m) = common::two_channel_kernel::<S4>();
    for hi in 0..h {
        let (abar, bbar) = dense_system(&p, hi, n2, h);
        for ci in 0..2 {
            let ca = c_aug(&p, ci, hi, h, n2);
            let mut v = bbar.clone();
            for t in 0..l {
                let want: f64 = ca.iter().zip(&v).map(|(a, z)| (a * z).re).sum();
                assert!(
                    (k[(ci * h + hi) * l + t] - want).abs() < 1e-12,
                    "{hi} {ci} {t}"
                );
                v = matvec(&abar, &v);
            }
        }
    }
    assert_eq!(
        m.discretization(),
        lrnnx_framework::Discretization::Bilinear
    );
}

/// lrnnx stores C~ = C (I - Abar^l_kernel); loading such a checkpoint gives the
/// same layer, and the reloaded store holds the true C with l_kernel = 0.
#[test]
fn stored_c_tilde_is_converted_on_load() {
    let (h, n2, lk) = (3, 4, 16);
    let (m, store) = common::build::<S4>(h, json!({}), 4, DType::F64);
    let x = randn(&[2, 20, h], 1, DType::F64);
    let y = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
    let p = params(&store);
    let mut tilde = p["C"].clone();
    for hi in 0..h {
        let (abar, _) = dense_system(&p, hi, n2, h);
        let ca = c_aug(&p, 0, hi, h, n2);
        // C~ = C - C Abar^lk (row vector times the matrix power).
        let mut row = ca.clone();
        for _ in 0..lk {
            row = (0..2 * n2)
                .map(|j| (0..2 * n2).map(|i| row[i] * abar[i * 2 * n2 + j]).sum())
                .collect();
        }
        for n in 0..n2 {
            let z = ca[n] - row[n];
            tilde[(hi * n2 + n) * 2] = z.re;
            tilde[(hi * n2 + n) * 2 + 1] = z.im;
        }
    }
    let mut saved: std::collections::HashMap<String, Tensor> =
        store.tensors().into_iter().collect();
    let ct = Tensor::from_vec(tilde, (1, h, n2, 2), &Device::Cpu).unwrap();
    saved.insert("C".into(), ct.clone());
    saved.insert("layer.kernel.C".into(), ct);
    saved.insert(
        "layer.kernel.l_kernel".into(),
        Tensor::new(lk as i64, &Device::Cpu).unwrap(),
    );
    let loaded = ParamStore::load(saved, DType::F64, &Device::Cpu);
    let m2 = S4::new(h, common::config(json!({})), &loaded.builder()).unwrap();
    assert!(
        loaded.unused_keys().is_empty(),
        "{:?}",
        loaded.unused_keys()
    );
    let y2 = vec1(&m2.forward(&x, &ForwardOpts::default()).unwrap());
    assert!(max_err(&y, &y2) < 1e-10, "{}", max_err(&y, &y2));
    let back = loaded.tensors();
    assert!(max_err(&vec1(&back["C"]), &p["C"]) < 1e-10);
    assert!(max_err(&vec1(&back["layer.kernel.C"]), &p["C"]) < 1e-10);
    assert_eq!(back["layer.kernel.l_kernel"].dtype(), DType::I64);
    assert_eq!(vec1(&back["layer.kernel.l_kernel"]), vec![0.0]);
}

/// Configurations the shared step test runs.
fn step_cases() -> Vec<Value> {
    vec![json!({}), json!({"channels": 2, "d_state": 6})]
}

common::ssm_layer_tests!(S4, S4Disc, name = "S4", gradient_params = 16);

#[test]
fn parameters_are_saved_under_lrnnx_names() {
    let t = common::saved_tensors::<S4>(&[
        "A_imag",
        "A_real",
        "B",
        "C",
        "D",
        "P",
        "inv_dt",
        "layer.kernel.A_imag",
        "layer.kernel.A_real",
        "layer.kernel.B",
        "layer.kernel.C",
        "layer.kernel.P",
        "layer.kernel.inv_dt",
        "layer.kernel.l_kernel",
        "output_linear.0.bias",
        "output_linear.0.weight",
    ]);
    assert_eq!(t["P"].dims(), &[1, 4, 4, 2]);
    assert_eq!(t["layer.kernel.l_kernel"].dims(), &[] as &[usize]);
    assert!(vec1(&t["A_real"])
        .iter()
        .all(|v| (v - 0.5f64.ln()).abs() < 1e-6));
    // HiPPO-LegS, N = 8: -Im(A) and |P| as lrnnx's.
    let a_imag = vec1(&t["A_imag"]);
    for (k, want) in [19.85741, 5.35421, 1.95779, 0.42749].iter().enumerate() {
        assert!((a_imag[k] - want).abs() < 1e-4);
    }
    let p = vec1(&t["P"]);
    assert!(
        (p[0].hypot(p[1]) - 3.64558).abs() < 1e-4,
        "{}",
        p[0].hypot(p[1])
    );
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    common::bad_shapes_and_kwargs_are_named::<S4>(
        &[
            (r#"{"rank": 2}"#, &["rank", "2"]),
            (r#"{"gate": 2, "channels": 3}"#, &["gate", "output_gate"]),
        ],
        Value::Null,
    );
}
