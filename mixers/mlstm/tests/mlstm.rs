//! The mLSTM layer against a slow plain-loop reference; step, prefill,
//! gradients, parameter names, kwargs and bad input.

#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use common::{max_abs, max_err, randn, vec1, CellRef};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore};
use lrnnx_mlstm::{Mlstm, MlstmConfig};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_mentions, assert_prefills_then_steps_match_forward,
    assert_wrong_width_is_named, step_error, BuildSite, GradientCheck,
};

fn config(heads: usize, blocksize: usize, taps: usize, chunk: usize, bias: bool) -> MlstmConfig {
    MlstmConfig {
        num_heads: heads,
        qkv_proj_blocksize: blocksize,
        conv1d_kernel_size: taps,
        chunk_size: chunk,
        bias,
        round_proj_up_to_multiple_of: 4,
        ..MlstmConfig::default()
    }
}

/// The layer with every parameter moved off its init (gates are zero at init).
fn build(
    d: usize,
    cfg: MlstmConfig,
    seed: u64,
    dtype: DType,
) -> (Mlstm, std::sync::Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let layer = Mlstm::new(d, cfg, &store.builder()).unwrap();
    for (n, (_, var)) in store.vars().into_iter().enumerate() {
        let t = var.as_tensor();
        let noise = randn(t.dims(), seed * 100 + n as u64, 0.0, 0.3, dtype);
        var.set(&(t + noise).unwrap()).unwrap();
    }
    (layer, store)
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The layer in plain f64 loops (cell: the reference recurrence).
fn reference(store: &ParamStore, cfg: &MlstmConfig, d: usize, x: &Tensor) -> Vec<f64> {
    let p: BTreeMap<String, Vec<f64>> = store
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), vec1(t)))
        .collect();
    let g = |k: &str| p.get(k).cloned();
    let inner = cfg.inner_dim(d);
    let (nh, bs, ks) = (
        cfg.num_heads,
        cfg.qkv_proj_blocksize,
        cfg.conv1d_kernel_size,
    );
    let dh = inner / nh;
    let (b, l, _) = x.dims3().unwrap();
    let xs = vec1(x);
    let w_up = g("proj_up.weight").unwrap();
    let (conv_w, conv_b) = (
        g("conv1d.conv.weight").unwrap(),
        g("conv1d.conv.bias").unwrap(),
    );
    let headwise = |name: &str, u: &[f64]| -> Vec<f64> {
        let w = g(&format!("{name}.weight")).unwrap();
        let bias = g(&format!("{name}.bias"));
        (0..inner)
            .map(|c| {
                let (h, o) = (c / bs, c % bs);
                let mut acc = bias.as_ref().map_or(0.0, |bv| bv[c]);
                for e in 0..bs {
                    acc += u[h * bs + e] * w[(h * bs + o) * bs + e];
                }
                acc
            })
            .collect()
    };
    let mut y = vec![0.0; b * l * d];
    for bi in 0..b {
        let mut x_m = vec![vec![0.0; inner]; l];
        let mut z = vec![vec![0.0; inner]; l];
        for t in 0..l {
            for r in 0..2 * inner {
                let mut acc = g("proj_up.bias").map_or(0.0, |bv| bv[r]);
                for e in 0..d {
                    acc += w_up[r * d + e] * xs[(bi * l + t) * d + e];
                }
                if r < inner {
                    x_m[t][r] = acc;
                } else {
                    z[t][r - inner] = acc;
                }
            }
        }
        let act: Vec<Vec<f64>> = (0..l)
            .map(|t| {
                (0..inner)
                    .map(|c| {
                        let mut acc = conv_b[c];
                        for j in 0..ks {
                            let src = t as isize - (ks as isize - 1) + j as isize;
                            if src >= 0 {
                                acc += conv_w[c * ks + j] * x_m[src as usize][c];
                            }
                        }
                        silu(acc)
                    })
                    .collect()
            })
            .collect();
        // Cell inputs in (1, NH, L, DH) layout.
        let mut cr = CellRef {
            b: 1,
            nh,
            s: l,
            dk: dh,
            dv: dh,
            q: vec![0.0; nh * l * dh],
            k: vec![0.0; nh * l * dh],
            v: vec![0.0; nh * l * dh],
            i: vec![0.0; nh * l],
            f: vec![0.0; nh * l],
        };
        for t in 0..l {
            let q = headwise("q_proj", &act[t]);
            let k = headwise("k_proj", &act[t]);
            let v = headwise("v_proj", &x_m[t]);
            let cat: Vec<f64> = q.iter().chain(&k).chain(&v).cloned().collect();
            for h in 0..nh {
                for e in 0..dh {
                    let at = (h * l + t) * dh + e;
                    cr.q[at] = q[h * dh + e];
                    cr.k[at] = k[h * dh + e];
                    cr.v[at] = v[h * dh + e];
                }
                for (gate, out) in [("igate", &mut cr.i), ("fgate", &mut cr.f)] {
                    let w = g(&format!("mlstm_cell.{gate}.weight")).unwrap();
                    let bias = g(&format!("mlstm_cell.{gate}.bias")).unwrap();
                    let mut acc = bias[h];
                    for (j, cj) in cat.iter().enumerate() {
                        acc += w[h * 3 * inner + j] * cj;
                    }
                    out[h * l + t] = acc;
                }
            }
        }
        let hcell = cr.recurrent(None, cfg.eps).h;
        let norm_w = g("mlstm_cell.outnorm.weight").unwrap();
        let skip = g("learnable_skip").unwrap();
        let w_down = g("proj_down.weight").unwrap();
        for t in 0..l {
            let mut gated = vec![0.0; inner];
            for h in 0..nh {
                let hv = &hcell[(h * l + t) * dh..(h * l + t + 1) * dh];
                let mean = hv.iter().sum::<f64>() / dh as f64;
                let var = hv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / dh as f64;
                for e in 0..dh {
                    let c = h * dh + e;
                    let hn = (hv[e] - mean) / (var + 1e-5).sqrt() * (1.0 + norm_w[c]);
                    gated[c] = (hn + skip[c] * act[t][c]) * silu(z[t][c]);
                }
            }
            for o in 0..d {
                let mut acc = g("proj_down.bias").map_or(0.0, |bv| bv[o]);
                for c in 0..inner {
                    acc += w_down[o * inner + c] * gated[c];
                }
                y[(bi * l + t) * d + o] = acc;
            }
        }
    }
    y
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    // (B, L, d, heads, blocksize, taps, chunk, bias)
    for (b, l, d, nh, bs, ks, chunk, bias) in [
        (1, 1, 5, 3, 4, 4, 5, true),
        (2, 9, 5, 3, 2, 4, 4, false),
        (3, 37, 6, 2, 4, 3, 8, true),
        (1, 20, 3, 1, 1, 1, 64, false),
    ] {
        let cfg = config(nh, bs, ks, chunk, bias);
        for dt in [DType::F64, DType::F32] {
            let (layer, store) = build(d, cfg.clone(), 11, dt);
            let x = randn(&[b, l, d], 5, 0.0, 1.0, dt);
            let y = layer.forward(&x, &ForwardOpts::default()).unwrap();
            assert_eq!(y.dims(), &[b, l, d]);
            let want = reference(&store, &cfg, d, &x);
            let err = max_err(&vec1(&y), &want) / max_abs(&want).max(1.0);
            let tol = if dt == DType::F64 { 1e-10 } else { 1e-4 };
            assert!(err < tol, "({b},{l},{d}) {dt:?}: {err}");
        }
    }
}

#[test]
fn step_and_prefill_equal_forward() {
    let (b, l, d) = (3, 21, 6);
    let cfg = config(2, 4, 4, 5, true);
    let (layer, _) = build(d, cfg, 2, DType::F32);
    let x = randn(&[b, l, d], 9, 0.0, 1.0, DType::F32);
    let y = layer.forward(&x, &ForwardOpts::default()).unwrap();
    let tol = 1e-4 * max_abs(&vec1(&y)).max(1.0);
    // Every position stepped; a prefill of 8 then 5 positions (chunkwise from
    // the carried state), then steps for the rest.
    assert_decoding_matches_forward(&layer, &x, &[8, 5], tol, "mLSTM");
    // A prefill of one position (shorter than the conv window) then steps.
    assert_prefills_then_steps_match_forward(&layer, &x, &[1], tol, "mLSTM");
}

#[test]
fn parameters_carry_the_xlstm_names_and_shapes() {
    let cfg = MlstmConfig {
        bias: true,
        ..MlstmConfig::default()
    };
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let layer = Mlstm::new(16, cfg, &store.builder()).unwrap();
    assert_eq!(layer.inner_dim(), 64);
    let shapes: BTreeMap<String, Vec<usize>> = store
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect();
    let want: BTreeMap<String, Vec<usize>> = [
        ("proj_up.weight", vec![128, 16]),
        ("proj_up.bias", vec![128]),
        ("q_proj.weight", vec![16, 4, 4]),
        ("q_proj.bias", vec![64]),
        ("k_proj.weight", vec![16, 4, 4]),
        ("k_proj.bias", vec![64]),
        ("v_proj.weight", vec![16, 4, 4]),
        ("v_proj.bias", vec![64]),
        ("conv1d.conv.weight", vec![64, 1, 4]),
        ("conv1d.conv.bias", vec![64]),
        ("mlstm_cell.igate.weight", vec![4, 192]),
        ("mlstm_cell.igate.bias", vec![4]),
        ("mlstm_cell.fgate.weight", vec![4, 192]),
        ("mlstm_cell.fgate.bias", vec![4]),
        ("mlstm_cell.outnorm.weight", vec![64]),
        ("learnable_skip", vec![64]),
        ("proj_down.weight", vec![16, 64]),
        ("proj_down.bias", vec![16]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(shapes, want);
    let fb = vec1(&store.tensors()["mlstm_cell.fgate.bias"]);
    assert_eq!(fb, vec![3.0, 4.0, 5.0, 6.0]);
    assert_eq!(vec1(&store.tensors()["learnable_skip"]), vec![1.0; 64]);
}

/// Central finite differences of `sum(forward(x) * w)` against autograd for every parameter and the input, f64.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, d) = (2, 7, 4);
    let cfg = config(2, 2, 3, 3, true);
    let (layer, store) = build(d, cfg, 8, DType::F64);
    let (checked, _) = GradientCheck::new(1e-6).assert_mixer(&layer, &store, &[b, l, d]);
    assert_eq!(checked.len(), 18 + 1, "every parameter and the input");
}

fn site(d: usize) -> BuildSite {
    BuildSite::new(d, 16, 2)
}

#[test]
fn registry_builds_by_name_and_alias_with_xlstm_kwargs() {
    let kw = r#"{"num_heads": 2, "proj_factor": 2.0, "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4,
                 "bias": false, "dropout": 0.0, "context_length": 128, "embedding_dim": 32,
                 "chunk_size": 16, "_num_blocks": 2}"#;
    let m = site(32).build("mLSTM", kw).unwrap();
    assert_eq!(m.name(), "mLSTM");
    let json = lrnnx_framework::config_to_json(m.config()).unwrap();
    assert_eq!(json["type"], "mLSTM");
    assert_eq!(json["chunk_size"], 16);
    assert_eq!(json["_num_blocks"], 2);
    let x = randn(&[2, 5, 32], 1, 0.0, 1.0, DType::F32);
    assert_eq!(
        m.forward(&x, &ForwardOpts::default()).unwrap().dims(),
        &[2, 5, 32]
    );
    let m = site(8).build("mlstm", "{}").unwrap();
    assert_eq!(m.family(), lrnnx_framework::Family::Other);
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (layer, _) = build(4, config(2, 2, 3, 3, false), 1, DType::F32);
    assert_wrong_width_is_named(&layer, 4);
    assert_mentions(&step_error(&layer, &[2, 3]), &["(batch, 4)", "[2, 3]"]);
    let build = |kw: &str| site(16).build_error("mLSTM", kw);
    let e = build(r#"{"num_head": 4}"#);
    assert!(
        e.contains("layer 2") && e.contains("num_head") && e.contains("num_heads"),
        "{e}"
    );
    let e = build(r#"{"num_heads": 5}"#);
    assert!(
        e.contains("layer 2") && e.contains("num_heads") && e.contains("64") && e.contains('5'),
        "{e}"
    );
    let e = build(r#"{"qkv_proj_blocksize": 7}"#);
    assert!(e.contains("qkv_proj_blocksize") && e.contains('7'), "{e}");
    let e = build(r#"{"embedding_dim": 32}"#);
    assert!(
        e.contains("embedding_dim") && e.contains("16") && e.contains("32"),
        "{e}"
    );
    let e = build(r#"{"chunk_size": 0}"#);
    assert!(e.contains("chunk_size"), "{e}");
    let e = build(r#"{"conv1d_kernel_size": 0}"#);
    assert!(e.contains("conv1d_kernel_size"), "{e}");
}

#[test]
fn empty_sequences_and_mixed_dtypes_work() {
    let (layer, _) = build(4, config(2, 2, 3, 3, false), 1, DType::F64);
    let x = Tensor::zeros((2, 0, 4), DType::F64, &Device::Cpu).unwrap();
    let y = layer.forward(&x, &ForwardOpts::default()).unwrap();
    assert_eq!(y.dims(), &[2, 0, 4]);
    let x64 = randn(&[2, 5, 4], 1, 0.0, 1.0, DType::F64);
    let x32 = x64.to_dtype(DType::F32).unwrap();
    let y32 = layer.forward(&x32, &ForwardOpts::default()).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    let y64 = layer.forward(&x64, &ForwardOpts::default()).unwrap();
    assert!(max_err(&vec1(&y32), &vec1(&y64)) < 1e-5);
}
