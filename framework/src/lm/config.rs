//! `config.json` of an [`LRNNLMHeadModel`](super::LRNNLMHeadModel): a superset of Python lrnnx's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The `mixer_kwargs` of lrnnx: a dict keyed by mixer type (`{"attn": {"num_heads": 4}}`),
/// or one dict applied to every layer.
pub type MixerKwargs = Map<String, Value>;

fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn default_pad() -> usize {
    8
}

/// Model configuration. The first keys are exactly Python lrnnx's (with its
/// defaults); `mixer_kwargs` and `layers` are ours. `layers`, written by
/// [`save_pretrained`](super::LRNNLMHeadModel::save_pretrained), holds each
/// layer's full config (`{"type": NAME, ...}` with every default filled in),
/// so a saved model rebuilds identically even if defaults change later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Model width.
    pub d_model: usize,
    /// State size handed to mixers that take one.
    pub d_state: usize,
    /// Number of blocks; must equal `mixer_types.len()`.
    pub n_layer: usize,
    /// Vocabulary size before padding.
    pub vocab_size: usize,
    /// Registered mixer name of each layer.
    pub mixer_types: Vec<String>,
    /// Hidden width of the gated MLP (rounded up to 128); 0 for no MLP.
    #[serde(default)]
    pub d_intermediate: usize,
    /// Epsilon of every norm.
    #[serde(default = "default_eps")]
    pub norm_epsilon: f64,
    /// RMSNorm (true) or LayerNorm (false).
    #[serde(default = "yes")]
    pub rms_norm: bool,
    /// Fused add + norm: same math as unfused here; kept for compatibility.
    #[serde(default = "yes")]
    pub fused_add_norm: bool,
    /// Keep the residual stream in f32.
    #[serde(default)]
    pub residual_in_fp32: bool,
    /// Share the embedding with the LM head.
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    /// Pad the vocabulary up to a multiple of this.
    #[serde(default = "default_pad")]
    pub pad_vocab_size_multiple: usize,
    /// Constructor kwargs per mixer type (or one dict for all layers).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub mixer_kwargs: MixerKwargs,
    /// Full per-layer configs (ours; written on save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Value>>,
    /// Where each layer's mixer came from (ours; written on save): a crate name or `plugin:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixer_sources: Option<Vec<String>>,
}

/// Largest `d_model` / `d_state` accepted (widths beyond are no plausible model).
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest vocabulary: token ids are `u32`.
pub const MAX_VOCAB: usize = 1 << 31;
/// Largest `n_layer` accepted.
pub const MAX_LAYERS: usize = 4096;

impl LmConfig {
    /// A config with lrnnx's defaults for everything but the required keys.
    pub fn new(d_model: usize, d_state: usize, vocab_size: usize, mixer_types: &[&str]) -> Self {
        Self {
            d_model,
            d_state,
            n_layer: mixer_types.len(),
            vocab_size,
            mixer_types: mixer_types.iter().map(|s| s.to_string()).collect(),
            d_intermediate: 0,
            norm_epsilon: default_eps(),
            rms_norm: true,
            fused_add_norm: true,
            residual_in_fp32: false,
            tie_embeddings: true,
            pad_vocab_size_multiple: default_pad(),
            mixer_kwargs: Map::new(),
            layers: None,
            mixer_sources: None,
        }
    }

    /// Parses a config from JSON text; errors name the bad key.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("malformed model config: {e}")))
    }

    /// Vocabulary size after padding.
    pub fn padded_vocab_size(&self) -> usize {
        let m = self.pad_vocab_size_multiple.max(1);
        // Saturates rather than wraps; `validate` refuses such sizes first.
        self.vocab_size.div_ceil(m).saturating_mul(m)
    }

    /// Checks the values that would otherwise fail deep inside a layer.
    pub fn validate(&self) -> Result<()> {
        if self.mixer_types.len() != self.n_layer {
            return Err(Error::Config(format!(
                "n_layer is {} but mixer_types has {} entries ({:?}); they must match",
                self.n_layer,
                self.mixer_types.len(),
                self.mixer_types
            )));
        }
        for (what, v) in [("d_model", self.d_model), ("vocab_size", self.vocab_size)] {
            if v == 0 {
                return Err(Error::Config(format!("{what} must be positive, found 0")));
            }
        }
        for (what, v, max) in [
            ("d_model", self.d_model, MAX_WIDTH),
            ("d_state", self.d_state, MAX_WIDTH),
            ("d_intermediate", self.d_intermediate, MAX_WIDTH * 8),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "pad_vocab_size_multiple",
                self.pad_vocab_size_multiple,
                MAX_VOCAB,
            ),
            ("n_layer", self.n_layer, MAX_LAYERS),
        ] {
            if v > max {
                return Err(Error::Config(format!(
                    "{what} is {v}, more than the {max} this library accepts"
                )));
            }
        }
        if !(self.norm_epsilon > 0.0 && self.norm_epsilon.is_finite()) {
            return Err(Error::Config(format!(
                "norm_epsilon must be a positive finite number, found {}",
                self.norm_epsilon
            )));
        }
        if let Some(layers) = &self.layers {
            if layers.len() != self.n_layer {
                return Err(Error::Config(format!(
                    "`layers` has {} entries, expected n_layer = {}",
                    layers.len(),
                    self.n_layer
                )));
            }
        }
        Ok(())
    }

    /// The kwargs of layer `i`: its saved full config when present, else the
    /// per-type (or shared) entry of `mixer_kwargs`.
    pub fn layer_kwargs(&self, i: usize) -> Result<Map<String, Value>> {
        if let Some(Value::Object(obj)) = self.layers.as_ref().and_then(|l| l.get(i)) {
            let mut obj = obj.clone();
            if let Some(Value::String(t)) = obj.remove("type") {
                // Compare canonical names: `mixer_types` may use an alias ("lru").
                let canonical = |n: &str| {
                    crate::Registry::get(n)
                        .map(|r| r.spec.name.to_string())
                        .unwrap_or(n.to_string())
                };
                if canonical(&t) != canonical(&self.mixer_types[i]) {
                    return Err(Error::Config(format!(
                        "layer {i}: `layers` says type `{t}` but mixer_types says `{}`",
                        self.mixer_types[i]
                    )));
                }
            }
            return Ok(obj);
        }
        let kw = &self.mixer_kwargs;
        let typed = kw.keys().filter(|k| self.mixer_types.contains(k)).count();
        if typed == 0 {
            // One dict for all layers (or none at all). An object value is a
            // per-type entry under a name no layer uses (a typo such as "atn").
            if let Some((k, _)) = kw.iter().find(|(_, v)| v.is_object()) {
                return Err(Error::Config(format!(
                    "mixer_kwargs[\"{k}\"] is a per-type entry, but no layer's mixer type is `{k}`; \
                     the layers' types are {:?}",
                    self.mixer_types
                )));
            }
            return Ok(kw.clone());
        }
        if typed != kw.len() {
            let stray: Vec<_> = kw
                .keys()
                .filter(|k| !self.mixer_types.contains(k))
                .collect();
            return Err(Error::Config(format!(
                "mixer_kwargs mixes per-type entries with other keys {stray:?}; use either \
                 {{\"<mixer type>\": {{...}}}} for each type in {:?} or one flat dict for all layers",
                self.mixer_types
            )));
        }
        match kw.get(&self.mixer_types[i]) {
            None => Ok(Map::new()),
            Some(Value::Object(o)) => Ok(o.clone()),
            Some(other) => Err(Error::Config(format!(
                "mixer_kwargs[\"{}\"] must be a JSON object, found {other}",
                self.mixer_types[i]
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrnnx_config_reads_with_its_defaults() {
        let c = LmConfig::from_json_str(
            r#"{"d_model": 32, "d_state": 8, "n_layer": 1, "vocab_size": 97, "mixer_types": ["LRU"]}"#,
        )
        .unwrap();
        assert_eq!(c.padded_vocab_size(), 104);
        assert!(c.rms_norm && c.tie_embeddings && c.fused_add_norm);
        assert_eq!(c.norm_epsilon, 1e-5);
    }

    #[test]
    fn per_type_and_shared_kwargs() {
        let mut c = LmConfig::new(16, 8, 10, &["LRU", "attn"]);
        c.mixer_kwargs = serde_json::from_str(r#"{"attn": {"num_heads": 4}}"#).unwrap();
        assert!(c.layer_kwargs(0).unwrap().is_empty());
        assert_eq!(c.layer_kwargs(1).unwrap()["num_heads"], 4);
        c.mixer_kwargs = serde_json::from_str(r#"{"r_min": 0.5}"#).unwrap();
        assert_eq!(c.layer_kwargs(0).unwrap()["r_min"], 0.5);
        c.mixer_kwargs = serde_json::from_str(r#"{"attn": {}, "r_min": 0.5}"#).unwrap();
        assert!(c.layer_kwargs(0).is_err());
    }

    #[test]
    fn layer_count_mismatch_is_named() {
        let mut c = LmConfig::new(16, 8, 10, &["LRU", "attn"]);
        c.n_layer = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("n_layer is 3") && e.contains("2 entries"), "{e}");
    }

    #[test]
    fn malformed_and_unknown_keys_are_errors() {
        assert!(LmConfig::from_json_str("{\"d_model\": 3").is_err());
        let e = LmConfig::from_json_str(
            r#"{"d_model": 32, "d_state": 8, "n_layer": 1, "vocab_size": 97, "mixer_types": ["LRU"], "d_modle": 3}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("d_modle"), "{e}");
    }
}
