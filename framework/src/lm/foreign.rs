//! Mamba checkpoints written by other libraries, loaded without Python:
//! Hugging Face `transformers`' `MambaForCausalLM` and `mamba_ssm`'s
//! `MambaLMHeadModel`.
//!
//! [`detect`] tells such a `config.json` from ours; [`to_lm`] maps its config
//! onto an [`LmConfig`] (every layer `"Mamba"`, the mixer's kwargs under
//! `mixer_kwargs["Mamba"]`) and its tensors onto our state-dict names, after
//! which [`LRNNLMHeadModel::from_tensors`](super::LRNNLMHeadModel::from_tensors)
//! (or `build`) takes them as any checkpoint of ours. [`read_dir`] does both
//! for a model directory, and
//! [`LRNNLMHeadModel::from_pretrained`](super::LRNNLMHeadModel::from_pretrained)
//! calls it, so such a directory loads like one of ours; `lrnnx convert`
//! then writes it in our format.
//!
//! - Keys of their configs that only steer their code (`use_cache`,
//!   `initializer_range`, token ids, `use_mambapy`, ...) are ignored.
//! - What our model cannot represent is refused, naming the key and value:
//!   another `model_type`, a `hidden_act` other than silu, Mamba-2 layers,
//!   attention layers, quantized weights, `ssm_cfg` options our Mamba lacks.
//! - Neither library has our `dtA_proj` (used only in event mode, see the
//!   Mamba mixer): it is filled with a copy of `dt_proj`, so event mode
//!   with unit timesteps starts from the checkpoint's own step bias.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};

use crate::{io, Error, LmConfig, Result};

/// Which library wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKind {
    /// Hugging Face `transformers` (`config.json` with a `model_type`).
    HfMamba,
    /// `mamba_ssm`'s `MambaLMHeadModel` (its `MambaConfig` dataclass).
    MambaSsm,
}

impl ForeignKind {
    fn label(self) -> &'static str {
        match self {
            ForeignKind::HfMamba => "Hugging Face (transformers) config",
            ForeignKind::MambaSsm => "mamba_ssm config",
        }
    }
}

/// The kind of a foreign `config.json`, or `None` for ours.
///
/// Any config with a `model_type` is taken for Hugging Face's (ours never has
/// one; [`to_lm`] refuses types other than `mamba`); one with `d_model` and
/// `n_layer` but no `mixer_types` for `mamba_ssm`'s.
pub fn detect(config_json: &Value) -> Option<ForeignKind> {
    let obj = config_json.as_object()?;
    if obj.contains_key("model_type") {
        Some(ForeignKind::HfMamba)
    } else if !obj.contains_key("mixer_types")
        && obj.contains_key("d_model")
        && obj.contains_key("n_layer")
    {
        Some(ForeignKind::MambaSsm)
    } else {
        None
    }
}

/// Maps a foreign config and its tensors onto ours: `(config, tensors)`
/// ready for [`LRNNLMHeadModel::from_tensors`](super::LRNNLMHeadModel::from_tensors).
/// Errors name the offending key and value.
pub fn to_lm(
    kind: ForeignKind,
    config_json: &Value,
    mut tensors: HashMap<String, Tensor>,
) -> Result<(LmConfig, HashMap<String, Tensor>)> {
    let obj = config_json.as_object().ok_or_else(|| {
        Error::Config(format!(
            "{}: expected a JSON object, found {config_json}",
            kind.label()
        ))
    })?;
    let keys = Keys { obj, kind };
    let config = match kind {
        ForeignKind::HfMamba => hf_config(&keys)?,
        ForeignKind::MambaSsm => ssm_config(&keys)?,
    };
    if kind == ForeignKind::HfMamba {
        rename_hf_embedding(&mut tensors)?;
    }
    add_dta_proj(&mut tensors, config.n_layer);
    Ok((config, tensors))
}

/// Reads a foreign model directory: `Ok(None)` when its `config.json` is
/// ours, else the mapped config and tensors (weights from
/// `model.safetensors`, else `pytorch_model.bin`).
pub fn read_dir(
    dir: &Path,
    device: &Device,
) -> Result<Option<(LmConfig, HashMap<String, Tensor>)>> {
    let config_path = dir.join("config.json");
    let value = io::read_json(&config_path)?;
    let Some(kind) = detect(&value) else {
        return Ok(None);
    };
    let (_, tensors) = super::pretrained::read_weights(dir, device)?;
    to_lm(kind, &value, tensors)
        .map(Some)
        .map_err(|e| Error::file(&config_path, e))
}

/// Typed access to a config object, with the foreign library's defaults.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    kind: ForeignKind,
}

impl Keys<'_> {
    fn bad(&self, key: &str, expected: &str, v: &Value) -> Error {
        Error::Config(format!(
            "{}: `{key}` must be {expected}, found {v}",
            self.kind.label()
        ))
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.bad(key, "a non-negative integer", v)),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number", v)),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false", v)),
        }
    }

    fn str(&self, key: &str, default: &str) -> Result<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.bad(key, "a string", v)),
        }
    }

    fn refuse(&self, key: &str, why: &str) -> Error {
        let v = self.obj.get(key).cloned().unwrap_or(Value::Null);
        Error::Config(format!(
            "{}: `{key}` = {v} cannot be represented: {why}",
            self.kind.label()
        ))
    }
}

/// An lrnnx LM config of `n_layer` Mamba layers with `kwargs`; `layers_key`
/// names the layer count in the foreign config, for the error past
/// [`MAX_LAYERS`](super::config::MAX_LAYERS) (checked before the layer list is allocated).
fn mamba_lm(
    k: &Keys,
    d_model: usize,
    layers_key: &str,
    n_layer: usize,
    vocab: usize,
    kwargs: Map<String, Value>,
) -> Result<LmConfig> {
    if n_layer > super::config::MAX_LAYERS {
        return Err(k.refuse(
            layers_key,
            &format!("at most {} layers are accepted", super::config::MAX_LAYERS),
        ));
    }
    let d_state = kwargs.get("d_state").and_then(Value::as_u64).unwrap_or(16) as usize;
    let mut c = LmConfig::new(d_model, d_state, vocab, &vec!["Mamba"; n_layer]);
    c.mixer_kwargs.insert("Mamba".into(), Value::Object(kwargs));
    Ok(c)
}

/// `transformers`' `MambaConfig` (defaults as in transformers 5.24).
fn hf_config(k: &Keys) -> Result<LmConfig> {
    let model_type = k.str("model_type", "")?;
    if model_type != "mamba" {
        return Err(k.refuse(
            "model_type",
            "only Hugging Face `mamba` (MambaForCausalLM) checkpoints are read",
        ));
    }
    if k.obj.contains_key("quantization_config") {
        return Err(k.refuse("quantization_config", "quantized weights are not supported"));
    }
    let act = k.str("hidden_act", "silu")?;
    if act != "silu" && act != "swish" {
        return Err(k.refuse("hidden_act", "our Mamba's convolution activation is silu"));
    }
    let d_model = k.usize("hidden_size", 768)?;
    let expand = k.f64("expand", 2.0)?;
    if let Some(v) = k.obj.get("intermediate_size") {
        let d_inner = (expand * d_model as f64) as usize;
        if v.as_u64() != Some(d_inner as u64) {
            return Err(k.refuse(
                "intermediate_size",
                &format!("our Mamba's d_inner is int(expand * hidden_size) = {d_inner}"),
            ));
        }
    }
    let dt_rank = match k.obj.get("time_step_rank") {
        None | Some(Value::Null) => json!("auto"),
        Some(Value::String(s)) if s == "auto" => json!("auto"),
        Some(v) if v.as_u64().is_some_and(|r| r > 0) => v.clone(),
        Some(v) => return Err(k.bad("time_step_rank", "\"auto\" or a positive integer", v)),
    };
    let dt_init = k.str("time_step_init_scheme", "random")?;
    if dt_init != "random" && dt_init != "constant" {
        return Err(k.refuse(
            "time_step_init_scheme",
            "our Mamba initialises dt_proj \"random\" or \"constant\"",
        ));
    }
    let kwargs: Map<String, Value> = [
        ("d_state", json!(k.usize("state_size", 16)?)),
        ("d_conv", json!(k.usize("conv_kernel", 4)?)),
        ("expand", json!(expand)),
        ("dt_rank", dt_rank),
        ("dt_min", json!(k.f64("time_step_min", 0.001)?)),
        ("dt_max", json!(k.f64("time_step_max", 0.1)?)),
        ("dt_init", json!(dt_init)),
        ("dt_scale", json!(k.f64("time_step_scale", 1.0)?)),
        ("dt_init_floor", json!(k.f64("time_step_floor", 1e-4)?)),
        ("conv_bias", json!(k.bool("use_conv_bias", true)?)),
        ("bias", json!(k.bool("use_bias", false)?)),
    ]
    .into_iter()
    .map(|(key, v)| (key.to_string(), v))
    .collect();
    let mut c = mamba_lm(
        k,
        d_model,
        "num_hidden_layers",
        k.usize("num_hidden_layers", 32)?,
        k.usize("vocab_size", 50280)?,
        kwargs,
    )?;
    c.norm_epsilon = k.f64("layer_norm_epsilon", 1e-5)?;
    c.residual_in_fp32 = k.bool("residual_in_fp32", true)?;
    c.tie_embeddings = k.bool("tie_word_embeddings", true)?;
    // transformers does not pad the vocabulary.
    c.pad_vocab_size_multiple = 1;
    Ok(c)
}

/// The arguments of `mamba_ssm`'s `Mamba` (Mamba-1), which ours shares.
const SSM_CFG_KEYS: [&str; 15] = [
    "d_state",
    "d_conv",
    "expand",
    "dt_rank",
    "dt_min",
    "dt_max",
    "dt_init",
    "dt_scale",
    "dt_init_floor",
    "conv_bias",
    "bias",
    "use_fast_path",
    "layer_idx",
    "device",
    "dtype",
];

/// `mamba_ssm`'s `MambaConfig` dataclass (defaults as in mamba_ssm 2.3).
fn ssm_config(k: &Keys) -> Result<LmConfig> {
    let ssm = match k.obj.get("ssm_cfg") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(v) => return Err(k.bad("ssm_cfg", "a JSON object", v)),
    };
    let mut kwargs = Map::new();
    for (key, v) in ssm {
        if key == "layer" {
            if v != "Mamba1" {
                return Err(Error::Config(format!(
                    "{}: `ssm_cfg.layer` = {v} cannot be represented: only \"Mamba1\" layers are supported",
                    k.kind.label()
                )));
            }
        } else if SSM_CFG_KEYS.contains(&key.as_str()) {
            kwargs.insert(key, v);
        } else {
            return Err(Error::Config(format!(
                "{}: `ssm_cfg.{key}` = {v} cannot be represented: our Mamba has no such option \
                 (it takes {SSM_CFG_KEYS:?})",
                k.kind.label()
            )));
        }
    }
    kwargs.entry("d_state").or_insert(json!(16));
    match k.obj.get("attn_layer_idx") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(k.refuse(
                "attn_layer_idx",
                "attention layers of mamba_ssm's MHA are not mapped; only all-Mamba models load",
            ))
        }
    }
    let mut c = mamba_lm(
        k,
        k.usize("d_model", 2560)?,
        "n_layer",
        k.usize("n_layer", 64)?,
        k.usize("vocab_size", 50277)?,
        kwargs,
    )?;
    c.d_intermediate = k.usize("d_intermediate", 0)?;
    c.norm_epsilon = k.f64("norm_epsilon", 1e-5)?;
    c.rms_norm = k.bool("rms_norm", true)?;
    c.residual_in_fp32 = k.bool("residual_in_fp32", true)?;
    c.fused_add_norm = k.bool("fused_add_norm", true)?;
    c.pad_vocab_size_multiple = k.usize("pad_vocab_size_multiple", 8)?;
    c.tie_embeddings = k.bool("tie_embeddings", true)?;
    Ok(c)
}

/// `backbone.embeddings.weight` (transformers) -> `backbone.embedding.weight`
/// (ours, mamba_ssm's; transformers also loads that name).
fn rename_hf_embedding(tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    const HF: &str = "backbone.embeddings.weight";
    const OURS: &str = "backbone.embedding.weight";
    if let Some(t) = tensors.remove(HF) {
        if tensors.contains_key(OURS) {
            return Err(Error::Config(format!(
                "the checkpoint holds both `{HF}` and `{OURS}`; expected one embedding"
            )));
        }
        tensors.insert(OURS.into(), t);
    }
    Ok(())
}

/// Fills our `dtA_proj` (absent from both libraries) with a copy of `dt_proj`.
fn add_dta_proj(tensors: &mut HashMap<String, Tensor>, n_layer: usize) {
    for i in 0..n_layer {
        let p = format!("backbone.layers.{i}.mixer");
        for part in ["weight", "bias"] {
            let dta = format!("{p}.dtA_proj.{part}");
            if tensors.contains_key(&dta) {
                continue;
            }
            if let Some(t) = tensors.get(&format!("{p}.dt_proj.{part}")).cloned() {
                tensors.insert(dta, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind_and_not_ours() {
        let ours = json!({"d_model": 8, "d_state": 4, "n_layer": 1, "vocab_size": 10, "mixer_types": ["Mamba"]});
        assert_eq!(detect(&ours), None);
        assert_eq!(
            detect(&json!({"model_type": "mamba"})),
            Some(ForeignKind::HfMamba)
        );
        assert_eq!(
            detect(&json!({"d_model": 8, "n_layer": 2, "ssm_cfg": {}})),
            Some(ForeignKind::MambaSsm)
        );
        assert_eq!(detect(&json!([1, 2])), None);
    }
}
