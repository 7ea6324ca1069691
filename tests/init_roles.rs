//! `LRNNLMHeadModel::init` re-initialises parameters by the role their layer
//! marked (lrnnx's `_init_weights`), never by their name.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use lrnnx::{
    Family, ForwardOpts, Init, LRNNLMHeadModel, LmConfig, Mixer, MixerConfig, MixerState,
    ParamBuilder, ParamStore, Result, StepOpts,
};
use serde::{Deserialize, Serialize};

/// A mixer whose parameters carry lrnnx's names but no role.
#[derive(Debug)]
struct Unmarked {
    w: Tensor,
    b: Tensor,
    cfg: UnmarkedConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct UnmarkedConfig {}

impl Unmarked {
    fn new(d: usize, cfg: UnmarkedConfig, pb: &ParamBuilder) -> Result<Self> {
        let p = pb.pp("out_proj");
        Ok(Self {
            w: p.get((d, d), "weight", Init::Uniform { lo: 0.5, hi: 1.0 })?,
            b: p.get(d, "bias", Init::Const(0.25))?,
            cfg,
        })
    }
}

impl Mixer for Unmarked {
    fn name(&self) -> &str {
        UNMARKED
    }
    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }
    fn family(&self) -> Family {
        Family::Other
    }
    fn forward(&self, x: &Tensor, _: &ForwardOpts) -> Result<Tensor> {
        Ok(x.broadcast_matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
    }
    fn init_state(&self, _: usize, _: usize, _: DType, _: &Device) -> Result<MixerState> {
        Ok(MixerState::new())
    }
    fn step(&self, x: &Tensor, _: &mut MixerState, _: &StepOpts) -> Result<Tensor> {
        Ok(x.broadcast_matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
    }
}

lrnnx::mixers! {
    UNMARKED = "UnmarkedTestMixer" {
        aliases: [],
        family: Other,
        summary: "test: lrnnx parameter names without roles",
        config: UnmarkedConfig,
        new: Unmarked::new,
    }
}

/// Keys whose value `init` changed from what the layers drew, and how.
fn reinitialised(mixers: &[&str], kwargs: &str) -> BTreeMap<String, &'static str> {
    lrnnx::init();
    let _ = link();
    let mut cfg = LmConfig::new(16, 4, 64, mixers);
    cfg.d_intermediate = 32;
    cfg.mixer_kwargs = serde_json::from_str(kwargs).unwrap();
    let init = LRNNLMHeadModel::init(cfg.clone(), 0, &Device::Cpu).unwrap();
    let drawn = ParamStore::init(0, DType::F32, &Device::Cpu);
    let drawn = LRNNLMHeadModel::build(cfg, drawn).unwrap();
    let (a, b) = (init.store().tensors(), drawn.store().tensors());
    let mut out = BTreeMap::new();
    for (k, v) in a.iter().filter(|(_, v)| v.dtype() == DType::F32) {
        let max = |t: &Tensor| -> f32 {
            let t = t.abs().unwrap().flatten_all().unwrap();
            t.max(0).unwrap().to_scalar().unwrap()
        };
        if max(&(v - &b[k]).unwrap()) > 0.0 {
            out.insert(k.clone(), if max(v) == 0.0 { "zeroed" } else { "redrawn" });
        }
    }
    out
}

#[test]
fn biases_zeroed_and_residual_outputs_rescaled_by_role() {
    let got = reinitialised(
        &["S4", "Mamba", "RGLRU", "mLSTM", "attn", "LRU"],
        r#"{"attn": {"num_heads": 2, "causal": true, "d_conv": 3}, "Mamba": {"bias": true},
            "RGLRU": {"bias": true}, "S4": {"gate": 2},
            "mLSTM": {"bias": true, "num_heads": 2, "round_proj_up_to_multiple_of": 8}}"#,
    );
    let mut want = BTreeMap::new();
    for (layer, keys) in [
        (
            0,
            &[
                "input_gate.0.bias",
                "output_gate.bias",
                "output_linear.0.bias",
            ][..],
        ),
        (1, &["dtA_proj.bias", "in_proj.bias", "out_proj.bias"][..]),
        (
            2,
            &[
                "gate_proj.bias",
                "in_proj.bias",
                "input_gate_proj.bias",
                "out_proj.bias",
                "recurrent_gate_proj.bias",
            ][..],
        ),
        (3, &["mlstm_cell.fgate.bias", "mlstm_cell.igate.bias"][..]),
        (4, &["in_proj.bias", "out_proj.bias"][..]),
    ] {
        for k in keys {
            want.insert(format!("backbone.layers.{layer}.mixer.{k}"), "zeroed");
        }
    }
    for layer in [1, 2, 4] {
        want.insert(
            format!("backbone.layers.{layer}.mixer.out_proj.weight"),
            "redrawn",
        );
    }
    for layer in 0..6 {
        want.insert(format!("backbone.layers.{layer}.mlp.fc2.weight"), "redrawn");
    }
    assert_eq!(got, want);
}

#[test]
fn a_parameter_named_like_lrnnx_but_unmarked_keeps_its_init() {
    let got = reinitialised(&["UnmarkedTestMixer", "LRU"], "{}");
    assert!(
        got.keys().all(|k| !k.contains("layers.0.mixer")),
        "an unmarked plugin parameter was re-initialised: {got:?}"
    );
    assert!(
        got.contains_key("backbone.layers.0.mlp.fc2.weight"),
        "{got:?}"
    );
}
