//! Conformance with Python lrnnx: runs the reference cases exported from it.
//!
//! A case is either a safetensors file (one mixer or one LM with its
//! parameters, inputs and reference outputs; see tests/data/lrnnx/README.md)
//! or a directory holding a checkpoint (`config.json` + weights +
//! `expected.safetensors`). A case passes when, for every output it holds,
//! `max |ours - ref| <= 1e-4 * max(1, max |ref|)`. Cases whose mixers are not
//! registered are skipped, never passed.
//!
//! Besides the reference outputs, our step is checked against our forward
//! (and, for LM cases, our prefill), except where the two legitimately
//! differ: non-causal attention, or an S4/S4D kernel cut at `l_max < L`;
//! the case's line then says "forward only" and why. LM cases may hold
//! `input.integration_timesteps`, `input.lengths` (step compared at the
//! valid positions, prefill with the lengths against the forward at each
//! sequence's last one) and metadata `num_last_tokens`.

mod lm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

use crate::io::read_safetensors_file;
use crate::{
    BuildArgs, Error, ForwardOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts, Mixer, ParamStore,
    Registry, Result, StepOpts,
};

/// A runner for reference cases that are not a mixer or an LM (such as the
/// mLSTM cell's), registered by the crate that can run them:
/// `inventory::submit! { CaseHandler { mixer: "mLSTM-cell", run: my_fn } }`.
/// `run` gets the case file's tensors and its `kwargs` metadata and returns
/// `(output name, ours, reference)` triples.
pub struct CaseHandler {
    /// The `mixer` metadata value the handler takes.
    pub mixer: &'static str,
    /// Runs the case.
    #[allow(clippy::type_complexity)]
    pub run:
        fn(&HashMap<String, Tensor>, &Map<String, Value>) -> Result<Vec<(String, Tensor, Tensor)>>,
}

inventory::collect!(CaseHandler);

/// Relative tolerance of the pass criterion.
pub const TOLERANCE: f64 = 1e-4;

/// How one case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every output within tolerance.
    Pass,
    /// Some output out of tolerance (or the case errored); the reason.
    Fail(String),
    /// Not run; the reason (usually a mixer not built yet).
    Skipped(String),
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// File or directory name.
    pub name: String,
    /// Largest absolute error over all compared outputs.
    pub max_abs: f64,
    /// Largest `abs / max(1, max|ref|)` over all compared outputs.
    pub max_rel: f64,
    /// Per-output errors: (output, abs, rel).
    pub outputs: Vec<(String, f64, f64)>,
    /// Pass, fail or skipped.
    pub outcome: Outcome,
    /// What was not checked, and why (e.g. "forward only ...").
    pub notes: Vec<String>,
}

impl CaseResult {
    /// One line: name, errors, verdict.
    pub fn line(&self) -> String {
        let verdict = match &self.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Fail(why) => format!("FAIL ({why})"),
            Outcome::Skipped(why) => format!("skipped ({why})"),
        };
        let verdict = if self.notes.is_empty() {
            verdict
        } else {
            format!("{verdict}; {}", self.notes.join("; "))
        };
        if matches!(self.outcome, Outcome::Skipped(_)) || self.outputs.is_empty() {
            format!("{:<28} {:>10} {:>10}  {verdict}", self.name, "-", "-")
        } else {
            format!(
                "{:<28} {:>10.3e} {:>10.3e}  {verdict}",
                self.name, self.max_abs, self.max_rel
            )
        }
    }
}

/// Compares two tensors: `(max abs error, relative error)`.
pub fn compare(ours: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    if ours.dims() != reference.dims() {
        return Err(Error::shape(
            "output",
            format!("{:?}", reference.dims()),
            ours.dims(),
        ));
    }
    let a = ours.to_dtype(DType::F64)?.flatten_all()?;
    let b = reference.to_dtype(DType::F64)?.flatten_all()?;
    let abs = (a - &b)?.abs()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?.max(1.0);
    let abs = if abs.is_nan() { f64::INFINITY } else { abs };
    Ok((abs, abs / scale))
}

/// Runs every case in `dir` (and in its sub-directories that are not cases themselves), sorted by name.
/// Symbolic links are not followed into directories (a link loop would never
/// end), and groups nest at most [`MAX_CASE_DEPTH`] deep.
pub fn run_dir(dir: &Path) -> Result<Vec<CaseResult>> {
    run_dir_on(dir, &Device::Cpu)
}

/// [`run_dir`] with every case's model and inputs on `device`.
pub fn run_dir_on(dir: &Path, device: &Device) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    for p in case_paths(dir, 0)? {
        results.push(run_case_on(&p, device));
    }
    Ok(results)
}

/// How deep case groups may nest below the directory given.
pub const MAX_CASE_DEPTH: usize = 16;

/// Whether `entry` is a real directory (not a link to one).
fn is_real_dir(entry: &std::fs::DirEntry) -> bool {
    entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
}

fn case_paths(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    if depth > MAX_CASE_DEPTH {
        return Err(Error::file(
            dir,
            format!("case groups nest more than {MAX_CASE_DEPTH} directories deep"),
        ));
    }
    let mut groups: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .flatten()
        .filter(is_real_dir)
        .map(|e| e.path())
        .filter(|p| !p.join("expected.safetensors").exists())
        .collect();
    groups.sort();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()) == Some("safetensors")
                || (p.is_dir() && p.join("expected.safetensors").exists())
        })
        .collect();
    entries.sort();
    for g in groups {
        entries.extend(case_paths(&g, depth + 1)?);
    }
    Ok(entries)
}

/// Runs one case (file or checkpoint directory), never failing: errors become `Fail`.
pub fn run_case(path: &Path) -> CaseResult {
    run_case_on(path, &Device::Cpu)
}

/// [`run_case`] with the model and inputs on `device`.
pub fn run_case_on(path: &Path, device: &Device) -> CaseResult {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("?")
        .to_string();
    let mut result = CaseResult {
        name,
        max_abs: 0.0,
        max_rel: 0.0,
        outputs: Vec::new(),
        outcome: Outcome::Pass,
        notes: Vec::new(),
    };
    let run = if path.is_dir() {
        run_checkpoint(path, device, &mut result)
    } else {
        run_file(path, device, &mut result)
    };
    match run {
        Ok(None) => {
            let bad: Vec<_> = result
                .outputs
                .iter()
                .filter(|(_, _, rel)| *rel > TOLERANCE)
                .map(|(n, _, _)| n.clone())
                .collect();
            if result.outputs.is_empty() {
                result.outcome = Outcome::Fail("no output to compare".into());
            } else if !bad.is_empty() {
                result.outcome = Outcome::Fail(format!("out of tolerance: {}", bad.join(", ")));
            }
        }
        Ok(Some(skip)) => result.outcome = Outcome::Skipped(skip),
        Err(e) => {
            // candle appends a backtrace when RUST_BACKTRACE is set: keep the message.
            let msg = e.to_string();
            result.outcome = Outcome::Fail(msg.lines().next().unwrap_or_default().to_string());
        }
    }
    result
}

fn record(result: &mut CaseResult, what: &str, ours: &Tensor, reference: &Tensor) -> Result<()> {
    let err = compare(ours, reference)?;
    record_errors(result, what, &[err]);
    Ok(())
}

/// Records one output from the `(abs, rel)` errors of its parts (the largest of each).
fn record_errors(result: &mut CaseResult, what: &str, errs: &[(f64, f64)]) {
    let abs = errs.iter().map(|e| e.0).fold(0.0, f64::max);
    let rel = errs.iter().map(|e| e.1).fold(0.0, f64::max);
    result.max_abs = result.max_abs.max(abs);
    result.max_rel = result.max_rel.max(rel);
    result.outputs.push((what.to_string(), abs, rel));
}

/// Names of mixers a config needs that are not registered.
fn missing_mixers(types: &[String]) -> Vec<String> {
    let mut missing: Vec<String> = types
        .iter()
        .filter(|t| Registry::get(t).is_err())
        .cloned()
        .collect();
    missing.dedup();
    missing
}

/// Parameters under `param.`, with complex `X.real` / `X.imag` pairs merged
/// into one `X (..., 2)` tensor (PyTorch's `view_as_real` layout).
fn params(tensors: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (k, t) in tensors {
        let Some(key) = k.strip_prefix("param.") else {
            continue;
        };
        if let Some(base) = key.strip_suffix(".real") {
            if let Some(im) = tensors.get(&format!("param.{base}.imag")) {
                out.insert(base.to_string(), Tensor::stack(&[t, im], t.rank())?);
                continue;
            }
        }
        if key.ends_with(".imag")
            && tensors.contains_key(&format!("param.{}.real", &key[..key.len() - 5]))
        {
            continue;
        }
        out.insert(key.to_string(), t.clone());
    }
    Ok(out)
}

fn meta_json(meta: &HashMap<String, String>, key: &str) -> Result<Value> {
    match meta.get(key) {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::Config(format!("metadata `{key}` is not JSON: {e}"))),
        None => Ok(Value::Object(Map::new())),
    }
}

fn run_file(path: &Path, device: &Device, result: &mut CaseResult) -> Result<Option<String>> {
    let file = read_safetensors_file(path, device)?;
    let mixer = file.metadata.get("mixer").cloned().unwrap_or_default();
    if mixer == "LRNNLMHeadModel" {
        let config: LmConfig = serde_json::from_value(meta_json(&file.metadata, "config")?)
            .map_err(|e| Error::file(path, format!("metadata `config`: {e}")))?;
        let missing = missing_mixers(&config.mixer_types);
        if !missing.is_empty() {
            return Ok(Some(format!("mixers not built: {}", missing.join(", "))));
        }
        let model = LRNNLMHeadModel::from_tensors(config, params(&file.tensors)?, device)?;
        let ids = get(&file.tensors, "input.input_ids")?;
        lm::check_lm(&model, ids, &file.tensors, &file.metadata, result)?;
        return Ok(None);
    }
    if let Some(handler) = inventory::iter::<CaseHandler>
        .into_iter()
        .find(|h| h.mixer == mixer)
    {
        let kwargs = match meta_json(&file.metadata, "kwargs")? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (name, ours, reference) in (handler.run)(&file.tensors, &kwargs)? {
            record(result, &name, &ours, &reference)?;
        }
        return Ok(None);
    }
    if Registry::get(&mixer).is_err() {
        return Ok(Some(format!("mixer `{mixer}` not built")));
    }
    let Value::Object(mut kwargs) = meta_json(&file.metadata, "kwargs")? else {
        return Err(Error::file(path, "metadata `kwargs` is not a JSON object"));
    };
    let d_model = kwargs
        .remove("d_model")
        .or_else(|| kwargs.remove("embed_dim"))
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::file(path, "kwargs name no d_model / embed_dim"))?
        as usize;
    let d_state = kwargs.get("d_state").and_then(|v| v.as_u64()).unwrap_or(64) as usize;
    let store = ParamStore::load(params(&file.tensors)?, DType::F32, device);
    let args = BuildArgs {
        d_model,
        d_state,
        layer_idx: 0,
        kwargs,
        params: store.builder(),
    };
    let m = Registry::build(&mixer, &args)?;
    let unused = store.unused_keys();
    if !unused.is_empty() {
        return Err(Error::UnexpectedTensors { keys: unused });
    }
    check_mixer(m.as_ref(), &file.tensors, result)?;
    Ok(None)
}

fn get<'a>(t: &'a HashMap<String, Tensor>, k: &str) -> Result<&'a Tensor> {
    t.get(k).ok_or_else(|| Error::MissingTensor {
        key: k.to_string(),
        hint: Some("in the case file".into()),
    })
}

/// Forward against `output.y`; step (from a fresh state, one position at a
/// time) against `output.step_y` when present, and always against our own forward.
fn check_mixer(m: &dyn Mixer, t: &HashMap<String, Tensor>, result: &mut CaseResult) -> Result<()> {
    let x = get(t, "input.x")?;
    let opts = ForwardOpts {
        integration_timesteps: t.get("input.integration_timesteps").cloned(),
        lengths: t.get("input.lengths").cloned(),
    };
    let y = m.forward(x, &opts)?;
    record(result, "y", &y, get(t, "output.y")?)?;
    if opts.lengths.is_some() {
        // Step has no notion of lengths; the forward comparison is the case.
        return Ok(());
    }
    let (b, l, _) = x.dims3()?;
    if let Some(why) = lm::step_differs(&crate::config_to_json(m.config())?, l) {
        result
            .notes
            .push(format!("forward only, step not checked ({why})"));
        return Ok(());
    }
    let mut state = m.init_state(b, l, x.dtype(), x.device())?;
    let mut ys = Vec::with_capacity(l);
    for i in 0..l {
        let so = StepOpts {
            integration_timesteps: match &opts.integration_timesteps {
                Some(ts) => Some(ts.narrow(1, i, 1)?),
                None => None,
            },
        };
        ys.push(m.step(&x.narrow(1, i, 1)?, &mut state, &so)?);
    }
    let step_y = Tensor::cat(&ys, 1)?;
    if let Some(r) = t.get("output.step_y") {
        record(result, "step_y", &step_y, r)?;
    }
    record(result, "step_y=y", &step_y, &y)?;
    Ok(())
}

fn run_checkpoint(dir: &Path, device: &Device, result: &mut CaseResult) -> Result<Option<String>> {
    let expected = read_safetensors_file(&dir.join("expected.safetensors"), device)?;
    let config: LmConfig = serde_json::from_value(crate::io::read_json(&dir.join("config.json"))?)
        .map_err(|e| Error::file(dir.join("config.json"), e))?;
    let missing = missing_mixers(&config.mixer_types);
    if !missing.is_empty() {
        return Ok(Some(format!("mixers not built: {}", missing.join(", "))));
    }
    let kwargs = match meta_json(&expected.metadata, "mixer_kwargs")? {
        Value::Object(m) if !m.is_empty() => Some(m),
        _ => None,
    };
    let model = LRNNLMHeadModel::from_pretrained(dir, kwargs.as_ref(), device)?;
    let ids = get(&expected.tensors, "input.input_ids")?;
    let logits = model.forward(ids, &LmForwardOpts::default())?;
    record(
        result,
        "logits",
        &logits,
        get(&expected.tensors, "output.logits")?,
    )?;
    Ok(None)
}

/// `N passed, N failed, N skipped`.
pub fn summary(results: &[CaseResult]) -> (usize, usize, usize) {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    (
        count(|o| matches!(o, Outcome::Pass)),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::Skipped(_))),
    )
}
