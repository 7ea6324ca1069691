//! The training loop as a library: [`Trainer`] steps AdamW over a model on
//! token batches with warm-up + cosine, gradient accumulation, gradient
//! clipping and validation, and saves and resumes crash-consistent
//! checkpoint sets. [`Trainer::fit`] runs it all, reporting to callbacks.
//!
//! ```
//! # fn main() -> lrnnx_framework::Result<()> {
//! use candle_core::Device;
//! use lrnnx_framework::train::{TokenBatches, TrainConfig, Trainer};
//! let ids: Vec<u32> = (0..4000).map(|i| (i * 7 % 13) as u32).collect();
//! let cfg = TrainConfig { steps: 3, batch_size: 2, seq_len: 8, ..TrainConfig::default() };
//! let data = TokenBatches::new(ids, cfg.seq_len, cfg.val_fraction, cfg.seed)?;
//! # let _ = data;
//! // With a model: let mut t = Trainer::new(model, data, cfg)?; t.fit(&mut [])?;
//! // (or step by step: while !t.done() { t.step()?; })
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    clip_grad_norm, cross_entropy, verify_checkpoint, AdamW, AdamWConfig, CheckpointWriter, SaveTo,
    TokenBatches, WarmupCosine,
};
use crate::{Error, LRNNLMHeadModel, LmForwardOpts, Result};

/// The trainer's own file in a checkpoint set.
pub const TRAINER_FILE: &str = "trainer.json";
/// The optimizer moments in a checkpoint set.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Most optimizer steps a run may ask for.
pub const MAX_STEPS: usize = 1_000_000_000;
/// Most tokens one step may process (`batch_size * seq_len`).
pub const MAX_TOKENS_PER_STEP: usize = 1 << 22;
/// Most logits one step may hold (`batch_size * seq_len * vocab`): 16 GiB of f32.
pub const MAX_LOGITS_PER_STEP: usize = 1 << 32;
/// Most micro-batches one optimizer step may accumulate.
pub const MAX_GRAD_ACCUM_STEPS: usize = 1 << 12;

fn one() -> usize {
    1
}

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps in all.
    pub steps: usize,
    /// Sequences per micro-batch (a step trains on `grad_accum_steps` of them).
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay (matrices only).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// Validate every this many steps (and at the end).
    pub eval_every: usize,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Save every this many steps (and at the end).
    pub save_every: usize,
    /// Fraction of the corpus held out for validation.
    pub val_fraction: f64,
    /// Seed of initialisation and batch sampling.
    pub seed: u64,
    /// Micro-batches whose gradients one optimizer step sums (each loss
    /// weighted by its share of the step's tokens, `1 / grad_accum_steps`):
    /// the step equals one over their concatenation, in the memory of one.
    #[serde(default = "one")]
    pub grad_accum_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 400,
            batch_size: 16,
            seq_len: 64,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 40,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            save_every: 200,
            val_fraction: 0.05,
            seed: 0,
            grad_accum_steps: 1,
        }
    }
}

fn bad(msg: String) -> Error {
    Error::Config(msg)
}

impl TrainConfig {
    /// Refuses values that would panic, hang, exhaust memory or train
    /// nonsense, naming the value and what is accepted.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        for (what, v, max) in [
            ("steps", self.steps, MAX_STEPS),
            ("batch_size", self.batch_size, MAX_TOKENS_PER_STEP),
            ("seq_len", self.seq_len, MAX_TOKENS_PER_STEP),
            ("eval_every", self.eval_every, usize::MAX),
            ("eval_batches", self.eval_batches, 1 << 20),
            ("save_every", self.save_every, usize::MAX),
            (
                "grad_accum_steps",
                self.grad_accum_steps,
                MAX_GRAD_ACCUM_STEPS,
            ),
        ] {
            if v == 0 || v > max {
                return Err(bad(format!(
                    "{what} must be between 1 and {max}, found {v}"
                )));
            }
        }
        let tokens = self.batch_size.checked_mul(self.seq_len);
        match tokens {
            Some(t) if t <= MAX_TOKENS_PER_STEP => {
                let logits = t.saturating_mul(vocab);
                if logits > MAX_LOGITS_PER_STEP {
                    return Err(bad(format!(
                        "batch_size * seq_len * vocab = {t} * {vocab} logits per step, more than {MAX_LOGITS_PER_STEP}"
                    )));
                }
            }
            _ => {
                return Err(bad(format!(
                "batch_size * seq_len = {} * {} tokens per step, more than {MAX_TOKENS_PER_STEP}",
                self.batch_size, self.seq_len
            )))
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(format!(
                "lr must be positive and finite, found {}",
                self.lr
            )));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(bad(format!(
                "min_lr must be finite and in [0, lr = {}], found {}",
                self.lr, self.min_lr
            )));
        }
        for (what, v) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(format!("{what} must be finite and >= 0, found {v}")));
            }
        }
        if !(self.val_fraction > 0.0 && self.val_fraction <= 0.5) {
            return Err(bad(format!(
                "val_fraction must be in (0, 0.5], found {}",
                self.val_fraction
            )));
        }
        Ok(())
    }
}

/// What `trainer.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerRecord {
    /// Optimizer steps done.
    pub step: usize,
    /// The run's hyper-parameters.
    pub config: TrainConfig,
    /// Last validation loss (nats per token; NaN before the first).
    pub val_loss: Option<f64>,
    /// Id of the checkpoint set this record belongs to.
    pub checkpoint_id: String,
    /// Whatever else the caller recorded (corpus path, tokenizer, ...).
    #[serde(default)]
    pub info: Map<String, Value>,
}

/// A model being trained.
pub struct Trainer {
    model: LRNNLMHeadModel,
    /// The model's parameters, taken once (clipping reads them every step).
    vars: BTreeMap<String, Var>,
    opt: AdamW,
    data: TokenBatches,
    val_batches: Vec<(Tensor, Tensor)>,
    config: TrainConfig,
    schedule: WarmupCosine,
    last_val: Option<f64>,
    /// Where [`Trainer::fit`] saves, if anywhere.
    pub(super) save_to: Option<SaveTo>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.opt.step)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Starts training `model` from step 0.
    pub fn new(model: LRNNLMHeadModel, data: TokenBatches, config: TrainConfig) -> Result<Self> {
        Self::at(model, data, config, None)
    }

    fn at(
        model: LRNNLMHeadModel,
        mut data: TokenBatches,
        config: TrainConfig,
        resumed: Option<(usize, HashMap<String, Tensor>)>,
    ) -> Result<Self> {
        config.validate(model.config().padded_vocab_size())?;
        let dev = model.device().clone();
        let vars = model.store().vars();
        let mut opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            },
        )?;
        if let Some((step, state)) = resumed {
            opt.load_state(&state, step)?;
            data.skip_to(step as u64 * config.grad_accum_steps as u64);
        }
        let val_batches = data.val_batches(config.batch_size, config.eval_batches, &dev)?;
        let schedule = WarmupCosine {
            max_lr: config.lr,
            min_lr: config.min_lr,
            warmup: config.warmup,
            total: config.steps,
        };
        Ok(Self {
            model,
            vars,
            opt,
            data,
            val_batches,
            config,
            schedule,
            last_val: None,
            save_to: None,
        })
    }

    /// Continues the checkpoint set in `dir` (as [`save`](Self::save) wrote
    /// it): its parts must belong together, its step must not exceed
    /// `config.steps`.
    pub fn resume(
        dir: &Path,
        data: TokenBatches,
        config: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let manifest = verify_checkpoint(dir)?;
        let rpath = dir.join(TRAINER_FILE);
        let record: TrainerRecord = serde_json::from_value(crate::io::read_json(&rpath)?)
            .map_err(|e| Error::file(&rpath, format!("not a trainer record: {e}")))?;
        if record.checkpoint_id != manifest.id || record.step as u64 != manifest.step {
            return Err(Error::file(
                &rpath,
                format!(
                    "belongs to checkpoint {} at step {}, but the set is {} at step {}",
                    record.checkpoint_id, record.step, manifest.id, manifest.step
                ),
            ));
        }
        if record.step > config.steps {
            return Err(bad(format!(
                "the checkpoint is at step {}, past the run's steps = {}; ask for more steps",
                record.step, config.steps
            )));
        }
        let model = LRNNLMHeadModel::from_pretrained(dir, None, device)?;
        let opath = dir.join(OPTIMIZER_FILE);
        let state = crate::io::read_safetensors_file(&opath, device)?;
        if state.metadata.get("checkpoint_id") != Some(&manifest.id) {
            return Err(Error::file(
                &opath,
                "does not belong to this checkpoint set",
            ));
        }
        let mut t = Self::at(model, data, config, Some((record.step, state.tensors)))?;
        t.last_val = record.val_loss;
        Ok(t)
    }

    /// The trainer with its model computing in `dtype` (bf16 for mixed
    /// precision: the parameters, gradients and optimizer moments stay in the
    /// store's dtype, f32 master weights).
    pub fn with_compute_dtype(mut self, dtype: candle_core::DType) -> Result<Self> {
        self.model = self.model.with_compute_dtype(dtype)?;
        Ok(self)
    }

    /// The trainer with [`fit`](Self::fit) saving checkpoint sets to `to`
    /// (every `save_every` steps and after the last).
    pub fn with_checkpoints(mut self, to: SaveTo) -> Self {
        self.save_to = Some(to);
        self
    }

    /// The model.
    pub fn model(&self) -> &LRNNLMHeadModel {
        &self.model
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> usize {
        self.opt.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Whether every step of the run is done.
    pub fn done(&self) -> bool {
        self.opt.step >= self.config.steps
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.schedule.lr(self.opt.step)
    }

    /// Tokens one step trains on (all its micro-batches).
    pub fn tokens_per_step(&self) -> usize {
        self.config.batch_size * self.config.seq_len * self.config.grad_accum_steps
    }

    /// The last validation loss, if any.
    pub fn last_val_loss(&self) -> Option<f64> {
        self.last_val
    }

    /// The training corpus's unigram entropy (nats per token).
    pub fn unigram_entropy(&self) -> f64 {
        self.data.unigram_entropy()
    }

    /// One optimizer step over the next `grad_accum_steps` training
    /// batches (see [`step_on`](Self::step_on)); returns its training loss.
    /// A non-finite loss is an error (the weights are left as they were
    /// before the step).
    pub fn step(&mut self) -> Result<f64> {
        let dev = self.model.device().clone();
        let batches = (0..self.config.grad_accum_steps)
            .map(|_| self.data.train_batch(self.config.batch_size, &dev))
            .collect::<Result<Vec<_>>>()?;
        self.step_on(&batches)
    }

    /// One optimizer step on the given micro-batches of `(inputs, targets)`
    /// `(B, L)` token ids: their gradients summed (see
    /// [`gradients`](Self::gradients)), clipped, one AdamW update at the
    /// schedule's learning rate. Returns the step's loss.
    pub fn step_on(&mut self, micro_batches: &[(Tensor, Tensor)]) -> Result<f64> {
        let (loss, mut grads) = self.gradients(micro_batches)?;
        if self.config.grad_clip > 0.0 {
            clip_grad_norm(&mut grads, &self.vars, self.config.grad_clip)?;
        }
        self.opt.config.lr = self.schedule.lr(self.opt.step);
        self.opt.step(&grads)?;
        Ok(loss)
    }

    /// The mean training loss over `micro_batches` (every target token
    /// weighted alike) and its gradient with respect to each parameter: the
    /// micro-batches' gradients, each of its loss weighted by its share of
    /// the tokens (`1/n` for `n` equal micro-batches), summed one
    /// micro-batch at a time, so that only one micro-batch's activations are
    /// alive at once. Equals the gradient of one batch concatenating them.
    pub fn gradients(&self, micro_batches: &[(Tensor, Tensor)]) -> Result<(f64, GradStore)> {
        if micro_batches.is_empty() {
            return Err(bad(
                "a training step needs at least one micro-batch, found none".into(),
            ));
        }
        let mut tokens = Vec::with_capacity(micro_batches.len());
        for (i, (x, y)) in micro_batches.iter().enumerate() {
            if x.dims().len() != 2 || x.dims() != y.dims() {
                return Err(Error::shape(
                    format!("micro-batch {i}"),
                    "inputs and targets of one shape (batch, seqlen)",
                    (x.dims(), y.dims()),
                ));
            }
            tokens.push(x.elem_count());
        }
        let total: usize = tokens.iter().sum();
        if total == 0 {
            return Err(bad("the micro-batches hold no tokens".into()));
        }
        let mut acc = GradStore::default();
        let mut mean = 0.0;
        for ((x, y), n) in micro_batches.iter().zip(tokens) {
            let loss = cross_entropy(&self.model.forward(x, &LmForwardOpts::default())?, y)?;
            let l = scalar(&loss)?;
            if !l.is_finite() {
                return Err(bad(format!(
                    "training diverged at step {}: loss {l}; lower the learning rate",
                    self.opt.step
                )));
            }
            let share = n as f64 / total as f64;
            mean += l * share;
            let loss = if micro_batches.len() == 1 {
                loss
            } else {
                (loss * share)?
            };
            let mut grads = loss.backward()?;
            for var in self.vars.values() {
                let Some(g) = grads.remove(var.as_tensor()) else {
                    continue;
                };
                let g = match acc.remove(var.as_tensor()) {
                    Some(a) => (a + g)?.detach(),
                    None => g,
                };
                acc.insert(var.as_tensor(), g);
            }
        }
        Ok((mean, acc))
    }

    /// Mean validation loss (nats per token).
    pub fn evaluate(&mut self) -> Result<f64> {
        let mut total = 0.0;
        for (x, y) in &self.val_batches {
            let logits = self.model.forward(x, &LmForwardOpts::default())?;
            total += scalar(&cross_entropy(&logits, y)?)?;
        }
        let v = total / self.val_batches.len().max(1) as f64;
        self.last_val = Some(v);
        Ok(v)
    }

    /// Whether the step just done is one to validate after.
    pub fn due_for_eval(&self) -> bool {
        self.opt.step.is_multiple_of(self.config.eval_every) || self.done()
    }

    /// Whether the step just done is one to save after.
    pub fn due_for_save(&self) -> bool {
        self.opt.step.is_multiple_of(self.config.save_every) || self.done()
    }

    /// Saves the model (Hugging Face layout), the optimizer moments and
    /// `trainer.json`, plus `extra` files (e.g. `tokenizer.json`), as one
    /// checkpoint set replacing `dir` atomically.
    pub fn save(
        &self,
        dir: &Path,
        extra: &[(&str, &[u8])],
        info: Map<String, Value>,
    ) -> Result<()> {
        let w = CheckpointWriter::begin(dir)?;
        self.model.save_pretrained(w.dir())?;
        let meta = HashMap::from([("checkpoint_id".to_string(), w.id().to_string())]);
        crate::io::write_safetensors(&w.dir().join(OPTIMIZER_FILE), &self.opt.state(), Some(meta))?;
        for (name, bytes) in extra {
            if name.contains('/') || *name == TRAINER_FILE || *name == OPTIMIZER_FILE {
                return Err(bad(format!("`{name}` cannot be an extra checkpoint file")));
            }
            crate::io::write_atomic(&w.dir().join(name), bytes)?;
        }
        let record = TrainerRecord {
            step: self.opt.step,
            config: self.config.clone(),
            val_loss: self.last_val,
            checkpoint_id: w.id().to_string(),
            info,
        };
        let value = serde_json::to_value(&record).map_err(|e| bad(e.to_string()))?;
        crate::io::write_json(&w.dir().join(TRAINER_FILE), &value)?;
        w.commit(self.opt.step as u64)?;
        Ok(())
    }
}

/// A scalar loss (f32, or f64 for f64 models) as f64.
fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
