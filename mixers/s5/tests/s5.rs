//! S5 (LTI and LTV / event) against slow, obviously right references; step,
//! prefill, scan == conv, kernel, gradients, long sequences and bad input.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{
    config_to_json, BuildArgs, Discretization, Family, ForwardOpts, Mixer, ParamStore, Registry,
    StepOpts,
};
use lrnnx_testing::{
    assert_lengths_change_nothing, assert_mentions, assert_wrong_width_is_named, step_error,
    uniform_vec as rand, vec1, BuildSite, GradientCheck,
};

// ---------------------------------------------------------------- helpers

fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a - b| / max(1, max |b|)`.
fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn input(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    t(rand(n, seed, -2.0, 2.0), shape).to_dtype(dtype).unwrap()
}

/// `n` random complex values as `(n, 2)` pairs: real parts uniform in `re`
/// (seed `seed`), imaginary parts in `im` (seed `seed + 1`).
fn complex_pairs(n: usize, seed: u64, re: (f64, f64), im: (f64, f64)) -> Vec<f64> {
    rand(n, seed, re.0, re.1)
        .into_iter()
        .zip(rand(n, seed + 1, im.0, im.1))
        .flat_map(|(r, i)| [r, i])
        .collect()
}

/// Random LTI parameters (so that no transposition hides behind a constant init).
fn lti_params(h: usize, n: usize, seed: u64) -> HashMap<String, Tensor> {
    let a = complex_pairs(n, seed, (-1.5, 1.0), (-3.0, 3.0));
    HashMap::from([
        ("A".to_string(), t(a, &[n, 2])),
        (
            "B".to_string(),
            t(rand(n * h, seed + 2, -1.0, 1.0), &[n, h]),
        ),
        (
            "log_dt".to_string(),
            t(rand(n, seed + 3, (0.01f64).ln(), (0.5f64).ln()), &[n]),
        ),
        (
            "C".to_string(),
            t(rand(h * n * 2, seed + 4, -1.0, 1.0), &[h, n, 2]),
        ),
        (
            "D".to_string(),
            t(rand(h * h, seed + 5, -1.0, 1.0), &[h, h]),
        ),
    ])
}

/// Random LTV parameters (stable A).
fn ltv_params(h: usize, p: usize, seed: u64) -> HashMap<String, Tensor> {
    let a = complex_pairs(p, seed, (-1.0, -0.1), (-4.0, 4.0));
    HashMap::from([
        ("A".to_string(), t(a, &[p, 2])),
        (
            "B".to_string(),
            t(rand(p * h * 2, seed + 2, -1.0, 1.0), &[p, h, 2]),
        ),
        (
            "C".to_string(),
            t(rand(h * p * 2, seed + 3, -1.0, 1.0), &[h, p, 2]),
        ),
        ("D".to_string(), t(rand(h, seed + 4, -1.0, 1.0), &[h])),
        (
            "log_dt".to_string(),
            t(rand(p, seed + 5, (0.01f64).ln(), (0.5f64).ln()), &[p]),
        ),
    ])
}

/// [`build`] with freshly initialized f32 parameters.
fn build_init(
    name: &str,
    h: usize,
    kwargs: serde_json::Value,
) -> (Box<dyn Mixer>, Arc<ParamStore>) {
    build(name, h, kwargs, None, DType::F32)
}

/// The shapes of the store's parameters, in key order.
fn param_dims(store: &ParamStore) -> Vec<Vec<usize>> {
    store
        .tensors()
        .values()
        .map(|t| t.dims().to_vec())
        .collect()
}

fn build(
    name: &str,
    h: usize,
    kwargs: serde_json::Value,
    params: Option<HashMap<String, Tensor>>,
    dtype: DType,
) -> (Box<dyn Mixer>, Arc<ParamStore>) {
    let store = match params {
        Some(p) => ParamStore::load(p, dtype, &Device::Cpu),
        None => ParamStore::init(7, dtype, &Device::Cpu),
    };
    let serde_json::Value::Object(kwargs) = kwargs else {
        panic!("kwargs must be an object")
    };
    let args = BuildArgs {
        d_model: h,
        d_state: 4,
        layer_idx: 0,
        kwargs,
        params: store.builder(),
    };
    let m = Registry::build(name, &args).unwrap();
    assert!(store.unused_keys().is_empty(), "{:?}", store.unused_keys());
    (m, store)
}

fn lti(
    h: usize,
    n: usize,
    disc: &str,
    mode: &str,
    seed: u64,
    dtype: DType,
) -> (Box<dyn Mixer>, Arc<ParamStore>) {
    build(
        "S5",
        h,
        serde_json::json!({"d_state": n, "discretization": disc, "forward_mode": mode}),
        Some(lti_params(h, n, seed)),
        dtype,
    )
}

fn ltv(
    h: usize,
    p: usize,
    disc: &str,
    conj_sym: bool,
    seed: u64,
    dtype: DType,
) -> (Box<dyn Mixer>, Arc<ParamStore>) {
    build(
        "S5LTV",
        h,
        serde_json::json!({"d_state": p, "discretization": disc, "conj_sym": conj_sym, "step_rescale": 1.3}),
        Some(ltv_params(h, p, seed)),
        dtype,
    )
}

// ---------------------------------------------------------------- references

/// The references' complex scalar.
type C = num_complex::Complex64;

fn params64(store: &ParamStore) -> HashMap<String, Vec<f64>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, vec1(&v)))
        .collect()
}

/// lrnnx's LTI S5, one position at a time, complex numbers spelled out.
fn reference_lti(p: &HashMap<String, Vec<f64>>, x: &Tensor, disc: &str) -> Vec<f64> {
    let (b, l, h) = x.dims3().unwrap();
    let n = p["log_dt"].len();
    let xs = vec1(x);
    let one = C::new(1.0, 0.0);
    let (mut ab, mut g) = (vec![one; n], vec![one; n]);
    for k in 0..n {
        let a0 = p["A"][2 * k];
        let a = C::new(-(a0.exp().ln_1p()), p["A"][2 * k + 1]);
        let dt = p["log_dt"][k].exp();
        let dta = a * dt;
        (ab[k], g[k]) = match disc {
            "zoh" => (dta.exp(), (dta.exp() - 1.0) / a),
            // lrnnx core.bilinear: signs flipped against Tustin.
            "bilinear" => (
                (one - dta * 0.5) / (one + dta * 0.5),
                C::new(dt, 0.0) / (one + dta * 0.5),
            ),
            "dirac" => (dta.exp(), one),
            "no_discretization" => (a, one),
            _ => unreachable!(),
        };
    }
    let mut y = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut s = vec![C::default(); n];
        for ti in 0..l {
            let xt = &xs[(bi * l + ti) * h..(bi * l + ti + 1) * h];
            for k in 0..n {
                let bx: f64 = (0..h).map(|i| p["B"][k * h + i] * xt[i]).sum();
                s[k] = ab[k] * s[k] + g[k] * bx;
            }
            for o in 0..h {
                let mut acc: f64 = (0..h).map(|i| xt[i] * p["D"][i * h + o]).sum();
                for k in 0..n {
                    let c = C::new(p["C"][(o * n + k) * 2], p["C"][(o * n + k) * 2 + 1]);
                    acc += (c * s[k]).re;
                }
                y[(bi * l + ti) * h + o] = acc;
            }
        }
    }
    y
}

/// lrnnx's LTV S5 (its `simplified_scan_ref`), with optional event timesteps `(B, L)`.
fn reference_ltv(
    p: &HashMap<String, Vec<f64>>,
    x: &Tensor,
    disc: &str,
    conj_sym: bool,
    step_rescale: f64,
    tau: Option<&[f64]>,
) -> Vec<f64> {
    let (b, l, h) = x.dims3().unwrap();
    let np = p["log_dt"].len();
    let xs = vec1(x);
    let one = C::new(1.0, 0.0);
    let a: Vec<C> = (0..np)
        .map(|k| C::new(p["A"][2 * k], p["A"][2 * k + 1]))
        .collect();
    let dt: Vec<f64> = (0..np)
        .map(|k| p["log_dt"][k].exp() * step_rescale)
        .collect();
    let gamma: Vec<C> = (0..np)
        .map(|k| match disc {
            "zoh" => ((a[k] * dt[k]).exp() - 1.0) / a[k],
            "bilinear" => C::new(dt[k], 0.0) / (one + a[k] * (-0.5 * dt[k])),
            "dirac" => one,
            _ => unreachable!(),
        })
        .collect();
    let mut y = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut s = vec![C::default(); np];
        for ti in 0..l {
            let xt = &xs[(bi * l + ti) * h..(bi * l + ti + 1) * h];
            let ts = tau.map(|v| v[bi * l + ti]).unwrap_or(1.0);
            for k in 0..np {
                let dta = a[k] * (ts * dt[k]);
                let ab = match disc {
                    "bilinear" => (one + dta * 0.5) / (one - dta * 0.5),
                    _ => dta.exp(),
                };
                let mut bx = C::default();
                for i in 0..h {
                    let bb = C::new(p["B"][(k * h + i) * 2], p["B"][(k * h + i) * 2 + 1]);
                    bx += bb * xt[i];
                }
                s[k] = ab * s[k] + gamma[k] * bx;
            }
            for o in 0..h {
                let mut acc = 0.0;
                for k in 0..np {
                    let c = C::new(p["C"][(o * np + k) * 2], p["C"][(o * np + k) * 2 + 1]);
                    acc += (c * s[k]).re;
                }
                let k2 = if conj_sym { 2.0 } else { 1.0 };
                y[(bi * l + ti) * h + o] = k2 * acc + p["D"][o] * xt[o];
            }
        }
    }
    y
}

fn fwd(m: &dyn Mixer, x: &Tensor, tau: Option<&Tensor>) -> Tensor {
    let opts = ForwardOpts {
        integration_timesteps: tau.cloned(),
        lengths: None,
    };
    m.forward(x, &opts).unwrap()
}

// ---------------------------------------------------------------- forward

const SHAPES: [(usize, usize, usize, usize); 4] =
    [(1, 1, 3, 1), (3, 37, 5, 7), (2, 9, 4, 8), (1, 70, 2, 3)];

#[test]
fn lti_forward_matches_reference_in_both_modes() {
    for disc in ["zoh", "bilinear", "dirac", "no_discretization"] {
        for (b, l, h, n) in SHAPES {
            // no_discretization uses the continuous A as the transition: keep it short.
            let l = if disc == "no_discretization" {
                l.min(9)
            } else {
                l
            };
            for mode in ["scan", "conv", "auto"] {
                for dtype in [DType::F64, DType::F32] {
                    let (m, store) = lti(h, n, disc, mode, 3, dtype);
                    let x = input(&[b, l, h], 5, dtype);
                    let y = vec1(&fwd(m.as_ref(), &x, None));
                    let want = reference_lti(&params64(&store), &x, disc);
                    let err = max_err(&y, &want);
                    let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
                    assert!(
                        err < tol,
                        "{disc} {mode} {dtype:?} ({b},{l},{h},{n}): {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn ltv_forward_matches_reference_with_and_without_events() {
    for disc in ["zoh", "bilinear", "dirac"] {
        for (b, l, h, p) in SHAPES {
            for conj_sym in [false, true] {
                let (m, store) = ltv(h, p, disc, conj_sym, 4, DType::F64);
                let x = input(&[b, l, h], 6, DType::F64);
                let pp = params64(&store);
                let y = vec1(&fwd(m.as_ref(), &x, None));
                let want = reference_ltv(&pp, &x, disc, conj_sym, 1.3, None);
                assert!(max_err(&y, &want) < 1e-10, "{disc} ({b},{l},{h},{p})");
                let tau = rand(b * l, 9, 0.0, 2.5);
                let taut = t(tau.clone(), &[b, l]);
                let y = vec1(&fwd(m.as_ref(), &x, Some(&taut)));
                let want = reference_ltv(&pp, &x, disc, conj_sym, 1.3, Some(&tau));
                assert!(
                    max_err(&y, &want) < 1e-10,
                    "{disc} events ({b},{l},{h},{p})"
                );
                // (B, L, 1) timesteps and f32 give the same.
                let y3 = vec1(&fwd(m.as_ref(), &x, Some(&taut.unsqueeze(2).unwrap())));
                assert!(max_err(&y3, &want) < 1e-10);
            }
        }
    }
    let (m, store) = ltv(5, 6, "zoh", false, 4, DType::F32);
    let x = input(&[2, 30, 5], 6, DType::F32);
    let tau = rand(60, 9, 0.0, 2.5);
    let y = vec1(&fwd(m.as_ref(), &x, Some(&t(tau.clone(), &[2, 30]))));
    let want = reference_ltv(&params64(&store), &x, "zoh", false, 1.3, Some(&tau));
    assert!(max_err(&y, &want) < 1e-4);
}

#[test]
fn events_with_unit_timesteps_equal_the_plain_forward() {
    let (m, _) = ltv(4, 5, "bilinear", false, 1, DType::F64);
    let x = input(&[2, 11, 4], 2, DType::F64);
    let a = vec1(&fwd(m.as_ref(), &x, None));
    let ones = Tensor::ones((2, 11), DType::F32, &Device::Cpu).unwrap();
    let b = vec1(&fwd(m.as_ref(), &x, Some(&ones)));
    assert!(max_err(&a, &b) < 1e-12);
}

// ---------------------------------------------------------------- step, prefill

fn steps(
    m: &dyn Mixer,
    x: &Tensor,
    tau: Option<&Tensor>,
    from: usize,
    st: &mut lrnnx_framework::MixerState,
) -> Vec<Tensor> {
    let (b, l, h) = x.dims3().unwrap();
    (from..l)
        .map(|i| {
            let xt = x.narrow(1, i, 1).unwrap();
            // Alternate the accepted step shapes (and timestep shapes).
            let xt = if i % 2 == 0 {
                xt.squeeze(1).unwrap()
            } else {
                xt
            };
            let so = StepOpts {
                integration_timesteps: tau.map(|ts| {
                    let c = ts.narrow(1, i, 1).unwrap();
                    if i % 3 == 0 {
                        c.squeeze(1).unwrap()
                    } else {
                        c
                    }
                }),
            };
            let y = m.step(&xt, st, &so).unwrap();
            assert_eq!(y.rank(), xt.rank());
            y.reshape((b, 1, h)).unwrap()
        })
        .collect()
}

fn check_step_and_prefill(m: &dyn Mixer, x: &Tensor, tau: Option<&Tensor>, what: &str) {
    let (b, l, _) = x.dims3().unwrap();
    let y = vec1(&fwd(m, x, tau));
    let mut st = m.init_state(b, l, x.dtype(), &Device::Cpu).unwrap();
    let ys = steps(m, x, tau, 0, &mut st);
    assert_eq!(st.seqlen_offset, l);
    let err = max_err(&vec1(&Tensor::cat(&ys, 1).unwrap()), &y);
    assert!(err < 1e-5, "{what}: step vs forward {err}");
    for cut in [0, 1, l / 2] {
        let mut st = m.init_state(b, l, x.dtype(), &Device::Cpu).unwrap();
        let opts = ForwardOpts {
            integration_timesteps: tau.map(|ts| ts.narrow(1, 0, cut).unwrap()),
            lengths: None,
        };
        let mut parts = vec![m
            .prefill(&x.narrow(1, 0, cut).unwrap(), &mut st, &opts)
            .unwrap()];
        assert_eq!(st.seqlen_offset, cut);
        parts.extend(steps(m, x, tau, cut, &mut st));
        let err = max_err(&vec1(&Tensor::cat(&parts, 1).unwrap()), &y);
        assert!(
            err < 1e-5,
            "{what}: prefill({cut}) + steps vs forward {err}"
        );
    }
    // Prefill after steps (a second prompt chunk) continues from the state.
    let mut st = m.init_state(b, l, x.dtype(), &Device::Cpu).unwrap();
    let mut parts = steps(
        m,
        &x.narrow(1, 0, 3).unwrap(),
        tau.map(|ts| ts.narrow(1, 0, 3).unwrap()).as_ref(),
        0,
        &mut st,
    );
    let opts = ForwardOpts {
        integration_timesteps: tau.map(|ts| ts.narrow(1, 3, l - 3).unwrap()),
        lengths: None,
    };
    parts.push(
        m.prefill(&x.narrow(1, 3, l - 3).unwrap(), &mut st, &opts)
            .unwrap(),
    );
    let err = max_err(&vec1(&Tensor::cat(&parts, 1).unwrap()), &y);
    assert!(err < 1e-5, "{what}: steps + prefill vs forward {err}");
}

#[test]
fn step_and_prefill_equal_forward() {
    let (b, l, h, n) = (3, 21, 6, 5);
    for disc in ["zoh", "bilinear", "dirac"] {
        for mode in ["scan", "conv"] {
            let (m, _) = lti(h, n, disc, mode, 2, DType::F32);
            check_step_and_prefill(
                m.as_ref(),
                &input(&[b, l, h], 9, DType::F32),
                None,
                &format!("lti {disc} {mode}"),
            );
        }
        let (m, _) = ltv(h, n, disc, true, 2, DType::F32);
        let x = input(&[b, l, h], 9, DType::F32);
        check_step_and_prefill(m.as_ref(), &x, None, &format!("ltv {disc}"));
        let tau = t(rand(b * l, 3, 0.1, 2.0), &[b, l])
            .to_dtype(DType::F32)
            .unwrap();
        check_step_and_prefill(m.as_ref(), &x, Some(&tau), &format!("ltv {disc} events"));
    }
}

// ---------------------------------------------------------------- scan == conv, kernel

#[test]
fn scan_and_conv_agree_and_kernel_convolution_equals_forward() {
    for (b, l, h, n) in [(2, 17, 5, 6), (1, 200, 3, 4)] {
        for disc in ["zoh", "bilinear", "dirac"] {
            let (scan, store) = lti(h, n, disc, "scan", 3, DType::F64);
            let (conv, _) = lti(h, n, disc, "conv", 3, DType::F64);
            let x = input(&[b, l, h], 4, DType::F64);
            let y = vec1(&fwd(scan.as_ref(), &x, None));
            assert!(max_err(&y, &vec1(&fwd(conv.as_ref(), &x, None))) < 1e-10);
            let k = vec1(&scan.as_lti().unwrap().kernel(l).unwrap()); // (H, H, L)
            let d = vec1(&store.tensors()["D"]);
            let xs = vec1(&x);
            let mut want = vec![0.0; b * l * h];
            for bi in 0..b {
                for ti in 0..l {
                    for o in 0..h {
                        let mut acc = 0.0;
                        for i in 0..h {
                            acc += xs[(bi * l + ti) * h + i] * d[i * h + o];
                            for s in 0..=ti {
                                acc += k[(o * h + i) * l + (ti - s)] * xs[(bi * l + s) * h + i];
                            }
                        }
                        want[(bi * l + ti) * h + o] = acc;
                    }
                }
            }
            assert!(max_err(&want, &y) < 1e-10, "{disc} ({b},{l},{h},{n})");
            assert_eq!(scan.as_lti().unwrap().kernel(0).unwrap().dims(), &[h, h, 0]);
        }
    }
}

#[test]
fn conv_mode_passes_the_golden_lti_cases() {
    for disc in ["zoh", "bilinear", "dirac"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../tests/data/lrnnx/s5_lti_{disc}.safetensors"));
        let file = lrnnx_framework::io::read_safetensors_file(&path, &Device::Cpu).unwrap();
        let params: HashMap<String, Tensor> = file
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|k| (k.to_string(), v.clone())))
            .collect();
        let (m, _) = build(
            "S5",
            16,
            serde_json::json!({"d_state": 8, "discretization": disc, "forward_mode": "conv"}),
            Some(params),
            DType::F32,
        );
        let y = fwd(m.as_ref(), &file.tensors["input.x"], None);
        let (_, rel) =
            lrnnx_framework::conformance::compare(&y, &file.tensors["output.y"]).unwrap();
        assert!(rel < 2e-6, "{disc}: {rel:e}");
    }
}

// ---------------------------------------------------------------- gradients

/// Central finite differences of `sum(forward(x) * w)` against autograd, in
/// f64, for every parameter (several indices each), the input and the timesteps.
fn check_gradients(
    m: &dyn Mixer,
    store: &ParamStore,
    x: &Tensor,
    tau: Option<&Tensor>,
    what: &str,
) {
    let x = Var::from_tensor(x).unwrap();
    let tau = tau.map(|t| Var::from_tensor(t).unwrap());
    let w = input(x.dims(), 77, DType::F64);
    let loss = || -> Tensor {
        let tau = tau.as_ref().map(|v| v.as_tensor());
        (fwd(m, x.as_tensor(), tau) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let mut vars: Vec<(String, Var)> = store.vars().into_iter().collect();
    let n_params = vars.len();
    vars.push(("x".into(), x.clone()));
    if let Some(tv) = &tau {
        vars.push(("integration_timesteps".into(), tv.clone()));
    }
    let indices = |_: &str, len: usize| -> Vec<usize> {
        [0, 1, len / 3, len / 2, len - 1]
            .iter()
            .map(|&idx| idx.min(len - 1))
            .collect()
    };
    // A parameter the output does not depend on (log_dt under no_discretization) has none.
    let may_lack_gradient = |name: &str| what.contains("no_discretization") && name == "log_dt";
    let check = GradientCheck {
        what,
        indices: &indices,
        may_lack_gradient: &may_lack_gradient,
        ..GradientCheck::new(1e-6)
    };
    check.assert(&vars, loss);
    assert_eq!(n_params, 5, "{what}: A, B, C, D, log_dt");
}

#[test]
fn lti_gradients_match_finite_differences() {
    let (b, l, h, n) = (2, 7, 3, 4);
    for (disc, mode) in [
        ("zoh", "scan"),
        ("bilinear", "scan"),
        ("dirac", "conv"),
        ("bilinear", "conv"),
        ("no_discretization", "scan"),
    ] {
        let (m, store) = lti(h, n, disc, mode, 8, DType::F64);
        check_gradients(
            m.as_ref(),
            &store,
            &input(&[b, l, h], 3, DType::F64),
            None,
            &format!("lti {disc} {mode}"),
        );
    }
}

#[test]
fn ltv_gradients_match_finite_differences_including_event_mode() {
    let (b, l, h, p) = (2, 7, 3, 4);
    for disc in ["zoh", "bilinear", "dirac"] {
        let (m, store) = ltv(h, p, disc, disc == "zoh", 8, DType::F64);
        let x = input(&[b, l, h], 3, DType::F64);
        check_gradients(m.as_ref(), &store, &x, None, &format!("ltv {disc}"));
        let tau = t(rand(b * l, 5, 0.2, 2.0), &[b, l]);
        check_gradients(
            m.as_ref(),
            &store,
            &x,
            Some(&tau),
            &format!("ltv {disc} events"),
        );
    }
}

// ---------------------------------------------------------------- long sequences

#[test]
fn long_sequence_stays_finite_and_matches_prefill_plus_steps() {
    let (b, l, h) = (1, 100_000, 3);
    let x = input(&[b, l, h], 12, DType::F32);
    let tau = t(rand(b * l, 13, 0.0, 3.0), &[b, l])
        .to_dtype(DType::F32)
        .unwrap();
    let cases: Vec<(Box<dyn Mixer>, Option<&Tensor>, &str)> = vec![
        (
            build_init(
                "S5",
                h,
                serde_json::json!({"d_state": 4, "discretization": "zoh"}),
            )
            .0,
            None,
            "lti zoh",
        ),
        (
            build_init(
                "S5",
                h,
                serde_json::json!({"d_state": 4, "discretization": "dirac"}),
            )
            .0,
            None,
            "lti dirac",
        ),
        (
            build_init(
                "S5",
                h,
                serde_json::json!({"d_state": 4, "discretization": "zoh", "forward_mode": "conv"}),
            )
            .0,
            None,
            "lti zoh conv",
        ),
        (
            build_init(
                "S5",
                h,
                serde_json::json!({"d_state": 4, "use_fast_path": false}),
            )
            .0,
            None,
            "ltv",
        ),
        (
            build_init("S5LTV", h, serde_json::json!({"d_state": 4})).0,
            Some(&tau),
            "ltv events",
        ),
    ];
    for (m, tau, what) in cases {
        let y = fwd(m.as_ref(), &x, tau);
        let yv = vec1(&y);
        assert!(
            yv.iter().all(|v| v.is_finite()),
            "{what}: non-finite output"
        );
        let mut st = m.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
        let opts = ForwardOpts {
            integration_timesteps: tau.map(|ts| ts.narrow(1, 0, l - 8).unwrap()),
            lengths: None,
        };
        m.prefill(&x.narrow(1, 0, l - 8).unwrap(), &mut st, &opts)
            .unwrap();
        let tail = steps(m.as_ref(), &x, tau, l - 8, &mut st);
        let got = vec1(&Tensor::cat(&tail, 1).unwrap());
        let want = vec1(&y.narrow(1, l - 8, 8).unwrap());
        let err = max_err(&got, &want);
        assert!(err < 1e-4, "{what}: last 8 positions differ by {err}");
    }
}

// ---------------------------------------------------------------- registry, init, config

#[test]
fn names_families_and_the_use_fast_path_rule() {
    let (m, store) = build_init("S5", 4, serde_json::json!({"discretization": "zoh"}));
    assert_eq!((m.name(), m.family()), ("S5", Family::Lti));
    assert!(m.as_lti().is_some() && m.as_ltv().is_none());
    assert_eq!(m.as_lti().unwrap().discretization(), Discretization::Zoh);
    let keys: Vec<String> = store.tensors().into_keys().collect();
    assert_eq!(keys, ["A", "B", "C", "D", "log_dt"]);
    let dims = param_dims(&store);
    assert_eq!(
        dims,
        vec![vec![4, 2], vec![4, 4], vec![4, 4, 2], vec![4, 4], vec![4]]
    );
    let (m, _) = build_init("s5", 4, serde_json::json!({"discretization": "bilinear"}));
    assert_eq!(
        m.as_lti().unwrap().discretization(),
        Discretization::BilinearFlipped
    );

    // use_fast_path picks the LTV class under the name S5.
    let (m, store) = build_init("S5", 4, serde_json::json!({"use_fast_path": false}));
    assert_eq!((m.name(), m.family()), ("S5", Family::Ltv));
    let ltv = m.as_ltv().unwrap();
    assert!(ltv.supports_events());
    assert_eq!(ltv.discretization(), Discretization::Zoh);
    let dims = param_dims(&store);
    assert_eq!(
        dims,
        vec![vec![4, 2], vec![4, 4, 2], vec![4, 4, 2], vec![4], vec![4]]
    );
    // Its saved config is tagged S5 and keeps use_fast_path, so it rebuilds as LTV.
    let json = config_to_json(m.config()).unwrap();
    assert_eq!(json["type"], "S5");
    assert_eq!(json["use_fast_path"], false);
    let mut kw = json.as_object().unwrap().clone();
    kw.remove("type");
    let (again, _) = build("S5", 4, serde_json::Value::Object(kw), None, DType::F32);
    assert_eq!(again.family(), Family::Ltv);
    assert_eq!(config_to_json(again.config()).unwrap(), json);

    let (m, _) = build_init(
        "s5_ltv",
        4,
        serde_json::json!({"discretization": "bilinear"}),
    );
    assert_eq!((m.name(), m.family()), ("S5LTV", Family::Ltv));
    assert_eq!(
        m.as_ltv().unwrap().discretization(),
        Discretization::Bilinear
    );
    let json = config_to_json(m.config()).unwrap();
    assert_eq!(json["type"], "S5LTV");
    assert_eq!(json["use_fast_path"], true);

    // LTI config round trip.
    let (m, _) = build_init(
        "S5",
        4,
        serde_json::json!({"discretization": "dirac", "forward_mode": "conv"}),
    );
    let json = config_to_json(m.config()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "S5", "d_state": 4, "discretization": "dirac", "conj_sym": false, "forward_mode": "conv"})
    );
    assert_eq!(Registry::get("S5").unwrap().spec.family, Family::Lti);
    assert_eq!(Registry::get("S5LTV").unwrap().spec.family, Family::Ltv);
}

#[test]
fn init_follows_lrnnx() {
    let (_, store) = build(
        "S5",
        4,
        serde_json::json!({"d_state": 5, "discretization": "zoh"}),
        None,
        DType::F64,
    );
    let p = params64(&store);
    for k in 0..5 {
        assert!((p["A"][2 * k] - ((0.5f64).exp() - 1.0).ln()).abs() < 1e-6);
        assert!((p["A"][2 * k + 1] - std::f64::consts::PI * k as f64).abs() < 1e-5);
        let want = (1e-3f64).ln() + ((1e-1f64).ln() - (1e-3f64).ln()) * k as f64 / 4.0;
        assert!((p["log_dt"][k] - want).abs() < 1e-6);
    }
    assert!(p["B"].iter().all(|&v| (v - 0.5).abs() < 1e-7));
    // LTV: A = (-1/2, eigenvalues of the HiPPO normal part), in ascending order.
    for conj_sym in [false, true] {
        let (_, store) = build(
            "S5LTV",
            4,
            serde_json::json!({"d_state": 6, "conj_sym": conj_sym}),
            None,
            DType::F64,
        );
        let p = params64(&store);
        let (lam, _) = lrnnx_s5::make_dplr_hippo(if conj_sym { 12 } else { 6 }).unwrap();
        for k in 0..6 {
            assert!((p["A"][2 * k] + 0.5).abs() < 1e-7);
            assert!((p["A"][2 * k + 1] - lam[k].im).abs() < 1e-5);
        }
        assert!(p["log_dt"]
            .iter()
            .all(|v| *v >= (1e-3f64).ln() - 1e-6 && *v <= (1e-1f64).ln() + 1e-6));
        assert!(p["B"]
            .iter()
            .chain(&p["C"])
            .chain(&p["D"])
            .all(|v| v.is_finite()));
    }
}

#[test]
fn bad_kwargs_and_inputs_are_named() {
    let site = BuildSite::new(4, 3, 2);
    let err = |name: &str, kw: serde_json::Value| site.build_error(name, &kw.to_string());
    let e = err("S5", serde_json::json!({}));
    assert!(
        e.contains("layer 2") && e.contains("discretization") && e.contains("no_discretization"),
        "{e}"
    );
    let e = err("S5", serde_json::json!({"discretization": "async"}));
    assert!(
        e.contains("async") && e.contains("zoh") && e.contains("no_discretization"),
        "{e}"
    );
    let e = err(
        "S5",
        serde_json::json!({"discretization": "zoh", "conj_sym": true}),
    );
    assert!(
        e.contains("conj_sym") && e.contains("not implemented"),
        "{e}"
    );
    let e = err(
        "S5",
        serde_json::json!({"discretization": "zoh", "dt_min": 0.1}),
    );
    assert!(e.contains("dt_min") && e.contains("forward_mode"), "{e}");
    let e = err(
        "S5",
        serde_json::json!({"discretization": "zoh", "forward_mode": "fft"}),
    );
    assert!(e.contains("fft") && e.contains("conv"), "{e}");
    let e = err(
        "S5",
        serde_json::json!({"discretization": "zoh", "d_state": 0}),
    );
    assert!(e.contains("d_state"), "{e}");
    let e = err(
        "S5LTV",
        serde_json::json!({"discretization": "no_discretization"}),
    );
    assert!(
        e.contains("S5LTV") && e.contains("no_discretization") && e.contains("bilinear"),
        "{e}"
    );
    let e = err(
        "S5",
        serde_json::json!({"use_fast_path": true, "dt_min": 0.5, "dt_max": 0.1}),
    );
    assert!(e.contains("dt_min") && e.contains("0.5"), "{e}");
    let e = err("S5LTV", serde_json::json!({"forward_mode": "scan"}));
    assert!(e.contains("forward_mode"), "{e}");

    let (m, _) = build_init("S5", 4, serde_json::json!({"discretization": "zoh"}));
    assert_wrong_width_is_named(m.as_ref(), 4);
    assert_mentions(&step_error(m.as_ref(), &[2, 5]), &["(batch, 4)", "[2, 5]"]);

    let (m, _) = build("S5LTV", 4, serde_json::json!({}), None, DType::F32);
    let x = input(&[2, 8, 4], 1, DType::F32);
    let bad_tau = Tensor::ones((2, 7), DType::F32, &Device::Cpu).unwrap();
    let e = m
        .forward(
            &x,
            &ForwardOpts {
                integration_timesteps: Some(bad_tau),
                lengths: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("integration_timesteps") && e.contains("(2, 8)") && e.contains("[2, 7]"),
        "{e}"
    );
    let mut st = m.init_state(2, 8, DType::F32, &Device::Cpu).unwrap();
    let so = StepOpts {
        integration_timesteps: Some(Tensor::ones((3,), DType::F32, &Device::Cpu).unwrap()),
    };
    let e = m
        .step(&input(&[2, 4], 1, DType::F32), &mut st, &so)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("integration_timesteps") && e.contains("(2,)") && e.contains("[3]"),
        "{e}"
    );
}

#[test]
fn lengths_change_nothing_as_in_lrnnx() {
    let x = input(&[2, 8, 4], 2, DType::F32);
    for kw in [
        serde_json::json!({"discretization": "zoh"}),
        serde_json::json!({"use_fast_path": false}),
    ] {
        let (m, _) = build("S5", 4, kw, None, DType::F32);
        assert_lengths_change_nothing(m.as_ref(), &x, false);
    }
}
