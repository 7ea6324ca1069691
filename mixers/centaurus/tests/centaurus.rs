//! Centaurus against a slow, obviously right reference in every mode; scan
//! against convolution; step, prefill, kernel, gradients, long sequences, bad kwargs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lrnnx_centaurus::{Centaurus, CentaurusConfig, ForwardMode, Mode};
use lrnnx_framework::{BuildArgs, Family, ForwardOpts, Init, Lti, Mixer, ParamStore, StepOpts};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_lengths_change_nothing, assert_mentions,
    assert_wrong_width_is_named, draw, max_abs, max_err, randn, step_error, vec1, BuildSite,
    GradientCheck,
};

const MODES: [Mode; 4] = [Mode::Neck, Mode::Pw, Mode::Dws, Mode::Full];

fn config(n: usize, m: usize, mode: Mode, fm: ForwardMode) -> CentaurusConfig {
    CentaurusConfig {
        d_state: n,
        sub_state_dim: m,
        discretization: "zoh".into(),
        mode,
        forward_mode: fm,
    }
}

/// `N` a mode accepts for width `h`: `odd` for neck/pw, `h` for dws, `h² + extra` for full.
fn states(mode: Mode, h: usize, odd: usize) -> usize {
    match mode {
        Mode::Neck | Mode::Pw => odd,
        Mode::Dws => h,
        Mode::Full => h * h + odd % 2, // sometimes one inert extra state
    }
}

/// Replaces every parameter by random values (stable `A`, steps in [0.01, 0.5]),
/// so that no structure of the init (ones, equal rows) hides a mistake.
fn randomize(store: &ParamStore, seed: u64) {
    let dtype = store.dtype();
    for (i, (name, var)) in store.vars().into_iter().enumerate() {
        let dims = var.as_tensor().dims().to_vec();
        let s = seed * 100 + i as u64;
        let t = match name.as_str() {
            "A" => {
                let nm = dims[0] * dims[1];
                let re = draw(
                    &[nm, 1],
                    s,
                    dtype,
                    Init::Uniform {
                        lo: -1.0,
                        hi: -0.05,
                    },
                );
                let im = draw(&[nm, 1], s + 50, dtype, Init::Uniform { lo: -3.0, hi: 3.0 });
                Tensor::cat(&[re, im], 1).unwrap().reshape(dims).unwrap()
            }
            "log_delta" => draw(&dims, s, dtype, Init::Uniform { lo: 0.01, hi: 0.5 })
                .log()
                .unwrap(),
            _ => randn(&dims, s, dtype),
        };
        var.set(&t).unwrap();
    }
}

fn build(
    h: usize,
    n: usize,
    m: usize,
    mode: Mode,
    fm: ForwardMode,
    dtype: DType,
) -> (Centaurus, Arc<ParamStore>) {
    let store = ParamStore::init(7, dtype, &Device::Cpu);
    let layer = Centaurus::new(h, config(n, m, mode, fm), &store.builder()).unwrap();
    randomize(&store, 3);
    (layer, store)
}

/// Per-token recurrence in f64, complex numbers spelled out, straight from
/// the definitions (lrnnx for neck/pw/dws, the paper for full).
fn reference(store: &ParamStore, mode: Mode, m: usize, x: &Tensor) -> Vec<f64> {
    let p = store.tensors();
    let g = |k: &str| p.get(k).map(vec1).unwrap_or_default();
    let (a, e, ld, bw, cw) = (g("A"), g("E"), g("log_delta"), g("B"), g("C"));
    let n = ld.len();
    let (bsz, l, h) = x.dims3().unwrap();
    let xs = vec1(x);
    // Sub-state (k, j): Ā = exp(δ_k A[k,j]).
    let abar = |k: usize, j: usize| {
        let d = ld[k].exp();
        let (re, im) = (a[(k * m + j) * 2], a[(k * m + j) * 2 + 1]);
        let r = (d * re).exp();
        (r * (d * im).cos(), r * (d * im).sin())
    };
    let mut y = vec![0.0; bsz * l * h];
    for bi in 0..bsz {
        let mut st = vec![(0.0f64, 0.0f64); n * m];
        for t in 0..l {
            let xt = &xs[(bi * l + t) * h..(bi * l + t + 1) * h];
            // Input of each sub-state.
            let mut u = vec![0.0; n * m];
            for k in 0..n {
                let d = ld[k].exp();
                for j in 0..m {
                    u[k * m + j] = match mode {
                        Mode::Neck => d * (0..h).map(|i| bw[k * h + i] * xt[i]).sum::<f64>(),
                        Mode::Pw => {
                            d * (0..h).map(|i| bw[(k * m + j) * h + i] * xt[i]).sum::<f64>()
                        }
                        Mode::Dws => d * bw[k] * xt[k],
                        Mode::Full if k < h * h => d * bw[k] * xt[k % h],
                        Mode::Full => 0.0,
                    };
                }
            }
            for k in 0..n {
                for j in 0..m {
                    let (ar, ai) = abar(k, j);
                    let (sr, si) = st[k * m + j];
                    st[k * m + j] = (ar * sr - ai * si + u[k * m + j], ar * si + ai * sr);
                }
            }
            for o in 0..h {
                let mut acc = 0.0;
                match mode {
                    Mode::Pw => {
                        for s in 0..n * m {
                            acc += cw[o * n * m + s] * st[s].0;
                        }
                    }
                    _ => {
                        let z =
                            |k: usize| (0..m).map(|j| e[k * m + j] * st[k * m + j].0).sum::<f64>();
                        match mode {
                            Mode::Neck => (0..n).for_each(|k| acc += cw[o * n + k] * z(k)),
                            Mode::Dws => acc = cw[o] * z(o),
                            _ => (0..h).for_each(|i| acc += cw[o * h + i] * z(o * h + i)),
                        }
                    }
                }
                y[(bi * l + t) * h + o] = acc;
            }
        }
    }
    y
}

#[test]
fn forward_matches_reference_in_every_mode_by_scan_and_by_conv() {
    // (B, L, H, odd N, M): L = 70 takes the FFT path of the convolution.
    for (b, l, h, odd, m) in [
        (1, 1, 3, 1, 1),
        (2, 9, 2, 5, 3),
        (3, 37, 5, 7, 2),
        (1, 70, 3, 3, 4),
    ] {
        for mode in MODES {
            let n = states(mode, h, odd);
            let (layer, store) = build(h, n, m, mode, ForwardMode::Auto, DType::F32);
            let x = randn(&[b, l, h], 5, DType::F32);
            let want = reference(&store, mode, m, &x);
            let tol = 1e-4 * max_abs(&want).max(1.0);
            for fm in [ForwardMode::Scan, ForwardMode::Conv, ForwardMode::Auto] {
                let y = layer.forward_by(&x, fm).unwrap();
                assert_eq!(y.dims(), &[b, l, h]);
                let err = max_err(&vec1(&y), &want);
                assert!(err < tol, "{mode:?} {fm:?} ({b},{l},{h},{n},{m}): {err}");
            }
        }
    }
}

#[test]
fn scan_equals_conv_in_f64() {
    for (b, l, h, odd, m) in [(2, 40, 3, 5, 3), (1, 130, 2, 4, 2)] {
        for mode in MODES {
            let n = states(mode, h, odd);
            let (layer, _) = build(h, n, m, mode, ForwardMode::Auto, DType::F64);
            let x = randn(&[b, l, h], 6, DType::F64);
            let ys = vec1(&layer.forward_by(&x, ForwardMode::Scan).unwrap());
            let yc = vec1(&layer.forward_by(&x, ForwardMode::Conv).unwrap());
            let err = max_err(&ys, &yc);
            assert!(err < 1e-10 * max_abs(&ys).max(1.0), "{mode:?} L={l}: {err}");
        }
    }
}

#[test]
fn step_and_prefill_equal_forward_in_every_mode() {
    let (b, l, h, m) = (3, 21, 3, 2);
    for mode in MODES {
        let n = states(mode, h, 5);
        for fm in [ForwardMode::Scan, ForwardMode::Conv] {
            let (layer, _) = build(h, n, m, mode, fm, DType::F32);
            let x = randn(&[b, l, h], 9, DType::F32);
            let y = layer.forward(&x, &ForwardOpts::default()).unwrap();
            let tol = 1e-5 * max_abs(&vec1(&y)).max(1.0);
            let st = layer.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(st.get("h").unwrap().dims(), &[b, 2, n, m]);
            // Every position stepped, then a prefill of 13 positions and steps.
            assert_decoding_matches_forward(&layer, &x, &[13], tol, &format!("{mode:?} {fm:?}"));
        }
    }
}

#[test]
fn two_prefills_equal_one() {
    let (b, l, h, n, m) = (2, 30, 4, 5, 3);
    let (layer, _) = build(h, n, m, Mode::Neck, ForwardMode::Auto, DType::F64);
    let x = randn(&[b, l, h], 1, DType::F64);
    let y = layer.forward(&x, &ForwardOpts::default()).unwrap();
    let mut st = layer.init_state(b, l, DType::F64, &Device::Cpu).unwrap();
    let opts = ForwardOpts::default();
    let y1 = layer
        .prefill(&x.narrow(1, 0, 11).unwrap(), &mut st, &opts)
        .unwrap();
    let y2 = layer
        .prefill(&x.narrow(1, 11, 19).unwrap(), &mut st, &opts)
        .unwrap();
    let err = max_err(&vec1(&Tensor::cat(&[y1, y2], 1).unwrap()), &vec1(&y));
    assert!(err < 1e-12, "{err}");
}

#[test]
fn convolution_with_kernel_equals_forward_in_every_mode() {
    let (b, l, h, m) = (2, 17, 3, 2);
    for mode in MODES {
        let n = states(mode, h, 5);
        let (layer, _) = build(h, n, m, mode, ForwardMode::Auto, DType::F64);
        let x = randn(&[b, l, h], 4, DType::F64);
        let y = vec1(&layer.forward(&x, &ForwardOpts::default()).unwrap());
        let kt = layer.kernel(l).unwrap();
        assert_eq!(kt.dims(), &[h, h, l]);
        let k = vec1(&kt);
        let xs = vec1(&x);
        let mut conv = vec![0.0; b * l * h];
        for bi in 0..b {
            for t in 0..l {
                for o in 0..h {
                    let mut acc = 0.0;
                    for s in 0..=t {
                        for i in 0..h {
                            acc += k[(o * h + i) * l + (t - s)] * xs[(bi * l + s) * h + i];
                        }
                    }
                    conv[(bi * l + t) * h + o] = acc;
                }
            }
        }
        assert!(max_err(&conv, &y) < 1e-10, "{mode:?}");
        if mode == Mode::Dws {
            // Depth-wise: no cross-channel terms.
            assert!(k[(h + 2) * l] == 0.0 && k[(2 * h) * l + 1] == 0.0);
        }
    }
    let (layer, _) = build(3, 5, 2, Mode::Neck, ForwardMode::Auto, DType::F32);
    assert_eq!(
        layer.discretization(),
        lrnnx_framework::Discretization::Mamba
    );
    assert_eq!(layer.family(), Family::Lti);
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in
/// f64, for every parameter (both halves of `A`) and the input, in every mode
/// and by scan and by convolution.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, h, m) = (2, 6, 2, 2);
    // A: real and imaginary parts of the first and last sub-state.
    let indices = |_: &str, len: usize| vec![0, 1, len / 2, len - 2, len - 1];
    for mode in MODES {
        for fm in [ForwardMode::Scan, ForwardMode::Conv] {
            let n = states(mode, h, 3);
            let (layer, store) = build(h, n, m, mode, fm, DType::F64);
            let what = format!("{mode:?} {fm:?}");
            let check = GradientCheck {
                what: &what,
                indices: &indices,
                ..GradientCheck::new(1e-6)
            };
            let (names, _) = check.assert_mixer(&layer, &store, &[b, l, h]);
            let want: &[&str] = if mode == Mode::Pw {
                &["A", "B", "C", "log_delta", "x"]
            } else {
                &["A", "B", "C", "E", "log_delta", "x"]
            };
            assert_eq!(names, want);
        }
    }
}

/// At L = 100000 (B = 1), forward by scan (what `auto` picks there) and by
/// convolution stays finite, and its last positions match prefill(L-8) then 8 steps.
#[test]
fn long_sequence_stays_finite_and_matches_prefill_then_step() {
    let (l, h, n, m) = (100_000, 3, 4, 2);
    let store = ParamStore::init(1, DType::F32, &Device::Cpu);
    let cfg = config(n, m, Mode::Neck, ForwardMode::Auto);
    let layer = Centaurus::new(h, cfg, &store.builder()).unwrap();
    assert_eq!(
        layer.resolve_forward_mode(1, l, &Device::Cpu),
        ForwardMode::Scan
    );
    assert_eq!(
        layer.resolve_forward_mode(2, l, &Device::Cpu),
        ForwardMode::Conv
    );
    let x = randn(&[1, l, h], 2, DType::F32);
    let mut st = layer.init_state(1, l, DType::F32, &Device::Cpu).unwrap();
    layer
        .prefill(
            &x.narrow(1, 0, l - 8).unwrap(),
            &mut st,
            &ForwardOpts::default(),
        )
        .unwrap();
    let mut tail = Vec::new();
    for t in l - 8..l {
        let yt = layer
            .step(&x.narrow(1, t, 1).unwrap(), &mut st, &StepOpts::default())
            .unwrap();
        tail.extend(vec1(&yt));
    }
    for how in [ForwardMode::Auto, ForwardMode::Scan, ForwardMode::Conv] {
        let yv = vec1(&layer.forward_by(&x, how).unwrap());
        assert!(
            yv.iter().all(|v| v.is_finite()),
            "{how:?} at L={l} is finite"
        );
        let want = &yv[(l - 8) * h..];
        let err = max_err(&tail, want);
        assert!(err < 1e-4 * max_abs(want).max(1.0), "{how:?}: {err}");
    }
}

#[test]
fn lengths_and_timesteps_change_nothing_as_in_lrnnx() {
    let (layer, _) = build(4, 3, 2, Mode::Neck, ForwardMode::Auto, DType::F32);
    let x = randn(&[2, 8, 4], 2, DType::F32);
    assert_lengths_change_nothing(&layer, &x, true);
    let e = layer.forward(&x.narrow(1, 0, 0).unwrap(), &ForwardOpts::default());
    assert_eq!(e.unwrap().dims(), &[2, 0, 4]);
}

fn args(store: &Arc<ParamStore>, h: usize, n: usize, kw: &str) -> BuildArgs {
    BuildSite::new(h, n, 2).args(store, kw)
}

fn build_err(h: usize, n: usize, kw: &str) -> String {
    BuildSite::new(h, n, 2).build_error("Centaurus", kw)
}

#[test]
fn registry_modes_aliases_and_config_round_trip() {
    assert_eq!(lrnnx_centaurus::link(), ["Centaurus"]);
    let reg = lrnnx_framework::Registry::get("Centaurus").unwrap();
    assert_eq!(reg.spec.family, Family::Lti);
    for (kw, mode, keys) in [
        (
            r#"{"sub_state_dim": 2}"#,
            "neck",
            vec!["A", "B", "C", "E", "log_delta"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "s5"}"#,
            "pw",
            vec!["A", "B", "C", "log_delta"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "pointwise"}"#,
            "pw",
            vec!["A", "B", "C", "log_delta"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "dws", "d_state": 4}"#,
            "dws",
            vec!["A", "B", "C", "E", "log_delta"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "full", "d_state": 16, "discretization": "bilinear"}"#,
            "full",
            vec!["A", "B", "C", "E", "log_delta"],
        ),
    ] {
        let store = ParamStore::init(0, DType::F32, &Device::Cpu);
        let m = lrnnx_framework::Registry::build("Centaurus", &args(&store, 4, 8, kw)).unwrap();
        let json = lrnnx_framework::config_to_json(m.config()).unwrap();
        assert_eq!(json["type"], "Centaurus");
        assert_eq!(json["mode"], mode, "{kw}");
        let saved: Vec<String> = store.tensors().keys().cloned().collect();
        assert_eq!(saved, keys, "{kw}");
        assert_eq!(store.tensors()["A"].dims()[2], 2);
        // The saved config builds the same layer again.
        let store2 = ParamStore::init(0, DType::F32, &Device::Cpu);
        let mut kw2 = json.as_object().unwrap().clone();
        kw2.remove("type");
        let m2 = lrnnx_framework::Registry::build(
            "Centaurus",
            &BuildArgs {
                kwargs: kw2,
                ..args(&store2, 4, 99, "{}")
            },
        )
        .unwrap();
        assert_eq!(lrnnx_framework::config_to_json(m2.config()).unwrap(), json);
    }
}

#[test]
fn init_is_lrnnx_s() {
    let store = ParamStore::init(0, DType::F64, &Device::Cpu);
    let cfg = config(3, 4, Mode::Dws, ForwardMode::Auto);
    Centaurus::new(3, cfg, &store.builder()).unwrap();
    let p = store.tensors();
    let a = vec1(&p["A"]);
    for j in 0..4 {
        assert_eq!(a[(4 + j) * 2], -0.5);
        assert!((a[(4 + j) * 2 + 1] - j as f64 * std::f64::consts::PI / 4.0).abs() < 1e-6);
    }
    let ld: Vec<f64> = vec1(&p["log_delta"]).iter().map(|v| v.exp()).collect();
    for (got, want) in ld.iter().zip([1e-3, 1e-2, 1e-1]) {
        assert!((got - want).abs() < 1e-6 * want / 1e-3, "{ld:?}");
    }
    assert_eq!(vec1(&p["B"]), vec![1.0; 3]);
    assert_eq!(vec1(&p["C"]), vec![1.0; 3]);
}

#[test]
fn bad_kwargs_and_shapes_are_named() {
    // (kwargs, what the error must name), all for d_model = 4, d_state = 8.
    let cases: [(&str, &[&str]); 8] = [
        ("{}", &["layer 2", "sub_state_dim"]),
        (
            r#"{"sub_state_dim": 2, "mode": "depthwise"}"#,
            &["depthwise", "dws", "neck"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "dws"}"#,
            &["dws", "d_state = 8", "d_model = 4"],
        ),
        (
            r#"{"sub_state_dim": 2, "mode": "full"}"#,
            &["full", "16", "d_state = 8"],
        ),
        (
            r#"{"sub_state_dim": 2, "discretization": "tustin"}"#,
            &["tustin", "no_discretization"],
        ),
        (
            r#"{"sub_state_dim": 0}"#,
            &["sub_state_dim must be positive"],
        ),
        (
            r#"{"sub_state_dim": 2, "forward_mode": "fft"}"#,
            &["fft", "conv"],
        ),
        (
            r#"{"sub_state_dim": 2, "use_fast_path": true}"#,
            &["use_fast_path", "sub_state_dim"],
        ),
    ];
    for (kwargs, parts) in cases {
        assert_mentions(&build_err(4, 8, kwargs), parts);
    }

    let (layer, _) = build(4, 3, 2, Mode::Neck, ForwardMode::Auto, DType::F32);
    assert_wrong_width_is_named(&layer, 4);
    assert_mentions(&step_error(&layer, &[2, 3]), &["(batch, 4)", "[2, 3]"]);
}
