//! `save_pretrained` / `from_pretrained`: `config.json` + `model.safetensors`
//! in the Hugging Face layout, with lrnnx's state-dict names; also reads the
//! `pytorch_model.bin` that Python lrnnx writes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::precision::stored_float_dtype;
use super::{LRNNLMHeadModel, LmConfig, LoadOptions, MixerKwargs, Precision};
use crate::{io, Error, Result};

/// File names inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// Our weights file.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Python lrnnx's weights file.
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

impl LRNNLMHeadModel {
    /// Writes `config.json` (every per-layer default filled in) and
    /// `model.safetensors` to `dir`, each atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        io::write_safetensors_with_complex(
            &dir.join(SAFETENSORS_FILE),
            &self.state_dict(),
            &self.complex_keys(),
            Some(meta),
        )?;
        let config = serde_json::to_value(self.config())
            .map_err(|e| Error::Config(format!("cannot serialize model config: {e}")))?;
        io::write_json(&dir.join(CONFIG_FILE), &config)
    }

    /// Loads a directory written by [`LRNNLMHeadModel::save_pretrained`] or by
    /// Python lrnnx (`config.json` + `model.safetensors` or `pytorch_model.bin`;
    /// safetensors preferred). `mixer_kwargs` overrides kwargs per mixer type,
    /// as lrnnx's `from_pretrained(mixer_kwargs=...)`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        mixer_kwargs: Option<&MixerKwargs>,
        device: &Device,
    ) -> Result<Self> {
        let opts = LoadOptions {
            mixer_kwargs: mixer_kwargs.cloned(),
            precision: None,
        };
        Self::from_pretrained_with(dir, &opts, device)
    }

    /// [`LRNNLMHeadModel::from_pretrained`] with [`LoadOptions`]: kwargs
    /// overrides and the precision (by default the checkpoint's own float
    /// dtype, so f16/bf16 weights load as such).
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let mixer_kwargs = opts.mixer_kwargs.as_ref();
        let dir = dir.as_ref();
        let config_path = dir.join(CONFIG_FILE);
        let value = io::read_json(&config_path)?;
        // A Hugging Face or mamba_ssm Mamba directory maps onto ours first.
        let (mut config, foreign_weights) = match super::foreign::detect(&value) {
            Some(kind) => {
                let (path, tensors) = read_weights(dir, device)?;
                let (config, tensors) = super::foreign::to_lm(kind, &value, tensors)
                    .map_err(|e| Error::file(&config_path, e))?;
                (config, Some((path, tensors)))
            }
            None => (
                serde_json::from_value(value).map_err(|e| {
                    Error::file(&config_path, format!("malformed model config: {e}"))
                })?,
                None,
            ),
        };
        if let Some(kw) = mixer_kwargs {
            apply_overrides(&mut config, kw)?;
        }
        config
            .validate()
            .map_err(|e| Error::file(&config_path, e))?;
        let (weights_path, tensors) = match foreign_weights {
            Some(w) => w,
            None => read_weights(dir, device)?,
        };
        check_finite(&tensors).map_err(|e| Error::file(&weights_path, e))?;
        let precision = opts.precision.unwrap_or_else(|| {
            Precision::pure(stored_float_dtype(tensors.values().map(|t| t.dtype())))
        });
        let store = crate::ParamStore::load(tensors, precision.params, device);
        Self::build(config, store)
            .and_then(|m| m.with_compute_dtype(precision.compute))
            .map_err(|e| match e {
                Error::MissingTensor { key, .. } => Error::MissingTensor {
                    key,
                    hint: Some(format!("in {}", weights_path.display())),
                },
                Error::TensorShape { .. } | Error::UnexpectedTensors { .. } => {
                    Error::file(&weights_path, e)
                }
                other => other,
            })
    }
}

/// Merges per-type kwargs overrides into the config (and into saved per-layer configs).
fn apply_overrides(config: &mut LmConfig, overrides: &MixerKwargs) -> Result<()> {
    for (ty, kw) in overrides {
        if !config.mixer_types.contains(ty) {
            return Err(Error::Config(format!(
                "mixer_kwargs override for `{ty}`, but no layer of this model is a `{ty}`; \
                 its layers' types are {:?}",
                config.mixer_types
            )));
        }
        let Value::Object(kw) = kw else {
            return Err(Error::Config(format!(
                "mixer_kwargs[\"{ty}\"] must be a JSON object, found {kw}"
            )));
        };
        let entry = config
            .mixer_kwargs
            .entry(ty.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(existing) = entry {
            existing.extend(kw.clone());
        }
        if let Some(layers) = config.layers.as_mut() {
            for (i, layer) in layers.iter_mut().enumerate() {
                if config.mixer_types.get(i) == Some(ty) {
                    if let Value::Object(obj) = layer {
                        obj.extend(kw.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads the weights of a model directory: `model.safetensors` if present,
/// else `pytorch_model.bin`.
pub fn read_weights(
    dir: &Path,
    device: &Device,
) -> Result<(std::path::PathBuf, HashMap<String, Tensor>)> {
    let st = dir.join(SAFETENSORS_FILE);
    if st.exists() {
        return Ok((st.clone(), io::read_safetensors(&st, device)?));
    }
    let pt = dir.join(PYTORCH_FILE);
    if pt.exists() {
        let tensors = crate::pytorch::read_state_dict(&pt, device)?;
        return Ok((pt, tensors));
    }
    Err(Error::file(
        dir,
        format!("no weights: expected {SAFETENSORS_FILE} or {PYTORCH_FILE} in the model directory"),
    ))
}

/// Refuses weights holding NaN or infinite values (a model with them
/// generates garbage without failing), naming the first such tensor.
pub fn check_finite(tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        let flat = t.flatten_all()?.to_dtype(candle_core::DType::F32)?;
        let bad = flat
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        if bad > 0 {
            return Err(Error::Config(format!(
                "tensor `{name}` holds {bad} NaN or infinite values out of {}; the checkpoint is corrupt",
                flat.elem_count()
            )));
        }
    }
    Ok(())
}
