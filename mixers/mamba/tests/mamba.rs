//! Mamba against a slow, obviously right f64 reference; step, prefill,
//! gradients by finite differences, init, configs and bad input.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{
    BuildArgs, Discretization, ForwardOpts, Mixer, ParamStore, Registry, StepOpts,
};
use lrnnx_mamba::{DtRank, Mamba, MambaConfig};
use lrnnx_testing::{central_difference, max_err, randn, vec1};

const RULES: [Discretization; 4] = [
    Discretization::Mamba,
    Discretization::Zoh,
    Discretization::Bilinear,
    Discretization::Dirac,
];

#[derive(Clone)]
struct Shape {
    h: usize,
    n: usize,
    expand: f64,
    d_conv: usize,
    rank: Option<usize>,
    bias: bool,
    conv_bias: bool,
}

fn shape(h: usize, n: usize) -> Shape {
    Shape {
        h,
        n,
        expand: 2.0,
        d_conv: 4,
        rank: None,
        bias: false,
        conv_bias: true,
    }
}

fn config(s: &Shape, rule: Discretization) -> MambaConfig {
    let mut c = MambaConfig::new(s.n);
    c.expand = s.expand;
    c.d_conv = s.d_conv;
    c.bias = s.bias;
    c.conv_bias = s.conv_bias;
    c.discretization = rule;
    if let Some(r) = s.rank {
        c.dt_rank = DtRank::Fixed(r);
    }
    c
}

/// Builds a layer; `dt_shift` is added to `dt_proj.bias` (larger steps make
/// the discretizations differ a lot), and biases get random values.
fn build(
    s: &Shape,
    rule: Discretization,
    seed: u64,
    dtype: DType,
    dt_shift: f64,
) -> (Mamba, Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = Mamba::new(s.h, config(s, rule), &store.builder()).unwrap();
    for (name, var) in store.vars() {
        let t = var.as_tensor();
        if name == "dt_proj.bias" {
            var.set(&(t + dt_shift).unwrap()).unwrap();
        } else if name.ends_with("proj.bias") {
            // in/out/dtA biases: make them non-zero and distinct.
            let r = randn(t.dims(), seed ^ 77, dtype);
            var.set(&(r * 0.3).unwrap()).unwrap();
        }
    }
    (m, store)
}

/// Positive timesteps in [0.2, 2.2).
fn timesteps(b: usize, l: usize, seed: u64, dtype: DType) -> Tensor {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    store
        .builder()
        .get(
            (b, l),
            "its",
            lrnnx_framework::Init::Uniform { lo: 0.2, hi: 2.2 },
        )
        .unwrap()
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// lrnnx's Mamba forward (pure-PyTorch path), per position and channel, in f64.
fn reference(
    p: &BTreeMap<String, Tensor>,
    x: &Tensor,
    rule: Discretization,
    its: Option<&Tensor>,
) -> Vec<f64> {
    let g = |k: &str| vec1(&p[k]);
    let opt = |k: &str| p.get(k).map(vec1);
    let (b, l, h) = x.dims3().unwrap();
    let (di, n) = p["A_log"].dims2().unwrap();
    let r = p["dt_proj.weight"].dim(1).unwrap();
    let w = p["conv1d.weight"].dim(2).unwrap();
    let k = r + 2 * n;
    let (a_log, dsk, in_w, conv_w, xp) = (
        g("A_log"),
        g("D"),
        g("in_proj.weight"),
        g("conv1d.weight"),
        g("x_proj.weight"),
    );
    let (dt_w, dt_b, dta_b, out_w) = (
        g("dt_proj.weight"),
        g("dt_proj.bias"),
        g("dtA_proj.bias"),
        g("out_proj.weight"),
    );
    let (in_b, conv_b, out_b) = (
        opt("in_proj.bias"),
        opt("conv1d.bias"),
        opt("out_proj.bias"),
    );
    let xs = vec1(x);
    let ts = its.map(vec1);
    let mut out = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut xz = vec![vec![0.0; 2 * di]; l];
        for t in 0..l {
            for j in 0..2 * di {
                let mut acc = in_b.as_ref().map_or(0.0, |v| v[j]);
                for i in 0..h {
                    acc += in_w[j * h + i] * xs[(bi * l + t) * h + i];
                }
                xz[t][j] = acc;
            }
        }
        let mut state = vec![vec![0.0; n]; di];
        for t in 0..l {
            let mut u = vec![0.0; di];
            for d in 0..di {
                let mut acc = conv_b.as_ref().map_or(0.0, |v| v[d]);
                for kk in 0..w {
                    if t + kk + 1 >= w {
                        acc += conv_w[d * w + kk] * xz[t + kk + 1 - w][d];
                    }
                }
                u[d] = silu(acc);
            }
            let mut xd = vec![0.0; k];
            for (j, v) in xd.iter_mut().enumerate() {
                for d in 0..di {
                    *v += xp[j * di + d] * u[d];
                }
            }
            for o in 0..h {
                out[(bi * l + t) * h + o] = out_b.as_ref().map_or(0.0, |v| v[o]);
            }
            for d in 0..di {
                let mut s = dt_b[d];
                for q in 0..r {
                    s += dt_w[d * r + q] * xd[q];
                }
                let delta = softplus(s);
                let dta = match &ts {
                    Some(ts) => ts[bi * l + t] * softplus(dta_b[d]),
                    None => delta,
                };
                let mut y = 0.0;
                for e in 0..n {
                    let a = -a_log[d * n + e].exp();
                    let (abar, gain) = match rule {
                        Discretization::Mamba => ((dta * a).exp(), delta),
                        Discretization::Zoh => ((dta * a).exp(), (delta * a).exp_m1() / a),
                        Discretization::Bilinear => (
                            (1.0 + 0.5 * dta * a) / (1.0 - 0.5 * dta * a),
                            delta / (1.0 - 0.5 * delta * a),
                        ),
                        _ => ((dta * a).exp(), 1.0),
                    };
                    state[d][e] = abar * state[d][e] + gain * xd[r + e] * u[d];
                    y += state[d][e] * xd[r + n + e];
                }
                let y = (y + dsk[d] * u[d]) * silu(xz[t][di + d]);
                for o in 0..h {
                    out[(bi * l + t) * h + o] += out_w[o * di + d] * y;
                }
            }
        }
    }
    out
}

fn fwd(m: &Mamba, x: &Tensor, its: Option<&Tensor>) -> Tensor {
    let opts = ForwardOpts {
        integration_timesteps: its.cloned(),
        lengths: None,
    };
    m.forward(x, &opts).unwrap()
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    let shapes = [
        (1, 1, shape(4, 3)),
        (
            3,
            37,
            Shape {
                expand: 2.5,
                ..shape(4, 5)
            },
        ), // D = 10: a partial lane group
        (
            2,
            70,
            Shape {
                bias: true,
                conv_bias: false,
                rank: Some(3),
                ..shape(8, 16)
            },
        ), // 3 chunks
        (
            1,
            9,
            Shape {
                d_conv: 1,
                expand: 1.0,
                ..shape(17, 1)
            },
        ),
        (
            2,
            33,
            Shape {
                d_conv: 6,
                ..shape(16, 9)
            },
        ), // d_conv > some lengths, 2 groups
    ];
    for (b, l, s) in shapes {
        for rule in RULES {
            for event in [false, true] {
                for (dtype, shift, tol) in [(DType::F64, 3.0, 1e-11), (DType::F32, 0.0, 2e-5)] {
                    let (m, store) = build(&s, rule, 11, dtype, shift);
                    let x = randn(&[b, l, s.h], 5, dtype);
                    let its = event.then(|| timesteps(b, l, 6, dtype));
                    let y = fwd(&m, &x, its.as_ref());
                    assert_eq!(y.dims(), &[b, l, s.h]);
                    let want = reference(&store.tensors(), &x, rule, its.as_ref());
                    let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
                    let err = max_err(&vec1(&y), &want) / scale;
                    assert!(
                        err < tol,
                        "({b},{l},h={},n={}) {rule:?} event={event} {dtype:?}: {err:e}",
                        s.h,
                        s.n
                    );
                }
            }
        }
    }
}

#[test]
fn rules_and_event_mode_really_differ() {
    // Guards against a rule silently falling back to another one.
    let s = shape(8, 6);
    let x = randn(&[2, 12, 8], 1, DType::F64);
    let its = timesteps(2, 12, 2, DType::F64);
    let mut outs = Vec::new();
    for rule in RULES {
        for ev in [None, Some(&its)] {
            let (m, _) = build(&s, rule, 3, DType::F64, 3.0);
            outs.push(vec1(&fwd(&m, &x, ev)));
        }
    }
    for i in 0..outs.len() {
        for j in 0..i {
            assert!(
                max_err(&outs[i], &outs[j]) > 1e-4,
                "variants {i} and {j} agree"
            );
        }
    }
}

fn step_all(
    m: &Mamba,
    x: &Tensor,
    its: Option<&Tensor>,
    from: usize,
    st: &mut lrnnx_framework::MixerState,
) -> Vec<Tensor> {
    let (b, l, h) = x.dims3().unwrap();
    let mut ys = Vec::new();
    for t in from..l {
        let xt = x.narrow(1, t, 1).unwrap();
        // Alternate the accepted shapes: (B, H) / (B, 1, H) inputs, (B,) / (B, 1) timesteps.
        let xt = if t % 2 == 0 {
            xt.squeeze(1).unwrap()
        } else {
            xt
        };
        let so = StepOpts {
            integration_timesteps: its.map(|ts| {
                let c = ts.narrow(1, t, 1).unwrap();
                if t % 3 == 0 {
                    c.squeeze(1).unwrap()
                } else {
                    c
                }
            }),
        };
        let yt = m.step(&xt, st, &so).unwrap();
        assert_eq!(yt.rank(), xt.rank());
        ys.push(yt.reshape((b, 1, h)).unwrap());
    }
    ys
}

#[test]
fn step_and_prefill_equal_forward() {
    let (b, l) = (3, 45);
    let s = Shape {
        expand: 1.5,
        ..shape(12, 7)
    }; // D = 18
    for rule in RULES {
        for event in [false, true] {
            for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-6)] {
                let (m, _) = build(&s, rule, 2, dtype, 2.0);
                let x = randn(&[b, l, s.h], 9, dtype);
                let its = event.then(|| timesteps(b, l, 4, dtype));
                let y = vec1(&fwd(&m, &x, its.as_ref()));
                let scale = y.iter().fold(1.0f64, |a, v| a.max(v.abs()));
                let mut st = m.init_state(b, l, dtype, &Device::Cpu).unwrap();
                let ys = step_all(&m, &x, its.as_ref(), 0, &mut st);
                assert_eq!(st.seqlen_offset, l);
                let err = max_err(&vec1(&Tensor::cat(&ys, 1).unwrap()), &y) / scale;
                assert!(
                    err < tol,
                    "{rule:?} event={event} {dtype:?}: step vs forward {err:e}"
                );
                // Prefill (parallel) a prefix, then step; prefixes shorter and longer than d_conv.
                for split in [0, 2, 33] {
                    let mut st = m.init_state(b, l, dtype, &Device::Cpu).unwrap();
                    let opts = ForwardOpts {
                        integration_timesteps: its.as_ref().map(|t| t.narrow(1, 0, split).unwrap()),
                        lengths: None,
                    };
                    let mut parts = vec![m
                        .prefill(&x.narrow(1, 0, split).unwrap(), &mut st, &opts)
                        .unwrap()];
                    assert_eq!(st.seqlen_offset, split);
                    // A second prefill from a non-fresh state continues step by step.
                    let mid = (split + 5).min(l);
                    let opts = ForwardOpts {
                        integration_timesteps: its
                            .as_ref()
                            .map(|t| t.narrow(1, split, mid - split).unwrap()),
                        lengths: None,
                    };
                    parts.push(
                        m.prefill(&x.narrow(1, split, mid - split).unwrap(), &mut st, &opts)
                            .unwrap(),
                    );
                    parts.extend(step_all(&m, &x, its.as_ref(), mid, &mut st));
                    let err = max_err(&vec1(&Tensor::cat(&parts, 1).unwrap()), &y) / scale;
                    assert!(
                        err < tol,
                        "{rule:?} event={event} {dtype:?} split {split}: prefill+step {err:e}"
                    );
                    assert_eq!(st.seqlen_offset, l);
                    // The prefilled states match the stepped ones.
                    let mut st1 = m.init_state(b, l, dtype, &Device::Cpu).unwrap();
                    step_all(
                        &m,
                        &x.narrow(1, 0, split).unwrap(),
                        its.as_ref(),
                        0,
                        &mut st1,
                    );
                    let mut st2 = m.init_state(b, l, dtype, &Device::Cpu).unwrap();
                    let opts = ForwardOpts {
                        integration_timesteps: its.as_ref().map(|t| t.narrow(1, 0, split).unwrap()),
                        lengths: None,
                    };
                    m.prefill(&x.narrow(1, 0, split).unwrap(), &mut st2, &opts)
                        .unwrap();
                    let (c1, c2) = (
                        vec1(st1.get("conv_state").unwrap()),
                        vec1(st2.get("conv_state").unwrap()),
                    );
                    // (in_proj sums in another order in a step than in the forward's matmul.)
                    assert!(max_err(&c1, &c2) < tol * 10.0, "conv_state after {split}");
                    let (h1, h2) = (m.ssm_state(&st1).unwrap(), m.ssm_state(&st2).unwrap());
                    assert_eq!(h1.dims(), &[b, m.d_inner(), s.n]);
                    let hs = vec1(&h1).iter().fold(1.0f64, |a, v| a.max(v.abs()));
                    assert!(
                        max_err(&vec1(&h1), &vec1(&h2)) / hs < tol,
                        "lrnn_state after {split}"
                    );
                }
            }
        }
    }
}

#[test]
fn empty_sequences_and_batches() {
    let (m, _) = build(&shape(4, 3), Discretization::Zoh, 1, DType::F32, 0.0);
    for (b, l) in [(2, 0), (0, 5)] {
        let y = fwd(&m, &randn(&[b, l, 4], 2, DType::F32), None);
        assert_eq!(y.dims(), &[b, l, 4]);
    }
}

#[test]
fn lengths_change_nothing_as_in_lrnnx() {
    let (m, _) = build(&shape(4, 3), Discretization::Mamba, 1, DType::F32, 0.0);
    let x = randn(&[2, 8, 4], 2, DType::F32);
    let a = fwd(&m, &x, None);
    let opts = ForwardOpts {
        lengths: Some(Tensor::new(&[8i64, 5], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let b = m.forward(&x, &opts).unwrap();
    assert_eq!(vec1(&a), vec1(&b));
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in
/// f64, for every parameter (a few indices each) and the input.
fn check_gradients(
    s: &Shape,
    rule: Discretization,
    event: bool,
    b: usize,
    l: usize,
    indices: usize,
) {
    let (m, store) = build(s, rule, 8, DType::F64, 2.5);
    let x = Var::from_tensor(&randn(&[b, l, s.h], 3, DType::F64)).unwrap();
    let w = randn(&[b, l, s.h], 4, DType::F64);
    let its = event.then(|| timesteps(b, l, 5, DType::F64));
    let loss =
        |x: &Tensor| -> Tensor { (fwd(&m, x, its.as_ref()) * &w).unwrap().sum_all().unwrap() };
    let grads = loss(x.as_tensor()).backward().unwrap();
    let eps = 1e-6;
    let mut params: Vec<(String, Var)> = store.vars().into_iter().collect();
    params.push(("x".into(), x.clone()));
    let mut checked = 0;
    for (name, var) in params {
        let base = vec1(var.as_tensor());
        // dtA_proj.weight is unused (as in lrnnx): no gradient, and none by differences.
        let g = match grads.get(var.as_tensor()) {
            Some(g) => vec1(g),
            None => {
                assert_eq!(name, "dtA_proj.weight", "no gradient for {name}");
                vec![0.0; base.len()]
            }
        };
        let n = base.len();
        let picks: Vec<usize> = (0..indices)
            .map(|i| (i * 7919 + i * i * 31) % n)
            .chain([n - 1])
            .collect();
        for idx in picks {
            let fd = central_difference(&var, idx, eps, || {
                loss(x.as_tensor()).to_scalar::<f64>().unwrap()
            });
            let err = (fd - g[idx]).abs() / (1.0 + fd.abs());
            assert!(
                err < 1e-6,
                "{rule:?} event={event} {name}[{idx}]: autograd {} vs finite differences {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 12 * 2,
        "every parameter and the input were checked"
    );
}

#[test]
fn gradients_match_finite_differences() {
    // L = 40 spans two chunks of saved states; D = 10 leaves a partial lane group.
    let s = Shape {
        expand: 2.5,
        bias: true,
        ..shape(4, 3)
    };
    for rule in RULES {
        for event in [false, true] {
            check_gradients(&s, rule, event, 2, 40, 3);
        }
    }
}

#[test]
fn gradients_match_finite_differences_on_the_parallel_path() {
    // Big enough to run on the thread pool with several channel blocks per batch row.
    // B * L * D * N >= 2^18 (the parallel threshold); D = 192: 12 lane groups.
    let s = Shape {
        expand: 8.0,
        rank: Some(2),
        ..shape(24, 8)
    };
    check_gradients(&s, Discretization::Zoh, true, 1, 180, 2);
    check_gradients(&s, Discretization::Mamba, false, 2, 90, 2);
    // Long rows per task: the conv backward works in several sub-chunks.
    check_gradients(&shape(4, 3), Discretization::Bilinear, false, 8, 150, 2);
}

#[test]
fn init_follows_lrnnx() {
    let s = Shape {
        rank: None,
        ..shape(40, 5)
    };
    let (_, store) = build(&s, Discretization::Mamba, 0, DType::F32, 0.0);
    // build() randomises the proj biases: look at a fresh store instead.
    let store2 = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m = Mamba::new(40, config(&s, Discretization::Mamba), &store2.builder()).unwrap();
    let p = store2.tensors();
    let keys: Vec<&String> = p.keys().collect();
    assert_eq!(
        keys,
        [
            "A_log",
            "D",
            "conv1d.bias",
            "conv1d.weight",
            "dtA_proj.bias",
            "dtA_proj.weight",
            "dt_proj.bias",
            "dt_proj.weight",
            "in_proj.weight",
            "out_proj.weight",
            "x_proj.weight"
        ]
    );
    assert_eq!(store.tensors().len(), 11);
    let (di, r, n) = (80, 3, 5); // ceil(40 / 16) = 3
    assert_eq!((m.d_inner(), m.dt_rank(), m.d_state()), (di, r, n));
    assert_eq!(p["x_proj.weight"].dims(), &[r + 2 * n, di]);
    assert_eq!(p["conv1d.weight"].dims(), &[di, 1, 4]);
    let a = vec1(&p["A_log"]);
    for d in 0..di {
        for k in 0..n {
            assert!((a[d * n + k] - ((k + 1) as f64).ln()).abs() < 1e-6);
        }
    }
    assert!(vec1(&p["D"]).iter().all(|&v| v == 1.0));
    let dt: Vec<f64> = vec1(&p["dt_proj.bias"]).into_iter().map(softplus).collect();
    assert!(
        dt.iter().all(|&v| (0.001 - 1e-6..=0.1 + 1e-6).contains(&v)),
        "{dt:?}"
    );
    let spread =
        dt.iter().fold(0.0f64, |a, &v| a.max(v)) / dt.iter().fold(1.0f64, |a, &v| a.min(v));
    assert!(spread > 10.0, "log-uniform steps spread over decades");
    let bound = |k: &str| vec1(&p[k]).iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let within = |k: &str, b: f64| {
        let m = bound(k);
        assert!(m <= b && m > 0.7 * b, "{k}: max {m} vs bound {b}");
    };
    within("dt_proj.weight", 1.0 / (r as f64).sqrt());
    within("in_proj.weight", 1.0 / 40f64.sqrt());
    within("x_proj.weight", 1.0 / (di as f64).sqrt());
    within("out_proj.weight", 1.0 / (di as f64).sqrt());
    within("conv1d.weight", 0.5);
    within("conv1d.bias", 0.5);
    within("dtA_proj.weight", 1.0 / (r as f64).sqrt());
    // dt_init = "constant"; dt_floor above dt_max clamps every step.
    let mut c = config(&s, Discretization::Mamba);
    c.dt_init = "constant".into();
    c.dt_scale = 2.0;
    c.dt_init_floor = 0.5;
    let store3 = ParamStore::init(0, DType::F32, &Device::Cpu);
    Mamba::new(40, c, &store3.builder()).unwrap();
    let p = store3.tensors();
    assert!(vec1(&p["dt_proj.weight"])
        .iter()
        .all(|&v| (v - 2.0 / 3f64.sqrt()).abs() < 1e-6));
    assert!(vec1(&p["dt_proj.bias"])
        .iter()
        .all(|&v| (softplus(v) - 0.5).abs() < 1e-6));
}

fn args(kw: &str, store: &Arc<ParamStore>) -> BuildArgs {
    BuildArgs {
        d_model: 16,
        d_state: 8,
        layer_idx: 2,
        kwargs: serde_json::from_str(kw).unwrap(),
        params: store.builder(),
    }
}

#[test]
fn registry_names_configs_and_bad_input() {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    for name in ["Mamba", "mamba", "S6"] {
        let m = Registry::build(name, &args(r#"{"discretization": "zoh"}"#, &store)).unwrap();
        assert_eq!(m.name(), "Mamba");
        assert_eq!(m.as_ltv().unwrap().discretization(), Discretization::Zoh);
        assert!(m.as_ltv().unwrap().supports_events());
    }
    // Every lrnnx kwarg is accepted, and the full config round-trips.
    let kw = r#"{"d_state": 4, "d_conv": 3, "expand": 1.5, "dt_rank": 5, "dt_min": 0.01, "dt_max": 0.2,
        "dt_init": "constant", "dt_scale": 0.5, "dt_init_floor": 0.001, "conv_bias": false, "bias": true,
        "use_fast_path": false, "layer_idx": 3, "device": null, "dtype": null, "discretization": "bilinear"}"#;
    let s2 = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m = Registry::build("Mamba", &args(kw, &s2)).unwrap();
    let json = lrnnx_framework::config_to_json(m.config()).unwrap();
    assert_eq!(json["type"], "Mamba");
    assert_eq!(json["dt_rank"], 5);
    let s3 = ParamStore::init(0, DType::F32, &Device::Cpu);
    let again = Registry::build("Mamba", &args(&json.to_string(), &s3)).unwrap();
    assert_eq!(
        lrnnx_framework::config_to_json(again.config()).unwrap(),
        json
    );
    assert!(s2.tensors().contains_key("in_proj.bias") && !s2.tensors().contains_key("conv1d.bias"));
    assert_eq!(s2.tensors()["x_proj.weight"].dims(), &[5 + 8, 24]);
    // d_state defaults to the model's.
    let s4 = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m = Registry::build("Mamba", &args("{}", &s4)).unwrap();
    assert_eq!(
        lrnnx_framework::config_to_json(m.config()).unwrap()["d_state"],
        8
    );
    assert_eq!(
        lrnnx_framework::config_to_json(m.config()).unwrap()["dt_rank"],
        "auto"
    );

    let err = |kw: &str| {
        let s = ParamStore::init(0, DType::F32, &Device::Cpu);
        Registry::build("Mamba", &args(kw, &s))
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"d_sate": 4}"#);
    assert!(
        e.contains("layer 2") && e.contains("d_sate") && e.contains("d_state"),
        "{e}"
    );
    let e = err(r#"{"discretization": "async"}"#);
    assert!(
        e.contains("layer 2")
            && e.contains("Mamba")
            && e.contains("bilinear")
            && e.contains("async"),
        "{e}"
    );
    let e = err(r#"{"discretization": "euler"}"#);
    assert!(e.contains("euler"), "{e}");
    let e = err(r#"{"dt_init": "xavier"}"#);
    assert!(e.contains("dt_init") && e.contains("xavier"), "{e}");
    let e = err(r#"{"dt_rank": "big"}"#);
    assert!(e.contains("dt_rank") && e.contains("big"), "{e}");
    let e = err(r#"{"dt_min": 0.5, "dt_max": 0.1}"#);
    assert!(e.contains("dt_min") && e.contains("0.5"), "{e}");
    let e = err(r#"{"d_state": 0}"#);
    assert!(e.contains("d_state"), "{e}");

    // Bad shapes.
    let (m, _) = build(&shape(4, 3), Discretization::Mamba, 1, DType::F32, 0.0);
    let e = m
        .forward(&randn(&[2, 8, 5], 1, DType::F32), &ForwardOpts::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(batch, seqlen, 4)") && e.contains("[2, 8, 5]"),
        "{e}"
    );
    let x = randn(&[2, 8, 4], 1, DType::F32);
    let bad = ForwardOpts {
        integration_timesteps: Some(timesteps(2, 7, 1, DType::F32)),
        lengths: None,
    };
    let e = m.forward(&x, &bad).unwrap_err().to_string();
    assert!(
        e.contains("integration_timesteps") && e.contains("(2, 8)") && e.contains("[2, 7]"),
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
    assert!(e.contains("(batch, 4)") && e.contains("[2, 3]"), "{e}");
    let so = StepOpts {
        integration_timesteps: Some(timesteps(2, 3, 1, DType::F32)),
    };
    let e = m
        .step(&randn(&[2, 4], 1, DType::F32), &mut st, &so)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(2,) or (2, 1)") && e.contains("[2, 3]"), "{e}");
    // A state of another batch size.
    let mut st = m.init_state(3, 8, DType::F32, &Device::Cpu).unwrap();
    let e = m
        .step(
            &randn(&[2, 4], 1, DType::F32),
            &mut st,
            &StepOpts::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv_state"), "{e}");
}

/// Files made by the spec's f64 numpy reference with `dt_proj.bias + 6`
/// (steps 0.3 to 4), where the rules differ by 1e-3 to 1e-2.
#[test]
fn stress_cases_match_the_f64_reference() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for rule in ["mamba", "zoh", "bilinear", "dirac"] {
        for event in [false, true] {
            let name = format!("stress_mamba_{rule}{}", if event { "_event" } else { "" });
            let f = lrnnx_framework::io::read_safetensors_file(
                &dir.join(format!("{name}.safetensors")),
                &Device::Cpu,
            )
            .unwrap();
            let params = f
                .tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix("param.").map(|k| (k.to_string(), t.clone())))
                .collect();
            let kwargs: serde_json::Value = serde_json::from_str(&f.metadata["kwargs"]).unwrap();
            let mut kwargs = kwargs.as_object().unwrap().clone();
            let d_model = kwargs.remove("d_model").unwrap().as_u64().unwrap() as usize;
            let store = ParamStore::load(params, DType::F32, &Device::Cpu);
            let a = BuildArgs {
                d_model,
                d_state: 8,
                layer_idx: 0,
                kwargs,
                params: store.builder(),
            };
            let m = Registry::build("Mamba", &a).unwrap();
            assert!(store.unused_keys().is_empty());
            let x = &f.tensors["input.x"];
            let its = f.tensors.get("input.integration_timesteps");
            let opts = ForwardOpts {
                integration_timesteps: its.cloned(),
                lengths: None,
            };
            let y = vec1(&m.forward(x, &opts).unwrap());
            let want = vec1(&f.tensors["output.y"]);
            let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            let err = max_err(&y, &want) / scale;
            assert!(err < 2e-6, "{name}: forward {err:e}");
            let (b, l, _) = x.dims3().unwrap();
            let mut st = m.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
            let mut ys = Vec::new();
            for t in 0..l {
                let so = StepOpts {
                    integration_timesteps: its.map(|ts| ts.narrow(1, t, 1).unwrap()),
                };
                ys.push(m.step(&x.narrow(1, t, 1).unwrap(), &mut st, &so).unwrap());
            }
            let sy = vec1(&Tensor::cat(&ys, 1).unwrap());
            let err = max_err(&sy, &want) / scale;
            assert!(err < 2e-6, "{name}: step vs reference forward {err:e}");
            if rule != "bilinear" {
                // lrnnx's own step agrees with its forward except for bilinear.
                let err = max_err(&sy, &vec1(&f.tensors["output.step_y"])) / scale;
                assert!(err < 2e-6, "{name}: step vs lrnnx step {err:e}");
            }
        }
    }
}
