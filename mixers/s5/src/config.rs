//! S5 constructor arguments, for the LTI class and the LTV (event) class.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// How lrnnx's LTI `S5` discretizes (`lrnnx.core.discretization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LtiDiscretization {
    /// `A_bar = exp(dt A)`, `gamma = (exp(dt A) - 1) / A`.
    Zoh,
    /// lrnnx's `core.bilinear`, sign-flipped against Tustin:
    /// `A_bar = (1 - dt A/2) / (1 + dt A/2)`, `gamma = dt / (1 + dt A/2)`.
    Bilinear,
    /// `A_bar = exp(dt A)`, `gamma = 1`.
    Dirac,
    /// `A_bar = A`, `gamma = 1`.
    NoDiscretization,
}

/// How lrnnx's LTV `S5` discretizes (its scan: textbook forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LtvDiscretization {
    /// `A_bar = exp(dtA A)`, `gamma = (exp(dt A) - 1) / A`.
    #[default]
    Zoh,
    /// Tustin: `A_bar = (1 + dtA A/2) / (1 - dtA A/2)`, `gamma = dt / (1 - dt A/2)`.
    Bilinear,
    /// `A_bar = exp(dtA A)`, `gamma = 1`.
    Dirac,
}

/// How the LTI forward pass runs: `auto` picks per call (on the CPU always
/// the scan: see the crate docs, the convolution never wins there); `scan`
/// is the diagonal complex scan over the state, `O(B L N)`; `conv` the causal
/// convolution of the state inputs with `A_bar^l` through FFTs, `O(B L N log L)`.
pub use lrnnx_framework::layers::diagonal::ForwardMode;

/// Arguments of lrnnx's LTI `S5(d_model, d_state, discretization, conj_sym=False)`
/// (`lrnnx/models/lti/s5.py`), plus our `forward_mode`.
///
/// `discretization` has no default in lrnnx; built by name, it is required here too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S5LtiConfig {
    /// Number of complex state channels `N`.
    pub d_state: usize,
    /// zoh, bilinear (lrnnx's sign-flipped one), dirac or no_discretization.
    pub discretization: LtiDiscretization,
    /// Conjugate-symmetric state; lrnnx raises NotImplementedError for `true`, so do we.
    pub conj_sym: bool,
    /// Scan or convolution (ours; not an lrnnx argument).
    pub forward_mode: ForwardMode,
}

/// Arguments of lrnnx's LTV `S5(d_model, d_state, discretization="zoh", conj_sym=False,
/// dt_min=0.001, dt_max=0.1, step_rescale=1.0, use_fast_path=True)` (`lrnnx/models/ltv/s5.py`).
///
/// `use_fast_path` only picks lrnnx's CUDA/Triton path (the math is the
/// same); it is kept so that a saved config round-trips, and because its
/// presence is what makes the `"S5"` builder pick this class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S5LtvConfig {
    /// Number of complex state channels `P`.
    pub d_state: usize,
    /// zoh, bilinear (textbook Tustin) or dirac.
    pub discretization: LtvDiscretization,
    /// Keep one of each conjugate pair of eigenvalues and read out `2 Re(C h)`.
    pub conj_sym: bool,
    /// Smallest `dt` at init.
    pub dt_min: f64,
    /// Largest `dt` at init.
    pub dt_max: f64,
    /// Multiplies `exp(log_dt)`.
    pub step_rescale: f64,
    /// lrnnx's fast-path switch; no effect here.
    pub use_fast_path: bool,
}

/// The config of a mixer built under the name `"S5"`: either class.
///
/// It serializes as the inner config (tagged `"type": "S5"`). Reading it
/// back applies the builder's rule: a `use_fast_path` key means the LTV class.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum S5Config {
    /// `lrnnx.models.lti.S5`.
    Lti(S5LtiConfig),
    /// `lrnnx.models.ltv.S5`.
    Ltv(S5LtvConfig),
}

impl<'de> Deserialize<'de> for S5Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let ltv = v.get("use_fast_path").is_some();
        let r = if ltv {
            serde_json::from_value(v).map(S5Config::Ltv)
        } else {
            serde_json::from_value(v).map(S5Config::Lti)
        };
        r.map_err(serde::de::Error::custom)
    }
}

#[typetag::serde(name = "S5")]
impl lrnnx_framework::MixerConfig for S5Config {}

impl Default for S5LtiConfig {
    /// `discretization` has no default in lrnnx (built by name it is
    /// required); `zoh` here. `d_state = 64` (built by name, the model's).
    fn default() -> Self {
        Self {
            d_state: 64,
            discretization: LtiDiscretization::Zoh,
            conj_sym: false,
            forward_mode: ForwardMode::Auto,
        }
    }
}

impl S5LtiConfig {
    /// Checks what lrnnx would refuse.
    pub fn validate(&self) -> Result<(), String> {
        if self.d_state == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if self.conj_sym {
            return Err(
                "conj_sym=true is not implemented for the LTI S5 (lrnnx raises NotImplementedError too); \
                 use conj_sym=false, or the LTV class (S5LTV) which supports it"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for S5LtvConfig {
    /// lrnnx's defaults, with `d_state = 64` (built by name, the model's).
    fn default() -> Self {
        Self {
            d_state: 64,
            discretization: LtvDiscretization::Zoh,
            conj_sym: false,
            dt_min: 0.001,
            dt_max: 0.1,
            step_rescale: 1.0,
            use_fast_path: true,
        }
    }
}

impl S5LtvConfig {
    /// Checks the ranges lrnnx's init needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.d_state == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max && self.dt_max.is_finite()) {
            return Err(format!(
                "dt_min and dt_max must satisfy 0 < dt_min <= dt_max < inf, found dt_min = {}, dt_max = {}",
                self.dt_min, self.dt_max
            ));
        }
        if !(self.step_rescale > 0.0 && self.step_rescale.is_finite()) {
            return Err(format!(
                "step_rescale must be positive and finite, found {}",
                self.step_rescale
            ));
        }
        Ok(())
    }
}
