//! A model's decoding state ([`LmState`]) saved to a safetensors file and
//! read back, so that a stream can stop (a process exits, a server moves a
//! session) and continue later exactly where it was.
//!
//! The file holds every layer's tensors as `layers.<i>.<name>` and, in its
//! metadata, the format tag, the layer count, each layer's mixer name and
//! position, the model's offset and dtype. It is written crash-consistently
//! (a temporary file, fsynced, renamed over the target); reading it checks
//! the size, that it is a regular file and that the metadata and tensors
//! agree; [`LRNNLMHeadModel::check_state`] then checks it against a model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device};

use super::config::MAX_LAYERS;
use super::{LRNNLMHeadModel, LmState};
use crate::{Error, MixerState, Result};

/// The `format` metadata of a saved [`LmState`].
pub const LM_STATE_FORMAT: &str = "lrnnx-lm-state-v1";

/// Largest saved decoding state read (attention KV caches make it grow with
/// the tokens decoded).
pub const MAX_STATE_FILE_BYTES: u64 = 32 << 30;

/// An [`Error::Shape`] whose `found` is shown as written.
fn mismatch(
    what: impl Into<String>,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> Error {
    Error::Shape {
        what: what.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

fn dtype_name(d: DType) -> &'static str {
    d.as_str()
}

fn parse_dtype(s: &str) -> Option<DType> {
    [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::U8,
        DType::U32,
        DType::I64,
    ]
    .into_iter()
    .find(|d| d.as_str() == s)
}

impl LmState {
    /// Writes the state to `path` (a safetensors file with metadata),
    /// atomically: after a crash `path` holds the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.mixers.len() != self.layers.len() {
            return Err(mismatch(
                "decoding state",
                format!("one mixer name per layer state ({})", self.layers.len()),
                format!("{} mixer names", self.mixers.len()),
            ));
        }
        let mut tensors = BTreeMap::new();
        // A transposed view (a mixer's cached weight) is stored as its
        // contiguous transpose and transposed back on load: the same layout
        // takes the same matmul path, so decoding continues bit for bit.
        let mut transposed = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, t) in layer.tensors() {
                let key = format!("layers.{i}.{name}");
                if t.rank() >= 2 && !t.is_contiguous() {
                    let back = t.t()?;
                    if back.is_contiguous() {
                        tensors.insert(key.clone(), back);
                        transposed.push(key);
                        continue;
                    }
                }
                tensors.insert(key, t.clone());
            }
        }
        let offsets: Vec<usize> = self.layers.iter().map(|l| l.seqlen_offset).collect();
        let json = |v: serde_json::Value| v.to_string();
        let meta = HashMap::from([
            ("format".to_string(), LM_STATE_FORMAT.to_string()),
            ("n_layer".to_string(), self.layers.len().to_string()),
            ("mixers".to_string(), json(serde_json::json!(self.mixers))),
            (
                "layer_offsets".to_string(),
                json(serde_json::json!(offsets)),
            ),
            ("seqlen_offset".to_string(), self.seqlen_offset.to_string()),
            ("dtype".to_string(), dtype_name(self.dtype).to_string()),
            (
                "transposed".to_string(),
                json(serde_json::json!(transposed)),
            ),
        ]);
        crate::io::write_safetensors(path, &tensors, Some(meta))
    }

    /// Reads a state written by [`LmState::save`] onto `device`. The file
    /// must be a regular file of at most [`MAX_STATE_FILE_BYTES`] whose
    /// metadata and tensors agree; check it against the model that will
    /// continue from it with [`LRNNLMHeadModel::check_state`] (or read it
    /// with [`LRNNLMHeadModel::load_state`], which does both).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = crate::io::read_safetensors_file_bounded(
            path,
            device,
            MAX_STATE_FILE_BYTES,
            "a saved decoding state",
        )?;
        let bad = |msg: String| Error::file(path, msg);
        let meta = &file.metadata;
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                bad(format!(
                    "not a saved decoding state: expected metadata `{key}`, found keys {:?}",
                    meta.keys().collect::<Vec<_>>()
                ))
            })
        };
        let format = get("format")?;
        if format != LM_STATE_FORMAT {
            return Err(bad(format!(
                "expected a decoding state of format `{LM_STATE_FORMAT}`, found format `{format}`"
            )));
        }
        let number = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.parse::<usize>()
                .map_err(|_| bad(format!("metadata `{key}`: expected a count, found `{v}`")))
        };
        let n_layer = number("n_layer")?;
        if n_layer > MAX_LAYERS {
            return Err(bad(format!(
                "expected at most {MAX_LAYERS} layers, found n_layer = {n_layer}"
            )));
        }
        let seqlen_offset = number("seqlen_offset")?;
        let list = |key: &str| -> Result<Vec<serde_json::Value>> {
            let v = get(key)?;
            match serde_json::from_str::<serde_json::Value>(v) {
                Ok(serde_json::Value::Array(a)) if a.len() == n_layer => Ok(a),
                _ => Err(bad(format!(
                    "metadata `{key}`: expected a JSON list of {n_layer} entries (n_layer), found `{v}`"
                ))),
            }
        };
        let mixers = list("mixers")?
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                other => Err(bad(format!(
                    "metadata `mixers`: expected mixer names, found {other}"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let offsets = list("layer_offsets")?
            .into_iter()
            .map(|v| {
                v.as_u64().map(|o| o as usize).ok_or_else(|| {
                    bad(format!(
                        "metadata `layer_offsets`: expected counts, found {v}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dtype_text = get("dtype")?;
        let dtype = parse_dtype(dtype_text).ok_or_else(|| {
            bad(format!(
                "metadata `dtype`: expected a dtype such as f32, found `{dtype_text}`"
            ))
        })?;
        let transposed: Vec<String> = match meta.get("transposed") {
            None => Vec::new(),
            Some(v) => serde_json::from_str(v).map_err(|_| {
                bad(format!(
                    "metadata `transposed`: expected a JSON list of tensor names, found `{v}`"
                ))
            })?,
        };
        let mut layers: Vec<MixerState> = offsets
            .into_iter()
            .map(|o| {
                let mut s = MixerState::new();
                s.seqlen_offset = o;
                s
            })
            .collect();
        for (key, mut t) in file.tensors {
            if transposed.contains(&key) {
                if t.rank() < 2 {
                    return Err(bad(format!(
                        "tensor `{key}`: listed as transposed, expected rank >= 2, found shape {:?}",
                        t.dims()
                    )));
                }
                t = t.t()?;
            }
            let parsed = key
                .strip_prefix("layers.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(i, name)| Some((i.parse::<usize>().ok()?, name)));
            match parsed {
                Some((i, name)) if i < n_layer && !name.is_empty() => layers[i].set(name, t),
                _ => {
                    return Err(bad(format!(
                    "expected tensors named `layers.<i>.<name>` with i < {n_layer}, found `{key}`"
                )))
                }
            }
        }
        Ok(Self {
            layers,
            seqlen_offset,
            mixers,
            dtype,
        })
    }
}

impl LRNNLMHeadModel {
    /// Reads a state saved by [`LmState::save`] onto this model's device and
    /// checks that this model can continue from it ([`Self::check_state`]).
    pub fn load_state(&self, path: &Path) -> Result<LmState> {
        let state = LmState::load(path, self.device())?;
        self.check_state(&state)
            .map_err(|e| Error::file(path, format!("does not fit this model: {e}")))?;
        Ok(state)
    }

    /// Checks that `state` is one this model made: as many layer states as
    /// layers, the same mixer in each, the model's dtype, and in every layer
    /// the tensors a fresh state of this model has, each of its dtype and
    /// shape (a batch size and, for caches that grow, a length of the
    /// state's own). Errors name the layer and what was expected and found.
    pub fn check_state(&self, state: &LmState) -> Result<()> {
        let n = self.layers().len();
        if state.layers.len() != n || state.mixers.len() != n {
            return Err(mismatch(
                "decoding state",
                format!("{n} layer states (the model's layers)"),
                format!(
                    "{} layer states with {} mixer names",
                    state.layers.len(),
                    state.mixers.len()
                ),
            ));
        }
        let compute = self.precision().compute;
        if state.dtype != compute {
            return Err(mismatch(
                "decoding state",
                format!("dtype {compute:?} (the model's compute dtype)"),
                format!("dtype {:?}", state.dtype),
            ));
        }
        let mut batch: Option<usize> = None;
        for (i, ((block, st), name)) in self
            .layers()
            .iter()
            .zip(&state.layers)
            .zip(&state.mixers)
            .enumerate()
        {
            let mixer = &block.mixer;
            if mixer.name() != name {
                return Err(mismatch(
                    format!("decoding state layer {i}"),
                    format!("mixer `{}`", mixer.name()),
                    format!("mixer `{name}`"),
                ));
            }
            let what = format!("decoding state layer {i} ({name})");
            // Fresh states at batch 1 and 2 and at capacity 1 and 2 tell the
            // batch dimensions and the growing ones apart from fixed ones.
            let dev = self.device();
            let probe = |b, c| mixer.init_state(b, c, compute, dev);
            let (one, two_b, two_c) = (probe(1, 1)?, probe(2, 1)?, probe(1, 2)?);
            let want: Vec<&String> = one.tensors().keys().collect();
            let found: Vec<&String> = st.tensors().keys().collect();
            if want != found {
                return Err(mismatch(
                    what,
                    format!("tensors {want:?}"),
                    format!("tensors {found:?}"),
                ));
            }
            for (tname, t) in st.tensors() {
                let (r1, rb, rc) = (one.get(tname)?, two_b.get(tname)?, two_c.get(tname)?);
                let tw = format!("{what} tensor `{tname}`");
                if t.dtype() != r1.dtype() {
                    return Err(mismatch(
                        tw,
                        format!("dtype {:?}", r1.dtype()),
                        format!("dtype {:?}", t.dtype()),
                    ));
                }
                let (d1, db, dc, dt) = (r1.dims(), rb.dims(), rc.dims(), t.dims());
                let expected = || {
                    let parts: Vec<String> = (0..d1.len())
                        .map(|k| match (db[k] != d1[k], dc[k] != d1[k]) {
                            (true, _) => format!("{}*batch", d1[k]),
                            (_, true) => "*".into(),
                            _ => d1[k].to_string(),
                        })
                        .collect();
                    format!("shape [{}]", parts.join(", "))
                };
                if dt.len() != d1.len() || db.len() != d1.len() || dc.len() != d1.len() {
                    return Err(mismatch(tw, expected(), format!("shape {dt:?}")));
                }
                for k in 0..d1.len() {
                    let ok = if db[k] != d1[k] {
                        // A batch dimension: d1 per sequence.
                        let per = d1[k].max(1);
                        let b = dt[k] / per;
                        let fits = dt[k] % per == 0 && b > 0 && *batch.get_or_insert(b) == b;
                        fits
                    } else if dc[k] != d1[k] {
                        true
                    } else {
                        dt[k] == d1[k]
                    };
                    if !ok {
                        let found = match batch {
                            Some(b) => format!("shape {dt:?} (batch {b} elsewhere in the state)"),
                            None => format!("shape {dt:?}"),
                        };
                        return Err(mismatch(tw, expected(), found));
                    }
                }
            }
        }
        Ok(())
    }
}
