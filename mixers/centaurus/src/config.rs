//! Centaurus constructor arguments.

use serde::{Deserialize, Serialize};

/// The names lrnnx's `DISCRETIZE_FNS` holds; `discretization` must be one of them.
pub const DISCRETIZATIONS: &[&str] = &["zoh", "bilinear", "dirac", "async", "no_discretization"];

/// How the input channels reach the states and the states reach the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Bottleneck: dense `B (N, H)` and `C (H, N)`, `M` E-mixed sub-states per state.
    #[serde(rename = "neck")]
    Neck,
    /// Point-wise: `N·M` independent SISO lanes, dense `B (N·M, H)`, `C (H, N·M)`, no `E`.
    #[serde(rename = "pw", alias = "pointwise", alias = "s5")]
    Pw,
    /// Depth-wise: one state per channel (`d_state == d_model`), `B (H)`, `C (H)`.
    #[serde(rename = "dws")]
    Dws,
    /// Full: one state per (output, input) channel pair (`d_state >= d_model²`), `B (N)`, `C (N)`.
    #[serde(rename = "full")]
    Full,
}

/// How [`crate::Centaurus`]'s `forward` runs (not an lrnnx argument; lrnnx
/// always convolves): `auto` scans short sequences (and off the CPU) and
/// convolves long ones; `scan` runs the complex diagonal scan over the `N·M`
/// sub-states; `conv` the causal convolution with the real state kernel (FFT
/// on the CPU, Toeplitz matmuls elsewhere, up to the portable convolution's length budget).
pub use lrnnx_framework::layers::diagonal::ForwardMode;

/// Arguments of lrnnx's `Centaurus(d_model, d_state, sub_state_dim, discretization="zoh", mode="neck")`,
/// plus `forward_mode`, which picks our algorithm and changes no result.
///
/// `discretization` is checked against lrnnx's names and otherwise unused, as
/// in lrnnx: Centaurus always discretizes with `exp(δA)` on the state and the
/// Euler step `δB` on the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CentaurusConfig {
    /// Number of states `N`.
    pub d_state: usize,
    /// Complex sub-states `M` per state (required, as in lrnnx).
    pub sub_state_dim: usize,
    /// One of lrnnx's discretization names; accepted and unused.
    pub discretization: String,
    /// `neck` (default), `pw` (also `pointwise`, `s5`), `dws` or `full`.
    pub mode: Mode,
    /// `auto` (default), `scan` or `conv`.
    pub forward_mode: ForwardMode,
}

impl Default for CentaurusConfig {
    /// lrnnx's defaults; `sub_state_dim` has none there (it is required when
    /// built by name), `1` here; `d_state = 64` (built by name, the model's).
    fn default() -> Self {
        Self {
            d_state: 64,
            sub_state_dim: 1,
            discretization: "zoh".into(),
            mode: Mode::Neck,
            forward_mode: ForwardMode::Auto,
        }
    }
}

impl CentaurusConfig {
    /// Checks the sizes every mode needs against `d_model`.
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        let (n, h) = (self.d_state, d_model);
        if n == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if self.sub_state_dim == 0 {
            return Err("sub_state_dim must be positive, found 0".into());
        }
        if !DISCRETIZATIONS.contains(&self.discretization.as_str()) {
            return Err(format!(
                "unknown discretization `{}`; expected one of {}",
                self.discretization,
                DISCRETIZATIONS.join(", ")
            ));
        }
        match self.mode {
            Mode::Dws if n != h => Err(format!(
                "mode `dws` needs d_state == d_model (one state per channel); found d_state = {n}, d_model = {h}"
            )),
            Mode::Full if n < h * h => Err(format!(
                "mode `full` needs d_state >= d_model² = {} (one state per (output, input) channel pair); found d_state = {n}",
                h * h
            )),
            _ => Ok(()),
        }
    }
}
