//! Language-model cases: logits against the reference with the options the
//! case holds (`input.integration_timesteps`, `input.lengths`, metadata
//! `num_last_tokens`), then our own step and prefill against our forward
//! where the model's step is meant to equal it.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::Value;

use super::{get, record, record_errors, CaseResult};
use crate::{Error, LRNNLMHeadModel, LmForwardOpts, Result};

/// Why a mixer's step legitimately differs from its forward on sequences of
/// length `l`, judged from its full config: attention that is not causal
/// (a step sees only the past), or a convolution kernel cut at `l_max < l`
/// (S4, S4D: the recurrence keeps every tap). `None` when step must equal forward.
pub(super) fn step_differs(config: &Value, l: usize) -> Option<String> {
    fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
        match v {
            Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find(x, key))),
            _ => None,
        }
    }
    if let Some(Value::Bool(false)) = find(config, "causal") {
        return Some("non-causal attention".into());
    }
    match find(config, "l_max").and_then(Value::as_u64) {
        Some(m) if (m as usize) < l => Some(format!("l_max {m} < L {l}")),
        _ => None,
    }
}

/// Reads metadata `num_last_tokens` (absent: 0, all positions).
pub(super) fn num_last_tokens(meta: &HashMap<String, String>) -> Result<usize> {
    match meta.get("num_last_tokens") {
        None => Ok(0),
        Some(v) => v.trim().parse::<usize>().map_err(|_| {
            Error::Config(format!(
                "metadata `num_last_tokens`: expected a count, found `{v}`"
            ))
        }),
    }
}

/// Checks an LM case; see the module docs. Notes what was not checked, and why.
pub(super) fn check_lm(
    model: &LRNNLMHeadModel,
    ids: &Tensor,
    t: &HashMap<String, Tensor>,
    meta: &HashMap<String, String>,
    result: &mut CaseResult,
) -> Result<()> {
    let (b, l) = ids.dims2()?;
    let timesteps = t.get("input.integration_timesteps").cloned();
    let lengths = t.get("input.lengths").cloned();
    let n_last = num_last_tokens(meta)?;
    let opts = LmForwardOpts {
        num_last_tokens: n_last,
        integration_timesteps: timesteps.clone(),
        lengths: lengths.clone(),
    };
    let logits = model.forward(ids, &opts)?;
    record(result, "logits", &logits, get(t, "output.logits")?)?;

    let differs: Vec<String> = model
        .layers()
        .iter()
        .enumerate()
        .filter_map(|(i, layer)| {
            let cfg = crate::config_to_json(layer.mixer.config()).ok()?;
            step_differs(&cfg, l).map(|why| format!("layer {i} ({}): {why}", layer.mixer.name()))
        })
        .collect();
    if !differs.is_empty() {
        result.notes.push(format!(
            "forward only, step not checked ({})",
            differs.join("; ")
        ));
        return Ok(());
    }
    // Our forward at every position, the reference for step and prefill.
    let full = model.forward(
        ids,
        &LmForwardOpts {
            num_last_tokens: 0,
            ..opts.clone()
        },
    )?;
    let mut state = model.init_state(b, l)?;
    let mut steps = Vec::with_capacity(l);
    for i in 0..l {
        let ts = match &timesteps {
            Some(ts) => Some(ts.narrow(1, i, 1)?),
            None => None,
        };
        steps.push(
            model
                .step(&ids.narrow(1, i, 1)?, &mut state, ts.as_ref())?
                .unsqueeze(1)?,
        );
    }
    let step_logits = Tensor::cat(&steps, 1)?;
    if let Some(r) = t.get("output.step_logits") {
        record(result, "step_logits", &step_logits, r)?;
    }
    let Some(lengths) = &lengths else {
        record(result, "step=forward", &step_logits, &full)?;
        if n_last > 0 {
            let n = n_last.min(l);
            record(
                result,
                "last_tokens=step",
                &logits,
                &step_logits.narrow(1, l - n, n)?,
            )?;
        }
        let mut st = model.init_state(b, l)?;
        let last = model.prefill(ids, &mut st, &opts)?;
        record(
            result,
            "prefill=forward",
            &last,
            &full.narrow(1, l - 1, 1)?.squeeze(1)?,
        )?;
        return Ok(());
    };
    // Step knows no lengths: it must equal the forward at every valid position.
    let lens = crate::lm::lengths_of(lengths, b, l)?;
    let mut errs = Vec::with_capacity(b);
    let mut last_fwd = Vec::with_capacity(b);
    for (row, &n) in lens.iter().enumerate() {
        let s = step_logits.narrow(0, row, 1)?.narrow(1, 0, n)?;
        let f = full.narrow(0, row, 1)?.narrow(1, 0, n)?;
        errs.push(super::compare(&s, &f)?);
        last_fwd.push(full.narrow(0, row, 1)?.narrow(1, n - 1, 1)?.squeeze(1)?);
    }
    record_errors(result, "step=forward (valid positions)", &errs);
    let mut st = model.init_state(b, l)?;
    match model.prefill(ids, &mut st, &opts) {
        Ok(last) => record(
            result,
            "prefill(lengths)=forward",
            &last,
            &Tensor::cat(&last_fwd, 0)?,
        )?,
        Err(e) => result
            .notes
            .push(format!("prefill with lengths not checked: {e}")),
    }
    Ok(())
}
