//! The cell-level reference case (`mixer` metadata `"mLSTM-cell"`), as a
//! function the conformance runner can call: it holds cell inputs and the
//! outputs of `mlstm_kernels`' parallel, chunkwise and recurrent forms.

use std::collections::HashMap;

use candle_core::Tensor;
use lrnnx_framework::{Error, Result};
use serde_json::{Map, Value};

use crate::cell;

/// The `mixer` metadata value of cell reference files.
pub const CELL_CASE: &str = "mLSTM-cell";

/// Chunk size of `output.h_chunkwise` when the kwargs name none (the exported files use 8).
pub const DEFAULT_CASE_CHUNK: usize = 8;

fn get<'a>(t: &'a HashMap<String, Tensor>, k: &str) -> Result<&'a Tensor> {
    t.get(k).ok_or_else(|| Error::MissingTensor {
        key: k.to_string(),
        hint: Some("in the mLSTM-cell case file".into()),
    })
}

/// Runs a cell case: `tensors` are the file's (`input.q/k/v`,
/// `input.igate_preact/fgate_preact`, `output.*`), `kwargs` its `kwargs`
/// metadata (`eps`, optionally `chunk_size`). Returns `(what, ours, reference)`
/// for every reference output: our parallel, chunkwise and recurrent `h`,
/// and the last `c`, `n`, `m` of the chunkwise and the recurrent forms.
pub fn cell_case(
    tensors: &HashMap<String, Tensor>,
    kwargs: &Map<String, Value>,
) -> Result<Vec<(String, Tensor, Tensor)>> {
    let eps = kwargs
        .get("eps")
        .and_then(Value::as_f64)
        .unwrap_or(cell::DEFAULT_EPS);
    let chunk = kwargs
        .get("chunk_size")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_CASE_CHUNK, |c| c as usize);
    let (q, k, v) = (
        get(tensors, "input.q")?,
        get(tensors, "input.k")?,
        get(tensors, "input.v")?,
    );
    let i = get(tensors, "input.igate_preact")?;
    let f = get(tensors, "input.fgate_preact")?;
    let mut out = Vec::new();
    let mut push = |what: &str, ours: Tensor, key: &str| {
        if let Some(r) = tensors.get(key) {
            out.push((what.to_string(), ours, r.clone()));
        }
    };
    let (h, _) = cell::parallel(q, k, v, i, f, None, eps)?;
    push("h_parallel", h, "output.h_parallel");
    let (h, st) = cell::chunkwise(q, k, v, i, f, None, chunk, eps)?;
    push("h_chunkwise", h, "output.h_chunkwise");
    push("chunkwise c_last", st.c, "output.c_last");
    push("chunkwise n_last", st.n, "output.n_last");
    push("chunkwise m_last", st.m, "output.m_last");
    let (h, st) = cell::recurrent_sequence(q, k, v, i, f, None, eps)?;
    push("h_recurrent", h, "output.h_recurrent");
    push("recurrent c_last", st.c, "output.c_last");
    push("recurrent n_last", st.n, "output.n_last");
    push("recurrent m_last", st.m, "output.m_last");
    if out.is_empty() {
        return Err(Error::Config(
            "mLSTM-cell case holds no output.* tensor to compare".into(),
        ));
    }
    Ok(out)
}
