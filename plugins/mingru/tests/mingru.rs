//! minGRU against a slow, obviously right reference; step, prefill,
//! gradients, bad input, and the plugin entry called in-process.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::plugin::{Registrar, STATUS_OK};
use lrnnx_framework::{BuildArgs, ForwardOpts, Mixer, MixerSpec, ParamStore};
use lrnnx_mingru::{MinGru, MinGruConfig};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_mentions, assert_wrong_width_is_named, max_err, randn,
    step_error, vec1, BuildSite, GradientCheck,
};

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
    let indices = |_: &str, len: usize| vec![0, len / 3, len / 2, len - 1];
    let check = GradientCheck {
        indices: &indices,
        ..GradientCheck::new(1e-6)
    };
    let (_, checked) = check.assert_mixer(&m, &store, &[b, l, h]);
    assert_eq!(checked, 4 * 3, "both weights and the input were checked");
}

fn args(kw: &str, store: &std::sync::Arc<ParamStore>) -> BuildArgs {
    BuildSite::new(4, 3, 2).args(store, kw)
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (m, _) = build(4, config(1.0, None), 1, DType::F32);
    assert_wrong_width_is_named(&m, 4);
    assert_mentions(&step_error(&m, &[2, 3]), &["(batch, 4)", "[2, 3]"]);

    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let build = lrnnx_mingru::spec().unwrap().build;
    let e = build(&args(r#"{"expansion_factr": 2}"#, &store))
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["layer 2", "expansion_factr", "expansion_factor"]);
    let e = build(&args(r#"{"expansion_factor": -1}"#, &store))
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["layer 2 (minGRU)", "-1"]);
    let e = build(&args(
        r#"{"expansion_factor": 2, "proj_out": false}"#,
        &store,
    ))
    .unwrap_err()
    .to_string();
    assert_mentions(&e, &["proj_out", "8"]);
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
