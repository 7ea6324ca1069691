//! RG-LRU against a slow, obviously right reference; step, prefill, gradients, errors.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, LRNNLMHeadModel, LmConfig, Mixer, ParamStore};
use lrnnx_rglru::{RgLru, RgLruConfig};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_lengths_change_nothing,
    assert_lm_decoding_matches_forward, assert_mentions, assert_wrong_width_is_named, max_err,
    randn, step_error, vec1, BuildSite, GradientCheck,
};

fn config(d_conv: usize, expand: f64, bias: bool) -> RgLruConfig {
    RgLruConfig {
        d_conv,
        expand,
        bias,
        ..RgLruConfig::default()
    }
}

fn build(h: usize, cfg: RgLruConfig, seed: u64, dtype: DType) -> (RgLru, Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = RgLru::new(h, cfg, &store.builder()).unwrap();
    (m, store)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

/// `w (out, in) @ v + b`.
fn dense(w: &[f64], b: Option<&Vec<f64>>, v: &[f64]) -> Vec<f64> {
    let n_in = v.len();
    let n_out = w.len() / n_in;
    (0..n_out)
        .map(|o| {
            let acc: f64 = (0..n_in).map(|i| w[o * n_in + i] * v[i]).sum();
            acc + b.map_or(0.0, |b| b[o])
        })
        .collect()
}

/// Per-token recurrence in f64, written from lrnnx's formulas.
fn reference(store: &ParamStore, cfg: &RgLruConfig, x: &Tensor) -> Vec<f64> {
    let p = store.tensors();
    let g = |k: &str| p.get(k).map(vec1);
    let (wg, bg) = (g("gate_proj.weight").unwrap(), g("gate_proj.bias"));
    let (wi, bi) = (g("in_proj.weight").unwrap(), g("in_proj.bias"));
    let (cw, cb) = (g("conv1d.weight").unwrap(), g("conv1d.bias"));
    let (wr, br) = (
        g("recurrent_gate_proj.weight").unwrap(),
        g("recurrent_gate_proj.bias"),
    );
    let (wq, bq) = (
        g("input_gate_proj.weight").unwrap(),
        g("input_gate_proj.bias"),
    );
    let (wo, bo) = (g("out_proj.weight").unwrap(), g("out_proj.bias"));
    let a_log = g("a_log").unwrap();
    let (b, l, h) = x.dims3().unwrap();
    let d = a_log.len();
    let w = cfg.d_conv;
    let xs = vec1(x);
    let mut y = vec![0.0; b * l * h];
    for bi_ in 0..b {
        let mut xi_hist: Vec<Vec<f64>> = Vec::new();
        let mut state = vec![0.0; d];
        for t in 0..l {
            let xt = &xs[(bi_ * l + t) * h..(bi_ * l + t + 1) * h];
            let gate: Vec<f64> = dense(&wg, bg.as_ref(), xt).into_iter().map(gelu).collect();
            xi_hist.push(dense(&wi, bi.as_ref(), xt));
            let xc: Vec<f64> = (0..d)
                .map(|c| {
                    let mut acc = cb.as_ref().map_or(0.0, |b| b[c]);
                    for k in 0..w {
                        if let Some(src) = (t + k).checked_sub(w - 1) {
                            acc += cw[c * w + k] * xi_hist[src][c];
                        }
                    }
                    acc
                })
                .collect();
            let r = dense(&wr, br.as_ref(), &xc);
            let i = dense(&wq, bq.as_ref(), &xc);
            let mut gh = vec![0.0; d];
            for c in 0..d {
                let a = sigmoid(a_log[c]);
                let abar = a.powf(cfg.c * sigmoid(r[c]));
                state[c] = abar * state[c] + (1.0 - abar * abar).sqrt() * sigmoid(i[c]) * xc[c];
                gh[c] = gate[c] * state[c];
            }
            let out = dense(&wo, bo.as_ref(), &gh);
            y[(bi_ * l + t) * h..(bi_ * l + t + 1) * h].copy_from_slice(&out);
        }
    }
    y
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    for (b, l, h, w, expand, bias) in [
        (1, 1, 3, 4, 1.0, false),
        (2, 9, 5, 1, 1.0, true),
        (3, 37, 8, 4, 1.5, false),
        (1, 40, 4, 3, 2.0, true),
        (2, 5, 33, 6, 1.0, false),
    ] {
        let cfg = config(w, expand, bias);
        let (m, store) = build(h, cfg.clone(), 11, DType::F64);
        let x = randn(&[b, l, h], 5, DType::F64);
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        let err = max_err(&vec1(&y), &reference(&store, &cfg, &x));
        assert!(
            err < 1e-12,
            "f64 ({b},{l},{h}) W={w} expand={expand}: {err}"
        );
        // The same in f32.
        let (m32, _) = build(h, cfg.clone(), 11, DType::F32);
        let y32 = m32
            .forward(&x.to_dtype(DType::F32).unwrap(), &ForwardOpts::default())
            .unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        let err = max_err(&vec1(&y32), &reference(&store, &cfg, &x));
        assert!(err < 1e-5, "f32 ({b},{l},{h}) W={w} expand={expand}: {err}");
    }
}

#[test]
fn step_and_prefill_equal_forward() {
    for (w, bias) in [(4, false), (1, true), (3, true)] {
        let (m, _) = build(6, config(w, 1.5, bias), 2, DType::F32);
        let x = randn(&[3, 21, 6], 9, DType::F32);
        // The second prefill starts from a non-empty state, with fewer
        // positions than the conv window.
        assert_decoding_matches_forward(&m, &x, &[11, 2], 1e-5, &format!("W={w}"));
    }
}

#[test]
fn lengths_and_timesteps_change_nothing_as_in_lrnnx() {
    let (m, _) = build(4, RgLruConfig::default(), 1, DType::F32);
    assert_lengths_change_nothing(&m, &randn(&[2, 8, 4], 2, DType::F32), true);
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in f64,
/// for every parameter (biases included) and the input.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, h) = (2, 7, 3);
    let (m, store) = build(h, config(3, 2.0, true), 8, DType::F64);
    let (checked, _) = GradientCheck::new(1e-7).assert_mixer(&m, &store, &[b, l, h]);
    // 13 parameters with every bias switched on, plus the input.
    assert_eq!(checked.len(), 14, "{checked:?}");
}

#[test]
fn parameters_have_lrnnx_names_shapes_and_init() {
    let (h, d, w) = (8, 12, 4);
    let (_, store) = build(h, config(w, 1.5, false), 3, DType::F32);
    let t = store.tensors();
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("a_log", vec![d, 1]),
        ("gate_proj.weight", vec![d, h]),
        ("in_proj.weight", vec![d, h]),
        ("conv1d.weight", vec![d, 1, w]),
        ("conv1d.bias", vec![d]),
        ("recurrent_gate_proj.weight", vec![d, d]),
        ("recurrent_gate_proj.bias", vec![d]),
        ("input_gate_proj.weight", vec![d, d]),
        ("input_gate_proj.bias", vec![d]),
        ("out_proj.weight", vec![h, d]),
    ];
    assert_eq!(t.len(), shapes.len(), "{:?}", t.keys().collect::<Vec<_>>());
    for (k, s) in shapes {
        assert_eq!(t[k].dims(), s.as_slice(), "{k}");
    }
    // a_log = log(U[0.9, 0.999)); torch Linear / Conv1d defaults are U(+-1/sqrt(fan_in)).
    assert!(vec1(&t["a_log"])
        .iter()
        .all(|&v| (0.9f64.ln()..0.999f64.ln()).contains(&v)));
    let bound = |k: &str, fan_in: usize| {
        let m = vec1(&t[k]).iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(m <= 1.0 / (fan_in as f64).sqrt() + 1e-6, "{k}: {m}");
    };
    bound("gate_proj.weight", h);
    bound("conv1d.weight", w);
    bound("recurrent_gate_proj.weight", d);
    bound("out_proj.weight", d);
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (m, _) = build(4, RgLruConfig::default(), 1, DType::F32);
    assert_wrong_width_is_named(&m, 4);
    assert_mentions(&step_error(&m, &[2, 3, 4]), &["[2, 3, 4]"]);
    let site = BuildSite::new(4, 16, 2);
    // lrnnx's RGLRU has no d_state parameter.
    let e = site.build_error("RGLRU", r#"{"d_state": 8}"#);
    assert_mentions(&e, &["layer 2", "d_state", "d_conv"]);
    let e = site.build_error("rglru", r#"{"c": 0.0}"#);
    assert_mentions(&e, &["layer 2", "c must be"]);
    let e = site.build_error("RGLRU", r#"{"a_init_range": [0.0, 0.5]}"#);
    assert_mentions(&e, &["a_init_range"]);
    let e = site.build_error("RGLRU", r#"{"d_conv": 0}"#);
    assert_mentions(&e, &["d_conv"]);
    // Python-only switches are accepted and kept.
    let ok = site
        .build(
            "RGLRU",
            r#"{"use_fast_path": false, "layer_idx": 3, "expand": 2}"#,
        )
        .unwrap();
    let saved = lrnnx_framework::config_to_json(ok.config()).unwrap();
    assert_eq!(saved["use_fast_path"], false);
    assert_eq!(saved["expand"], 2.0);
}

/// In an LM (which has a model-wide d_state) the block builds, and decoding
/// step by step gives the logits of the parallel forward.
#[test]
fn builds_and_decodes_inside_an_lm() {
    lrnnx_rglru::link();
    let mut cfg = LmConfig::new(16, 32, 50, &["RGLRU", "RGLRU"]);
    cfg.d_intermediate = 0;
    let model = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]], &Device::Cpu).unwrap();
    assert_lm_decoding_matches_forward(&model, &ids, 0, 1e-4);
}
