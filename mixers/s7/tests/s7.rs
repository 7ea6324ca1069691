//! S7 against a slow, obviously right reference; step, prefill, gradients, errors.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, LRNNLMHeadModel, LmConfig, Mixer, ParamStore};
use lrnnx_s7::{S7Config, S7};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_lengths_change_nothing,
    assert_lm_decoding_matches_forward, assert_mentions, assert_wrong_width_is_named,
    first_middle_last, max_err, randn, step_error, vec1, BuildSite, GradientCheck,
};

/// The layer with x_proj scaled up from its tiny N(0, 0.02) init, so that
/// `B`, `C`, `D` and the decay all matter.
fn build(h: usize, n: usize, seed: u64, dtype: DType) -> (S7, Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = S7::new(h, S7Config::new(n), &store.builder()).unwrap();
    let xp = &store.vars()["x_proj.weight"];
    xp.set(&(xp.as_tensor() * 15.0).unwrap()).unwrap();
    (m, store)
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

/// Per-token recurrence in f64, written from lrnnx's slow path.
fn reference(store: &ParamStore, x: &Tensor) -> Vec<f64> {
    let p = store.tensors();
    let g = |k: &str| vec1(&p[k]);
    let (win, wx, wg, base) = (
        g("in_proj.weight"),
        g("x_proj.weight"),
        g("gate_proj.weight"),
        g("base_params"),
    );
    let n = base.len();
    let (b, l, h) = x.dims3().unwrap();
    let rows = wx.len() / h;
    let xs = vec1(x);
    let mut y = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut s = vec![0.0; n];
        for t in 0..l {
            let xt = &xs[(bi * l + t) * h..(bi * l + t + 1) * h];
            let u: Vec<f64> = (0..h)
                .map(|o| (0..h).map(|i| win[o * h + i] * xt[i]).sum())
                .collect();
            let xd: Vec<f64> = (0..rows)
                .map(|r| (0..h).map(|i| wx[r * h + i] * u[i]).sum())
                .collect();
            let a_raw = &xd[0..n];
            let bm = &xd[n..n + h * n]; // B[h, n] = bm[h*N + n]
            let cm = &xd[n + h * n..n + 2 * h * n];
            let dv = &xd[n + 2 * h * n..n + 2 * h * n + h];
            let bias = &xd[n + 2 * h * n + h..];
            for k in 0..n {
                let a = a_raw[k] + base[k];
                let abar = 1.0 - 1.0 / (a * a + 0.5);
                let bu: f64 = (0..h).map(|hh| bm[hh * n + k] * u[hh]).sum::<f64>() + bias[k];
                s[k] = abar * s[k] + bu;
            }
            let yv: Vec<f64> = (0..h)
                .map(|hh| (0..n).map(|k| cm[hh * n + k] * s[k]).sum::<f64>() + dv[hh] * u[hh])
                .collect();
            for o in 0..h {
                let z: f64 = (0..h).map(|i| wg[o * h + i] * gelu(yv[i])).sum();
                let gate = 1.0 / (1.0 + (-z).exp());
                y[(bi * l + t) * h + o] = gate * yv[o] + xt[o];
            }
        }
    }
    y
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    // (2, 300, ..) runs 600 tokens: more than one GEMM chunk of the B and C ops.
    for (b, l, h, n) in [
        (1, 1, 3, 1),
        (2, 9, 5, 3),
        (3, 37, 8, 7),
        (1, 40, 4, 16),
        (2, 300, 6, 5),
    ] {
        let (m, store) = build(h, n, 11, DType::F64);
        let x = randn(&[b, l, h], 5, DType::F64);
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        let want = reference(&store, &x);
        let err = max_err(&vec1(&y), &want);
        assert!(err < 1e-10, "f64 ({b},{l},{h},{n}): {err}");
        let (m32, store32) = build(h, n, 11, DType::F32);
        let y32 = m32
            .forward(&x.to_dtype(DType::F32).unwrap(), &ForwardOpts::default())
            .unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        let want32 = reference(&store32, &x);
        let scale = want32.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        let err = max_err(&vec1(&y32), &want32) / scale;
        assert!(err < 1e-5, "f32 ({b},{l},{h},{n}): {err}");
    }
}

#[test]
fn step_and_prefill_equal_forward() {
    let (m, _) = build(6, 5, 2, DType::F32);
    let x = randn(&[3, 21, 6], 9, DType::F32);
    assert_decoding_matches_forward(&m, &x, &[9, 4], 1e-5, "S7");
}

#[test]
fn lengths_and_timesteps_change_nothing_as_in_lrnnx() {
    let (m, _) = build(4, 3, 1, DType::F32);
    assert_lengths_change_nothing(&m, &randn(&[2, 8, 4], 2, DType::F32), true);
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in
/// f64, at the given indices of every parameter and the input.
fn check_gradients(b: usize, l: usize, h: usize, n: usize, seed: u64) {
    let (m, store) = build(h, n, seed, DType::F64);
    let indices = |name: &str, len: usize| -> Vec<usize> {
        if name == "x_proj.weight" {
            // One entry in each block: A, B, C, D, bias (rows N, HN, HN, H, N).
            [0, n, n + h * n, n + 2 * h * n, 2 * n + 2 * h * n + h - 1]
                .iter()
                .map(|r| r * h + r % h)
                .collect()
        } else {
            first_middle_last(name, len)
        }
    };
    let what = format!("({b},{l},{h},{n})");
    let check = GradientCheck {
        what: &what,
        indices: &indices,
        ..GradientCheck::new(1e-7)
    };
    let (checked, _) = check.assert_mixer(&m, &store, &[b, l, h]);
    assert_eq!(checked.len(), 5);
}

#[test]
fn gradients_match_finite_differences() {
    check_gradients(2, 7, 3, 4, 8);
}

/// 520 tokens: the backward of the B and C ops runs over two GEMM chunks.
#[test]
fn gradients_match_finite_differences_across_chunks() {
    check_gradients(2, 260, 3, 2, 9);
}

#[test]
fn parameters_have_lrnnx_names_shapes_and_init() {
    let (h, n) = (8, 4);
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    S7::new(h, S7Config::new(n), &store.builder()).unwrap();
    let t = store.tensors();
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("base_params", vec![n]),
        ("in_proj.weight", vec![h, h]),
        ("x_proj.weight", vec![2 * n + 2 * h * n + h, h]),
        ("gate_proj.weight", vec![h, h]),
    ];
    assert_eq!(t.len(), shapes.len(), "{:?}", t.keys().collect::<Vec<_>>());
    for (k, s) in shapes {
        assert_eq!(t[k].dims(), s.as_slice(), "{k}");
    }
    assert!(vec1(&t["base_params"]).iter().all(|&v| v == -0.5));
    let xp = vec1(&t["x_proj.weight"]);
    let std = (xp.iter().map(|v| v * v).sum::<f64>() / xp.len() as f64).sqrt();
    assert!((0.017..0.023).contains(&std), "x_proj std {std}");
    let m = vec1(&t["in_proj.weight"])
        .iter()
        .fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(m <= 1.0 / (h as f64).sqrt());
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (m, _) = build(4, 3, 1, DType::F32);
    assert_wrong_width_is_named(&m, 4);
    assert_mentions(&step_error(&m, &[2, 5]), &["[2, 5]"]);
    let site = BuildSite::new(4, 6, 1);
    let e = site.build_error("S7", r#"{"J": 4}"#);
    assert_mentions(&e, &["layer 1", "divisible by J", "J = 4"]);
    let e = site.build_error("s7", r#"{"d_state": 0}"#);
    assert_mentions(&e, &["d_state must be positive"]);
    let e = site.build_error("S7", r#"{"j": 2}"#);
    assert_mentions(&e, &["`j`", "`J`"]);
    // The model's d_state is the default; Python-only switches are kept.
    let ok = site
        .build("S7", r#"{"J": 3, "use_fast_path": false}"#)
        .unwrap();
    let saved = lrnnx_framework::config_to_json(ok.config()).unwrap();
    assert_eq!(saved["d_state"], 6);
    assert_eq!(saved["J"], 3);
    assert_eq!(saved["use_fast_path"], false);
}

/// In an LM (which passes its d_state) the layer builds, and decoding step
/// by step gives the logits of the parallel forward.
#[test]
fn builds_and_decodes_inside_an_lm() {
    lrnnx_s7::link();
    let mut cfg = LmConfig::new(16, 8, 50, &["S7", "S7"]);
    cfg.d_intermediate = 32;
    let model = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]], &Device::Cpu).unwrap();
    assert_lm_decoding_matches_forward(&model, &ids, 0, 1e-4);
}
