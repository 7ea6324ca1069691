//! minGRU constructor arguments.

use serde::{Deserialize, Serialize};

/// Arguments of minGRU (as in the reference `minGRU(dim, expansion_factor=1., proj_out=None)`).
///
/// The inner width is `floor(d_model * expansion_factor)`; `proj_out`
/// (default: `expansion_factor != 1`) adds the output projection back to
/// `d_model`, which an inner width other than `d_model` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinGruConfig {
    /// Inner width over model width.
    pub expansion_factor: f64,
    /// Project the state back to `d_model` (filled in when built).
    pub proj_out: Option<bool>,
}

impl Default for MinGruConfig {
    fn default() -> Self {
        Self {
            expansion_factor: 1.0,
            proj_out: None,
        }
    }
}

impl MinGruConfig {
    /// `proj_out` with its default applied.
    pub fn proj_out(&self) -> bool {
        self.proj_out.unwrap_or(self.expansion_factor != 1.0)
    }

    /// Checks the values and returns the inner width for `d_model`.
    pub fn validate(&self, d_model: usize) -> Result<usize, String> {
        let e = self.expansion_factor;
        if !(e > 0.0 && e.is_finite()) {
            return Err(format!(
                "expansion_factor must be a positive number, found {e}"
            ));
        }
        let inner = (d_model as f64 * e) as usize;
        if inner == 0 {
            return Err(format!(
                "d_model * expansion_factor must be at least 1, found {d_model} * {e}"
            ));
        }
        if !self.proj_out() && inner != d_model {
            return Err(format!(
                "proj_out = false needs an inner width equal to d_model ({d_model}), found {inner} \
                 (expansion_factor {e}); set proj_out = true"
            ));
        }
        Ok(inner)
    }
}
