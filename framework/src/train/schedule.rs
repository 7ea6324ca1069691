//! Linear warm-up, then cosine decay to a floor.

/// `lr(step)`: linear from 0 to `max_lr` over `warmup` steps, then cosine
/// down to `min_lr` at `total` steps (and `min_lr` after).
///
/// ```
/// let s = lrnnx_framework::train::WarmupCosine { max_lr: 1e-3, min_lr: 1e-4, warmup: 10, total: 110 };
/// assert!((s.lr(5) - 5e-4).abs() < 1e-12);
/// assert!((s.lr(10) - 1e-3).abs() < 1e-12);
/// assert!((s.lr(110) - 1e-4).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub max_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl WarmupCosine {
    /// The learning rate at `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.max_lr * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.min_lr
            + 0.5 * (self.max_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
