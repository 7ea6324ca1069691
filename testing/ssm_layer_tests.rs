// Tests shared by the S4 and S4D layers (the same wrapper around two SSMs),
// `include!`d by `mixers/s4/tests/s4.rs` and `mixers/s4/tests/s4d.rs`.
// The including file provides `Layer`, `GRADIENT_PARAMS`, `step_cases` and the helpers
// `build`, `config` and `reference` with the same signatures; this file
// provides the shared reference helpers and `forward_with`.

// Reference helpers (plain f64 loops) both layers' references use.

/// A complex number `(re, im)`.
type Cx = (f64, f64);

fn cmul(a: Cx, b: Cx) -> Cx {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

fn cdiv(a: Cx, b: Cx) -> Cx {
    let d = b.0 * b.0 + b.1 * b.1;
    cmul(a, (b.0 / d, -b.1 / d))
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

/// `x (rows, din) W^T + b` with `W (dout, din)`.
fn linear(p: &BTreeMap<String, Vec<f64>>, key: &str, x: &[f64], din: usize) -> Vec<f64> {
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

fn params(store: &ParamStore) -> BTreeMap<String, Vec<f64>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, vec1(&t)))
        .collect()
}

/// The wrapper after the SSM on plain values: `D` skip, GELUs, gates and the
/// output linear, as the layers compute them.
#[allow(clippy::too_many_arguments)]
fn post(
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
fn forward_with(m: &mut Layer, mode: ForwardMode, x: &Tensor, opts: &ForwardOpts) -> Vec<f64> {
    m.set_forward_mode(mode);
    vec1(&m.forward(x, opts).unwrap())
}

#[test]
fn lengths_mask_the_inputs_and_l_max_truncates_the_kernel() {
    let (b, l, h) = (2, 40, 4);
    let (m, store) = build(h, json!({}), 6, DType::F64);
    let x = randn(&[b, l, h], 2, DType::F64);
    let opts = ForwardOpts {
        lengths: Some(Tensor::new(&[40i64, 23], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let got = vec1(&m.forward(&x, &opts).unwrap());
    let want = reference(&store, &config(json!({})), &x, Some(&[40, 23]));
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
            &reference(&store, &config(json!({})), &x, Some(&[23, 23]))
        ) < 1e-10
    );
    let bad = ForwardOpts {
        lengths: Some(Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let e = m.forward(&x, &bad).unwrap_err().to_string();
    assert!(e.contains("lengths") && e.contains("[3]"), "{e}");

    // l_max = 10 < L: the taps past 10 are dropped (as lrnnx); prefix outputs agree.
    let (mut ml, _) = build(h, json!({"l_max": 10}), 6, DType::F64);
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
    ml.set_forward_mode(ForwardMode::Scan);
    let e = ml
        .forward(&x, &ForwardOpts::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("l_max"), "{e}");
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in f64,
/// for every parameter (gate and bottleneck included) and the input, in both modes.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, h) = (2, 6, 3);
    let kw = json!({"d_state": 6, "gate": 2, "bottleneck": 1, "dt_tie": false});
    let (mut m, store) = build(h, kw, 8, DType::F64);
    let x = Var::from_tensor(&randn(&[b, l, h], 3, DType::F64)).unwrap();
    let w = randn(&[b, l, h], 4, DType::F64);
    let mut params: Vec<(String, Var)> = store.vars().into_iter().collect();
    params.push(("x".into(), x.clone()));
    assert_eq!(params.len(), GRADIENT_PARAMS);
    for mode in [ForwardMode::Scan, ForwardMode::Conv] {
        m.set_forward_mode(mode);
        let loss = |m: &Layer| -> f64 {
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
#[test]
fn long_sequence_stays_finite_and_matches_stepping() {
    let (l, h) = (100_000, 4);
    let (mut m, _) = build(h, json!({"d_state": 4}), 1, DType::F32);
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
        m.set_forward_mode(mode);
        let y = vec1(&m.forward(&x, &ForwardOpts::default()).unwrap());
        assert!(y.iter().all(|v| v.is_finite()), "{mode:?}");
        let err = max_err(&y[(l - 8) * h..], &stepped);
        assert!(err < 1e-4, "{mode:?}: last 8 positions vs stepping: {err}");
    }
}

#[test]
fn scan_equals_convolution_at_length() {
    let (mut m, _) = build(8, json!({"d_state": 16}), 5, DType::F32);
    let x = randn(&[3, 300, 8], 1, DType::F32);
    let a = forward_with(&mut m, ForwardMode::Scan, &x, &ForwardOpts::default());
    let b = forward_with(&mut m, ForwardMode::Conv, &x, &ForwardOpts::default());
    let err = max_err(&a, &b);
    assert!(err < 2e-5, "scan vs conv: {err}");
}

#[test]
fn step_and_prefill_equal_forward() {
    for kw in step_cases() {
        let (b, l, h) = (3, 40, 6);
        let (m, _) = build(h, kw.clone(), 2, DType::F32);
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
