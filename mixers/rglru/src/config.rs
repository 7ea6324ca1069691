//! RG-LRU constructor arguments.

use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `RGLRU(d_model, d_conv=4, expand=1, c=8.0,
/// a_init_range=(0.9, 0.999), conv_bias=True, bias=False, use_fast_path=True, layer_idx=None)`.
///
/// There is no `d_state`: the recurrence has one state per channel, and lrnnx
/// rejects the keyword (a model-wide `d_state` is not passed to this mixer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RgLruConfig {
    /// Width of the depthwise causal convolution `W`.
    pub d_conv: usize,
    /// Inner width factor: `d_inner = int(expand * d_model)`.
    pub expand: f64,
    /// The constant `c` of `a_bar = a^(c r)`.
    pub c: f64,
    /// `(lo, hi)`: `a_log` starts at `log(U[lo, hi))`.
    pub a_init_range: [f64; 2],
    /// Whether the convolution has a bias.
    pub conv_bias: bool,
    /// Whether `gate_proj`, `in_proj` and `out_proj` have biases.
    pub bias: bool,
    /// lrnnx's switch to its fused CUDA path; no effect here.
    pub use_fast_path: bool,
    /// lrnnx's bookkeeping index; no effect here.
    pub layer_idx: Option<i64>,
}

impl Default for RgLruConfig {
    fn default() -> Self {
        Self {
            d_conv: 4,
            expand: 1.0,
            c: 8.0,
            a_init_range: [0.9, 0.999],
            conv_bias: true,
            bias: false,
            use_fast_path: true,
            layer_idx: None,
        }
    }
}

impl RgLruConfig {
    /// `d_inner = int(expand * d_model)`, as lrnnx truncates it.
    pub fn d_inner(&self, d_model: usize) -> usize {
        (self.expand * d_model as f64) as usize
    }

    /// Checks the values lrnnx's layer needs to be well defined.
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.d_conv == 0 {
            return Err("d_conv must be at least 1, found 0".into());
        }
        if !(self.expand.is_finite() && self.expand > 0.0) || self.d_inner(d_model) == 0 {
            return Err(format!(
                "expand must make d_inner = int(expand * d_model) positive, found expand = {} (d_model = {d_model})",
                self.expand
            ));
        }
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(format!("c must be positive and finite, found {}", self.c));
        }
        let [lo, hi] = self.a_init_range;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(format!(
                "a_init_range must satisfy 0 < lo <= hi, found ({lo}, {hi})"
            ));
        }
        Ok(())
    }
}
