//! [`Trainer::fit`]: the whole run (steps, periodic validation, periodic
//! checkpoints), reported to [`TrainerCallback`]s.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Map, Value};

use super::{StepReport, Trainer, TrainerCallback};
use crate::Result;

/// Where and what [`Trainer::fit`] saves: one checkpoint set in `dir`
/// (replaced atomically at each save), with `extra_files` (e.g. the
/// `tokenizer.json` the run trains with) and `info` recorded in
/// `trainer.json`.
#[derive(Debug, Clone, Default)]
pub struct SaveTo {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Further files of the set, by file name.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// What else `trainer.json` records (corpus path, ...).
    pub info: Map<String, Value>,
}

impl SaveTo {
    /// Saves to `dir`, with no extra files or info.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }
}

/// What a finished [`Trainer::fit`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSummary {
    /// Optimizer steps this call ran (0 when the run was already done).
    pub steps_run: usize,
    /// The last step's training loss, if a step ran.
    pub last_loss: Option<f64>,
    /// The last validation loss (computed at the end if none was).
    pub val_loss: f64,
    /// Training tokens per second over the call.
    pub tokens_per_s: f64,
}

impl Trainer {
    /// Runs every remaining step: after each, the callbacks' `on_step`; every
    /// `eval_every` steps (and after the last) a validation and `on_eval`;
    /// every `save_every` steps (and after the last), when a
    /// [`with_checkpoints`](Self::with_checkpoints) target is set, a
    /// checkpoint set and `on_save`. An error (a diverged loss, a failed save)
    /// stops the run; what was saved before stays.
    pub fn fit(&mut self, callbacks: &mut [&mut dyn TrainerCallback]) -> Result<FitSummary> {
        let start_step = self.step_count();
        let started = Instant::now();
        let mut last_loss = None;
        while !self.done() {
            let lr = self.lr();
            let loss = self.step()?;
            last_loss = Some(loss);
            let step = self.step_count();
            let report = StepReport {
                step,
                loss,
                lr,
                tokens_per_s: throughput(step - start_step, self.tokens_per_step(), started),
            };
            for cb in callbacks.iter_mut() {
                cb.on_step(&report);
            }
            if self.due_for_eval() {
                let val = self.evaluate()?;
                for cb in callbacks.iter_mut() {
                    cb.on_eval(step, val);
                }
            }
            if self.due_for_save() {
                if let Some(to) = self.save_to.clone() {
                    let extra: Vec<(&str, &[u8])> = to
                        .extra_files
                        .iter()
                        .map(|(n, b)| (n.as_str(), b.as_slice()))
                        .collect();
                    self.save(&to.dir, &extra, to.info.clone())?;
                    for cb in callbacks.iter_mut() {
                        cb.on_save(step, &to.dir);
                    }
                }
            }
        }
        let val_loss = match self.last_val_loss() {
            Some(v) => v,
            None => self.evaluate()?,
        };
        let steps_run = self.step_count() - start_step;
        Ok(FitSummary {
            steps_run,
            last_loss,
            val_loss,
            tokens_per_s: throughput(steps_run, self.tokens_per_step(), started),
        })
    }
}

fn throughput(steps: usize, tokens_per_step: usize, since: Instant) -> f64 {
    (steps * tokens_per_step) as f64 / since.elapsed().as_secs_f64().max(1e-9)
}
