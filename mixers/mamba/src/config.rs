//! Mamba constructor arguments (lrnnx's `Mamba(d_model, d_state=16, ...)`).

use lrnnx_framework::Discretization;
use serde::{Deserialize, Serialize};

/// `dt_rank`: `"auto"` (`ceil(d_model / 16)`) or a positive integer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DtRank {
    /// A fixed rank.
    Fixed(usize),
    /// A name; only `"auto"` is valid.
    Named(String),
}

impl Default for DtRank {
    fn default() -> Self {
        DtRank::Named("auto".into())
    }
}

/// Arguments of lrnnx's `Mamba(d_model, d_state=16, d_conv=4, expand=2,
/// dt_rank="auto", dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
/// dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
/// layer_idx=None, device=None, dtype=None, discretization="mamba")`.
///
/// `use_fast_path`, `layer_idx`, `device` and `dtype` only pick a Python code
/// path or placement; they are accepted, kept (so a saved config round-trips)
/// and otherwise ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MambaConfig {
    /// State size `N` per channel.
    pub d_state: usize,
    /// Width of the causal depthwise convolution.
    pub d_conv: usize,
    /// `d_inner = int(expand * d_model)`.
    pub expand: f64,
    /// Rank of the step projection.
    pub dt_rank: DtRank,
    /// Smallest initial step.
    pub dt_min: f64,
    /// Largest initial step.
    pub dt_max: f64,
    /// `"random"` or `"constant"` init of `dt_proj.weight`.
    pub dt_init: String,
    /// Scale of the `dt_proj.weight` init.
    pub dt_scale: f64,
    /// Floor of the initial steps.
    pub dt_init_floor: f64,
    /// Bias in the depthwise convolution.
    pub conv_bias: bool,
    /// Bias in `in_proj` and `out_proj`.
    pub bias: bool,
    /// Python fast-path switch (ignored).
    pub use_fast_path: bool,
    /// Python bookkeeping (ignored).
    pub layer_idx: Option<usize>,
    /// PyTorch placement (ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<serde_json::Value>,
    /// PyTorch dtype (ignored; the parameter store decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<serde_json::Value>,
    /// `mamba` (default), `zoh`, `bilinear` or `dirac`.
    pub discretization: Discretization,
}

impl Default for MambaConfig {
    /// lrnnx's defaults (`d_state = 16`; built by name, the model's `d_state`).
    fn default() -> Self {
        Self::new(16)
    }
}

impl MambaConfig {
    /// The default config for a state size.
    pub fn new(d_state: usize) -> Self {
        Self {
            d_state,
            d_conv: 4,
            expand: 2.0,
            dt_rank: DtRank::default(),
            dt_min: 0.001,
            dt_max: 0.1,
            dt_init: "random".into(),
            dt_scale: 1.0,
            dt_init_floor: 1e-4,
            conv_bias: true,
            bias: false,
            use_fast_path: true,
            layer_idx: None,
            device: None,
            dtype: None,
            discretization: Discretization::Mamba,
        }
    }

    /// `d_inner = int(expand * d_model)`.
    pub fn d_inner(&self, d_model: usize) -> usize {
        (self.expand * d_model as f64) as usize
    }

    /// The step-projection rank: `ceil(d_model / 16)` for `"auto"`.
    pub fn rank(&self, d_model: usize) -> usize {
        match &self.dt_rank {
            DtRank::Fixed(r) => *r,
            DtRank::Named(_) => d_model.div_ceil(16),
        }
    }

    /// Checks the values lrnnx's constructor and scans accept.
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.d_state == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if self.d_conv == 0 {
            return Err("d_conv must be positive, found 0".into());
        }
        if !(self.expand.is_finite() && self.expand > 0.0) || self.d_inner(d_model) == 0 {
            return Err(format!(
                "expand must make d_inner = int(expand * d_model) positive, found expand = {} with d_model = {d_model}",
                self.expand
            ));
        }
        match &self.dt_rank {
            DtRank::Fixed(0) => return Err("dt_rank must be \"auto\" or positive, found 0".into()),
            DtRank::Named(s) if s != "auto" => {
                return Err(format!(
                    "dt_rank must be \"auto\" or a positive integer, found \"{s}\""
                ))
            }
            _ => {}
        }
        if self.rank(d_model) == 0 {
            return Err("dt_rank resolved to 0 (d_model is 0)".into());
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max && self.dt_max.is_finite()) {
            return Err(format!(
                "dt_min and dt_max must satisfy 0 < dt_min <= dt_max, found dt_min = {}, dt_max = {}",
                self.dt_min, self.dt_max
            ));
        }
        if self.dt_init != "random" && self.dt_init != "constant" {
            return Err(format!(
                "dt_init must be \"random\" or \"constant\", found \"{}\"",
                self.dt_init
            ));
        }
        if !self.dt_scale.is_finite() {
            return Err(format!("dt_scale must be finite, found {}", self.dt_scale));
        }
        if !(self.dt_init_floor > 0.0 && self.dt_init_floor.is_finite()) {
            return Err(format!(
                "dt_init_floor must be positive, found {}",
                self.dt_init_floor
            ));
        }
        match self.discretization {
            Discretization::Mamba
            | Discretization::Zoh
            | Discretization::Bilinear
            | Discretization::Dirac => Ok(()),
            other => Err(format!(
                "discretization must be one of mamba, zoh, bilinear, dirac, found {}",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{other:?}"))
            )),
        }
    }
}
