//! What `lrnnx train` shows while it runs: an indicatif progress bar and
//! `tracing` logs, driven as a [`TrainerCallback`] of
//! [`Trainer::fit`](lrnnx::train::Trainer::fit).

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use lrnnx::train::{StepReport, TrainerCallback};

/// The progress bar of a run and the smoothed training loss it shows.
pub struct Progress {
    bar: ProgressBar,
    /// Exponential moving average of the training loss.
    ema: Option<f64>,
    last: Option<StepReport>,
    val: Option<f64>,
}

impl Progress {
    /// A bar over `steps` steps, at `start_step` (a resumed run), hidden when `quiet`.
    pub fn new(
        steps: usize,
        start_step: usize,
        val: Option<f64>,
        quiet: bool,
    ) -> anyhow::Result<Self> {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(steps as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        bar.set_position(start_step as u64);
        Ok(Self {
            bar,
            ema: None,
            last: None,
            val,
        })
    }

    fn render(&self) {
        if let Some(r) = &self.last {
            self.bar.set_message(format!(
                "loss {:.3} val {:.3} lr {:.1e} {:.0} tok/s",
                self.ema.unwrap_or(r.loss),
                self.val.unwrap_or(f64::NAN),
                r.lr,
                r.tokens_per_s
            ));
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

impl TrainerCallback for Progress {
    fn on_step(&mut self, r: &StepReport) {
        self.ema = Some(self.ema.map_or(r.loss, |e| 0.95 * e + 0.05 * r.loss));
        self.last = Some(*r);
        self.render();
        self.bar.set_position(r.step as u64);
    }

    fn on_eval(&mut self, step: usize, val_loss: f64) {
        self.val = Some(val_loss);
        tracing::info!(
            step,
            train_loss = self.ema.unwrap_or(f64::NAN),
            val_loss,
            "validation"
        );
        self.render();
    }

    fn on_save(&mut self, step: usize, dir: &Path) {
        tracing::debug!(step, dir = %dir.display(), "checkpoint saved");
    }
}
