//! minGRU against a slow, obviously right reference; step, prefill,
//! gradients, bad input, and the plugin entry called in-process.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::plugin::{Registrar, STATUS_OK};
use lrnnx_framework::{BuildArgs, ForwardOpts, Mixer, MixerSpec, ParamStore, StepOpts};
use lrnnx_mingru::{MinGru, MinGruConfig};
use lrnnx_testing::{assert_decoding_matches_forward, central_difference, max_err, randn, vec1};

fn config(expansion_factor: f64, proj_out: Option<bool>) -> MinGruConfig {
    MinGruConfig {
        expansion_factor,
        proj_out,
    }
}

fn build(
    h: usize,
    cfg: MinGruConfig,
    seed: u64,
    dtype: DType,
) -> (MinGru, std::sync::Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let m = MinGru::new(h, cfg, &store.builder()).unwrap();
    (m, store)
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// The recurrence of the paper, token by token, in f64.
fn reference(store: &ParamStore, x: &Tensor, d: usize) -> Vec<f64> {
    let p = store.tensors();
    let w = vec1(&p["to_hidden_and_gate.weight"]);
    let w_out = p.get("to_out.weight").map(vec1);
    let (b, l, h) = x.dims3().unwrap();
    let xs = vec1(x);
    let mut y = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut st = vec![0.0f64; d];
        for t in 0..l {
            let xt = &xs[(bi * l + t) * h..(bi * l + t + 1) * h];
            let dot = |row: usize| (0..h).map(|k| w[row * h + k] * xt[k]).sum::<f64>();
            for (j, s) in st.iter_mut().enumerate() {
                let (cand, gate) = (dot(j), dot(d + j));
                let z = sigmoid(gate);
                let g = if cand >= 0.0 {
                    cand + 0.5
                } else {
                    sigmoid(cand)
                };
                *s = (1.0 - z) * *s + z * g;
            }
            let out = &mut y[(bi * l + t) * h..(bi * l + t + 1) * h];
            match &w_out {
                Some(wo) => {
                    for (o, out_o) in out.iter_mut().enumerate() {
                        *out_o = (0..d).map(|j| wo[o * d + j] * st[j]).sum();
                    }
                }
                None => out.copy_from_slice(&st),
            }
        }
    }
    y
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    for (b, l, h, e, p) in [
        (1, 1, 1, 1.0, None),
        (3, 37, 5, 1.0, None),
        (2, 9, 4, 1.5, None),
        (1, 64, 7, 2.0, Some(true)),
        (2, 5, 6, 0.5, None),
    ] {
        let (m, store) = build(h, config(e, p), 7 + l as u64, DType::F32);
        let x = randn(&[b, l, h], 11 + b as u64, DType::F32);
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        assert_eq!(y.dims(), &[b, l, h]);
        let err = max_err(&vec1(&y), &reference(&store, &x, m.d_inner()));
        assert!(err < 1e-5, "B={b} L={l} H={h} e={e}: max error {err}");
    }
}

#[test]
fn step_and_prefill_equal_forward() {
    let (m, _) = build(6, config(1.5, None), 3, DType::F32);
    let x = randn(&[3, 13, 6], 5, DType::F32);
    assert_decoding_matches_forward(&m, &x, &[8], 1e-5, "minGRU");
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in f64.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, h) = (2, 6, 3);
    let (m, store) = build(h, config(1.5, None), 8, DType::F64);
    let x = Var::from_tensor(&randn(&[b, l, h], 3, DType::F64)).unwrap();
    let w = randn(&[b, l, h], 4, DType::F64);
    let loss = |m: &MinGru, x: &Tensor| -> Tensor {
        (m.forward(x, &ForwardOpts::default()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(&m, x.as_tensor()).backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    let mut params: Vec<(String, Var)> = store.vars().into_iter().collect();
    params.push(("x".into(), x.clone()));
    for (name, var) in params {
        let g = vec1(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}")),
        );
        let base = vec1(var.as_tensor());
        for idx in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
            let fd = central_difference(&var, idx, eps, || {
                loss(&m, x.as_tensor()).to_scalar::<f64>().unwrap()
            });
            let err = (fd - g[idx]).abs() / (1.0 + fd.abs());
            assert!(
                err < 1e-6,
                "{name}[{idx}]: autograd {} vs finite differences {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 3, "both weights and the input were checked");
}

fn args(kw: &str, store: &std::sync::Arc<ParamStore>) -> BuildArgs {
    BuildArgs {
        d_model: 4,
        d_state: 3,
        layer_idx: 2,
        kwargs: serde_json::from_str(kw).unwrap(),
        params: store.builder(),
    }
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (m, _) = build(4, config(1.0, None), 1, DType::F32);
    let e = m
        .forward(&randn(&[2, 8, 5], 1, DType::F32), &ForwardOpts::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(batch, seqlen, 4)") && e.contains("[2, 8, 5]"),
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

    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let build = lrnnx_mingru::spec().unwrap().build;
    let e = build(&args(r#"{"expansion_factr": 2}"#, &store))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 2") && e.contains("expansion_factr") && e.contains("expansion_factor"),
        "{e}"
    );
    let e = build(&args(r#"{"expansion_factor": -1}"#, &store))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 2 (minGRU)") && e.contains("-1"), "{e}");
    let e = build(&args(
        r#"{"expansion_factor": 2, "proj_out": false}"#,
        &store,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("proj_out") && e.contains("8"), "{e}");
}

#[test]
fn config_is_saved_with_defaults_filled_in() {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m =
        (lrnnx_mingru::spec().unwrap().build)(&args(r#"{"expansion_factor": 2}"#, &store)).unwrap();
    let json = lrnnx_framework::config_to_json(m.config()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "minGRU", "expansion_factor": 2.0, "proj_out": true})
    );
    let keys: Vec<String> = store.tensors().keys().cloned().collect();
    assert_eq!(keys, ["to_hidden_and_gate.weight", "to_out.weight"]);
}

/// A host-side registrar for calling the plugin entry in-process.
struct Collect {
    path: PathBuf,
    specs: Vec<MixerSpec>,
}

impl Registrar for Collect {
    fn add(&mut self, spec: MixerSpec) -> lrnnx_framework::Result<()> {
        self.specs.push(spec);
        Ok(())
    }
    fn plugin_path(&self) -> &Path {
        &self.path
    }
}

#[test]
fn the_exported_entry_registers_min_gru() {
    let fp = &lrnnx_mingru::lrnnx_plugin_fingerprint;
    assert_eq!(
        &fp[..fp.len() - 1],
        lrnnx_framework::plugin::ABI_FINGERPRINT.as_bytes()
    );
    let mut host = Collect {
        path: "/in/process".into(),
        specs: Vec::new(),
    };
    let status = lrnnx_mingru::lrnnx_plugin_v1(&mut host);
    assert_eq!(status.code, STATUS_OK);
    assert!(status.message.is_null());
    assert_eq!(host.specs.len(), 1);
    assert_eq!(host.specs[0].name, "minGRU");
    // The builder the host receives is the guarded one, and it still builds.
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m = (host.specs[0].build)(&args("{}", &store)).unwrap();
    let x = randn(&[1, 4, 4], 2, DType::F32);
    assert_eq!(
        m.forward(&x, &ForwardOpts::default()).unwrap().dims(),
        &[1, 4, 4]
    );
    assert_eq!(m.name(), "minGRU");
    assert!(m.as_ltv().is_some() && m.as_lti().is_none());
}
