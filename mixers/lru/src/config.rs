//! LRU constructor arguments.

use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `LRU(d_model, d_state, r_min=0, r_max=1, max_phase=2*pi)`.
///
/// `r_min`/`r_max` bound the modulus of the eigenvalues at init (sampled
/// uniformly on the ring between them); `max_phase` bounds their phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LruConfig {
    /// Number of complex state channels `N` (built by name, the model's
    /// `d_state` unless the kwargs give one).
    pub d_state: usize,
    /// Smallest eigenvalue modulus at init.
    pub r_min: f64,
    /// Largest eigenvalue modulus at init.
    pub r_max: f64,
    /// Largest eigenvalue phase at init.
    pub max_phase: f64,
}

impl Default for LruConfig {
    fn default() -> Self {
        Self {
            d_state: 64,
            r_min: 0.0,
            r_max: 1.0,
            max_phase: std::f64::consts::TAU,
        }
    }
}

impl LruConfig {
    /// Checks the ranges lrnnx's init needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.d_state == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if !(0.0 <= self.r_min && self.r_min < self.r_max && self.r_max <= 1.0) {
            return Err(format!(
                "r_min and r_max must satisfy 0 <= r_min < r_max <= 1, found r_min = {}, r_max = {}",
                self.r_min, self.r_max
            ));
        }
        if !(self.max_phase > 0.0 && self.max_phase.is_finite()) {
            return Err(format!(
                "max_phase must be positive, found {}",
                self.max_phase
            ));
        }
        Ok(())
    }
}
