//! Hooks into [`Trainer::fit`](super::Trainer::fit): what a progress bar, a
//! logger or a metrics sink sees of a run.

use std::path::Path;

/// What one optimizer step reports to [`TrainerCallback::on_step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Optimizer steps done, this one included.
    pub step: usize,
    /// This step's training loss (nats per token, mean over its micro-batches).
    pub loss: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Training tokens per second since `fit` began.
    pub tokens_per_s: f64,
}

/// Called by [`Trainer::fit`](super::Trainer::fit) as the run goes on. Every
/// method does nothing by default; implement the ones you need.
///
/// ```
/// use lrnnx_framework::train::{StepReport, TrainerCallback};
/// struct Losses(Vec<f64>);
/// impl TrainerCallback for Losses {
///     fn on_step(&mut self, r: &StepReport) {
///         self.0.push(r.loss);
///     }
/// }
/// ```
pub trait TrainerCallback {
    /// After every optimizer step.
    fn on_step(&mut self, _report: &StepReport) {}
    /// After a validation at `step` (optimizer steps done), with its mean loss.
    fn on_eval(&mut self, _step: usize, _val_loss: f64) {}
    /// After the checkpoint set of `step` was committed to `dir`.
    fn on_save(&mut self, _step: usize, _dir: &Path) {}
}

/// A callback that hands every [`StepReport`] to a closure.
///
/// ```
/// use lrnnx_framework::train::{OnStep, StepReport, TrainerCallback};
/// let mut seen = 0;
/// let mut cb = OnStep(|r: &StepReport| seen = r.step);
/// cb.on_step(&StepReport { step: 3, loss: 1.0, lr: 1e-3, tokens_per_s: 0.0 });
/// drop(cb);
/// assert_eq!(seen, 3);
/// ```
pub struct OnStep<F: FnMut(&StepReport)>(pub F);

impl<F: FnMut(&StepReport)> TrainerCallback for OnStep<F> {
    fn on_step(&mut self, report: &StepReport) {
        (self.0)(report)
    }
}

impl<F: FnMut(&StepReport)> std::fmt::Debug for OnStep<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnStep(..)")
    }
}
