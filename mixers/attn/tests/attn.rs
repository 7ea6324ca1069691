//! Attention against a slow reference (loops over heads and positions); step and prefill.

use candle_core::{DType, Device, Tensor};
use lrnnx_attn::{Mha, MhaConfig, Rotary};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore};
use lrnnx_testing::{
    assert_mentions, assert_prefills_then_steps_match_forward, assert_steps_match_forward, max_err,
    step_error, vec1,
};

fn cfg(json: &str) -> MhaConfig {
    serde_json::from_str(json).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    lrnnx_testing::randn(shape, seed, DType::F32)
}

/// NeoX-style rotary on one head vector at position `pos`.
fn rotate(v: &mut [f64], pos: usize, rd: usize, interleaved: bool) {
    for i in 0..rd / 2 {
        let theta = pos as f64 / 10000f64.powf(2.0 * i as f64 / rd as f64);
        let (c, s) = (theta.cos(), theta.sin());
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + rd / 2)
        };
        let (x, y) = (v[a], v[b]);
        v[a] = x * c - y * s;
        v[b] = y * c + x * s;
    }
}

/// Loops over batch, heads, queries and keys.
fn reference(store: &ParamStore, c: &MhaConfig, x: &Tensor) -> Vec<f64> {
    let p = store.tensors();
    let (b, l, e) = x.dims3().unwrap();
    let (h, hk) = (c.num_heads, c.num_heads_kv.unwrap());
    let d = c.head_dim.unwrap();
    let q_dim = d * (h + 2 * hk);
    let w_in = vec1(&p["in_proj.weight"]);
    let b_in = p.get("in_proj.bias").map(vec1);
    let rows = w_in.len() / e;
    let xs = vec1(x);
    // in_proj
    let mut proj = vec![0.0; b * l * rows];
    for r in 0..b * l {
        for o in 0..rows {
            let mut acc = b_in.as_ref().map_or(0.0, |bb| bb[o]);
            for i in 0..e {
                acc += w_in[o * e + i] * xs[r * e + i];
            }
            proj[r * rows + o] = acc;
        }
    }
    // causal depthwise conv on the qkv part
    if c.d_conv > 0 {
        let (cw, cb) = (vec1(&p["conv1d.weight"]), vec1(&p["conv1d.bias"]));
        let w = c.d_conv;
        let mut out = proj.clone();
        for bi in 0..b {
            for t in 0..l {
                for ch in 0..q_dim {
                    let mut acc = cb[ch];
                    for k in 0..w {
                        let src = t as isize - (w as isize - 1) + k as isize;
                        if src >= 0 {
                            acc += cw[ch * w + k] * proj[(bi * l + src as usize) * rows + ch];
                        }
                    }
                    out[(bi * l + t) * rows + ch] = acc;
                }
            }
        }
        proj = out;
    }
    let half = c.mlp_dim / 2;
    let ctx_w = h * d + half;
    let mut ctx = vec![0.0; b * l * ctx_w];
    let scale = c.softmax_scale.unwrap();
    let head = |bi: usize, t: usize, off: usize| -> Vec<f64> {
        let r = (bi * l + t) * rows;
        let mut v = proj[r + off..r + off + d].to_vec();
        if off < (h + hk) * d && c.rotary_emb_dim > 0 {
            rotate(&mut v, t, c.rotary_emb_dim, c.rotary_emb_interleaved);
        }
        v
    };
    for bi in 0..b {
        for hi in 0..h {
            let kv = hi / (h / hk);
            for t in 0..l {
                let q = head(bi, t, hi * d);
                let last = if c.causal { t } else { l - 1 };
                let scores: Vec<f64> = (0..=last)
                    .map(|s| {
                        let k = head(bi, s, (h + kv) * d);
                        q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (s, sc) in scores.iter().enumerate() {
                    let v = head(bi, s, (h + hk + kv) * d);
                    for j in 0..d {
                        ctx[(bi * l + t) * ctx_w + hi * d + j] += (sc - m).exp() / z * v[j];
                    }
                }
            }
        }
        for t in 0..l {
            let r = (bi * l + t) * rows;
            for j in 0..half {
                let (up, gate) = (proj[r + q_dim + j], proj[r + q_dim + half + j]);
                ctx[(bi * l + t) * ctx_w + h * d + j] = up * gate / (1.0 + (-gate).exp());
            }
        }
    }
    let (w_out, b_out) = (
        vec1(&p["out_proj.weight"]),
        p.get("out_proj.bias").map(vec1),
    );
    let mut y = vec![0.0; b * l * e];
    for r in 0..b * l {
        for o in 0..e {
            let mut acc = b_out.as_ref().map_or(0.0, |bb| bb[o]);
            for i in 0..ctx_w {
                acc += w_out[o * ctx_w + i] * ctx[r * ctx_w + i];
            }
            y[r * e + o] = acc;
        }
    }
    y
}

const CASES: &[(&str, usize)] = &[
    (r#"{"num_heads": 2, "causal": true}"#, 6),
    (
        r#"{"num_heads": 4, "num_heads_kv": 2, "causal": true, "rotary_emb_dim": 2}"#,
        12,
    ),
    (
        r#"{"num_heads": 3, "num_heads_kv": 1, "head_dim": 5, "causal": true, "rotary_emb_dim": 4, "rotary_emb_interleaved": true, "d_conv": 3}"#,
        7,
    ),
    (
        r#"{"num_heads": 2, "causal": true, "mlp_dim": 10, "qkv_proj_bias": false, "out_proj_bias": false, "rotary_emb_dim": 4}"#,
        8,
    ),
    (r#"{"num_heads": 2, "causal": false}"#, 6),
];

#[test]
fn forward_matches_reference() {
    for (i, (json, e)) in CASES.iter().enumerate() {
        let store = ParamStore::init(i as u64, DType::F32, &Device::Cpu);
        let m = Mha::new(*e, cfg(json), &store.builder()).unwrap();
        let resolved = cfg(json).resolve(*e).unwrap();
        let x = randn(&[2, 11, *e], 40 + i as u64);
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        let err = max_err(&vec1(&y), &reference(&store, &resolved, &x));
        assert!(err < 1e-4, "case {i} {json}: {err}");
    }
}

#[test]
fn step_and_prefill_equal_forward_position_by_position() {
    for (i, (json, e)) in CASES
        .iter()
        .enumerate()
        .filter(|(_, (j, _))| j.contains("\"causal\": true"))
    {
        let store = ParamStore::init(7 + i as u64, DType::F32, &Device::Cpu);
        let m = Mha::new(*e, cfg(json), &store.builder()).unwrap();
        let (b, l) = (3, 13);
        let x = randn(&[b, l, *e], 99);
        // Start with a small cache so that it has to grow.
        assert_steps_match_forward(&m, &x, 4, 1e-5, &format!("case {i}"));
        assert_prefills_then_steps_match_forward(&m, &x, &[5, 4], 1e-5, &format!("case {i}"));
    }
}

#[test]
fn rotary_scores_depend_only_on_relative_position() {
    for interleaved in [false, true] {
        let rot = Rotary::new(8, 10000.0, interleaved);
        let q = randn(&[1, 1, 1, 8], 1);
        let k = randn(&[1, 1, 1, 8], 2);
        let dot = |pq: usize, pk: usize| -> f64 {
            let a = vec1(&rot.apply(&q, pq).unwrap());
            let b = vec1(&rot.apply(&k, pk).unwrap());
            a.iter().zip(&b).map(|(x, y)| x * y).sum()
        };
        assert!((dot(3, 1) - dot(12, 10)).abs() < 1e-4);
        assert!(
            (dot(3, 1) - dot(3, 2)).abs() > 1e-3,
            "rotation must change scores"
        );
    }
}

#[test]
fn bad_configs_are_named() {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let e = Mha::new(
        16,
        cfg(r#"{"num_heads": 4, "num_heads_kv": 3}"#),
        &store.builder(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_heads_kv (3)"), "{e}");
    let e = Mha::new(10, cfg(r#"{"num_heads": 4}"#), &store.builder())
        .unwrap_err()
        .to_string();
    assert!(e.contains("d_model (10)"), "{e}");
    let m = Mha::new(
        8,
        cfg(r#"{"num_heads": 2, "causal": true}"#),
        &store.builder(),
    )
    .unwrap();
    assert_mentions(&step_error(&m, &[2, 3, 8]), &["[2, 3, 8]"]);
}

#[test]
fn a_huge_max_seqlen_reserves_only_the_initial_cache() {
    let store = ParamStore::init(3, DType::F32, &Device::Cpu);
    let m = Mha::new(
        8,
        cfg(r#"{"num_heads": 2, "causal": true}"#),
        &store.builder(),
    )
    .unwrap();
    // 2^40 positions would be 64 TiB of cache if reserved up front.
    let st = m.init_state(1, 1 << 40, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        st.get("k").unwrap().dims(),
        &[1, 2, lrnnx_attn::INITIAL_CACHE_POSITIONS, 4]
    );
}

#[test]
fn long_sequences_attend_in_blocks_with_the_same_result() {
    // 4200 keys: one query block would hold 4200^2 > SCORE_BUDGET scores, so
    // the forward splits the queries (and, causal, the keys each block sees).
    let l = 4200;
    assert!(l * l > lrnnx_attn::SCORE_BUDGET && l < lrnnx_attn::SCORE_BUDGET);
    for json in [r#"{"num_heads": 1, "causal": true}"#, r#"{"num_heads": 1}"#] {
        let store = ParamStore::init(11, DType::F32, &Device::Cpu);
        let m = Mha::new(4, cfg(json), &store.builder()).unwrap();
        let x = randn(&[1, l, 4], 5);
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        let want = reference(&store, &cfg(json).resolve(4).unwrap(), &x);
        let err = max_err(&vec1(&y), &want);
        assert!(err < 1e-4, "{json}: {err}");
    }
}
