//! The constructor arguments lrnnx's `S4` and `S4D` share: the same ~30
//! kwargs with the same defaults, apart from `disc`, whose type says which of
//! the two layers they are for ([`SsmDisc`]).

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{GateStyle, SsmSpec, SsmWrapperOpts, Transform};

/// What differs between the arguments of the S4-family layers, carried by
/// the type of their `disc` argument: its default, the check of the layer's
/// own arguments, the `output_gate` rule and whether the SSM has `P`.
pub trait SsmDisc:
    Debug + Clone + PartialEq + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// Which `output_gate` rule applies.
    const GATE_STYLE: GateStyle;
    /// Whether the SSM has the low-rank term `P`.
    const WITH_P: bool;
    /// The default `disc`.
    fn default_disc() -> Self;
    /// The check of what only this layer constrains (S4: `rank`; S4D: `disc`).
    fn check(cfg: &SsmBlockConfig<Self>) -> Result<(), String>;
}

/// Arguments of lrnnx's `S4(d_model, ...)` and `S4D(d_model, ...)`, same
/// names and defaults, plus `forward_mode` (ours: `"auto"`, `"scan"` or
/// `"conv"`); `Disc` is the type of `disc`, which tells the two apart
/// ([`crate::S4Config`], [`crate::s4d::S4dConfig`]).
///
/// Accepted for compatibility and without effect at inference: `dropout`,
/// `tie_dropout`, `drop_kernel` (dropout is the identity in eval mode), `lr`,
/// `wd` (optimizer hints), `verbose`, `diagonalize_precision` (and S4's
/// `disc`: lrnnx's S4 filters it out, S4 is always bilinear).
/// One deliberate difference: `transposed` defaults to `false`, the only
/// layout supported, `(B, L, H)` (lrnnx's default `true` is wrong for its own LM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound(
        serialize = "Disc: Serialize",
        deserialize = "Disc: SsmDisc, SsmBlockConfig<Disc>: Default"
    )
)]
pub struct SsmBlockConfig<Disc> {
    /// State size `N`; `N/2` complex modes are kept.
    pub d_state: usize,
    /// Only `None` or 1 (a `Linear(H, H)` before the SSM).
    pub bottleneck: Option<usize>,
    /// Gate expansion factor: `input_gate`, `output_gate`.
    pub gate: Option<usize>,
    /// Any value gives an output `Linear + GELU`; `null` gives none.
    pub final_act: Option<String>,
    /// Deprecated alias of `final_act` (needs `final_act = null`).
    pub postact: Option<String>,
    /// Dropout probability (identity at inference).
    pub dropout: f64,
    /// Tie the dropout mask over the sequence.
    pub tie_dropout: bool,
    /// Must be `false`: inputs are `(B, L, H)`.
    pub transposed: bool,
    /// Longest kernel; longer inputs drop the taps past it (as lrnnx).
    pub l_max: Option<usize>,
    /// SSM output channels per feature.
    pub channels: usize,
    /// Smallest `dt` at init.
    pub dt_min: f64,
    /// Largest `dt` at init.
    pub dt_max: f64,
    /// One `dt` per feature (else per mode).
    pub dt_tie: bool,
    /// Transform from `inv_dt` to `dt`.
    pub dt_transform: String,
    /// `dt = T(sinh(inv_dt))`.
    pub dt_fast: bool,
    /// Rank of the low-rank term `P` (S4: only 1 is supported; S4D: an
    /// unused init factor).
    pub rank: usize,
    /// Copies of `A`, `B` (and S4's `P`) (default `d_model`).
    pub n_ssm: Option<usize>,
    /// Initialisation of `A`, `B` (and S4's `P`).
    pub init: String,
    /// Deterministic `inv_dt` and `C`.
    pub deterministic: bool,
    /// Transform of `-Re(A)`.
    pub real_transform: String,
    /// Transform of `-Im(A)`.
    pub imag_transform: String,
    /// Must be `false` (lrnnx's step fails with real parameters).
    pub is_real: bool,
    /// Learning-rate hint (unused).
    pub lr: Option<serde_json::Value>,
    /// Weight-decay hint (unused).
    pub wd: f64,
    /// Printing (unused).
    pub verbose: bool,
    /// Discretization: S4D's `"zoh"` or `"bilinear"`; S4's is accepted and ignored.
    pub disc: Disc,
    /// Flatten the channels as `(h c)` instead of `(c h)`.
    pub swap_channels: bool,
    /// Kernel dropout (identity at inference).
    pub drop_kernel: f64,
    /// Clamp of `Im(B)` in the NPLR init.
    #[serde(rename = "B_clip")]
    pub b_clip: Option<f64>,
    /// Init in double precision (always the case here).
    pub diagonalize_precision: bool,
    /// `"auto"` (by length), `"scan"` (recurrence) or `"conv"` (kernel + FFT convolution).
    pub forward_mode: String,
}

impl<Disc: SsmDisc> Default for SsmBlockConfig<Disc> {
    /// lrnnx's defaults, with `d_state = 64` (built by name, the model's).
    fn default() -> Self {
        Self {
            d_state: 64,
            bottleneck: None,
            gate: None,
            final_act: Some("glu".into()),
            postact: None,
            dropout: 0.0,
            tie_dropout: false,
            transposed: false,
            l_max: None,
            channels: 1,
            dt_min: 0.001,
            dt_max: 0.1,
            dt_tie: true,
            dt_transform: "exp".into(),
            dt_fast: false,
            rank: 1,
            n_ssm: None,
            init: "legs".into(),
            deterministic: false,
            real_transform: "exp".into(),
            imag_transform: "none".into(),
            is_real: false,
            lr: None,
            wd: 0.0,
            verbose: true,
            disc: Disc::default_disc(),
            swap_channels: false,
            drop_kernel: 0.0,
            b_clip: Some(2.0),
            diagonalize_precision: true,
            forward_mode: "auto".into(),
        }
    }
}

impl<Disc: SsmDisc> SsmBlockConfig<Disc> {
    /// Checks the values this implementation (and lrnnx) can run.
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.transposed {
            return Err(
                "transposed = true is not supported: inputs are (batch, seqlen, d_model); pass transposed = false"
                    .into(),
            );
        }
        if self.is_real {
            return Err("is_real = true is not supported (lrnnx's step fails with it)".into());
        }
        Disc::check(self)?;
        if !matches!(self.forward_mode.as_str(), "auto" | "scan" | "conv") {
            return Err(format!(
                "forward_mode must be \"auto\", \"scan\" or \"conv\", found `{}`",
                self.forward_mode
            ));
        }
        if self.postact.is_some() && self.final_act.is_some() {
            return Err("postact needs final_act = null (lrnnx asserts it)".into());
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.drop_kernel) {
            return Err(format!(
                "dropout and drop_kernel must be in [0, 1), found {} and {}",
                self.dropout, self.drop_kernel
            ));
        }
        if self.l_max == Some(0) {
            return Err("l_max must be positive or null, found 0".into());
        }
        self.wrapper_opts(d_model).validate()?;
        self.spec(d_model)?.validate()
    }

    /// The wrapper's options.
    pub fn wrapper_opts(&self, d_model: usize) -> SsmWrapperOpts {
        SsmWrapperOpts {
            d_model,
            channels: self.channels,
            gate: self.gate,
            bottleneck: self.bottleneck,
            output_linear: self.final_act.is_some() || self.postact.is_some(),
            swap_channels: self.swap_channels,
            gate_style: Disc::GATE_STYLE,
        }
    }

    /// The SSM parameters' spec.
    pub fn spec(&self, d_model: usize) -> Result<SsmSpec, String> {
        Ok(SsmSpec {
            d_model,
            d_state: self.d_state,
            channels: self.channels,
            n_ssm: self.n_ssm.unwrap_or(d_model),
            rank: self.rank,
            dt_min: self.dt_min,
            dt_max: self.dt_max,
            dt_tie: self.dt_tie,
            dt_transform: Transform::parse(&self.dt_transform, "dt_transform")?,
            dt_fast: self.dt_fast,
            init: self.init.clone(),
            deterministic: self.deterministic,
            real_transform: Transform::parse(&self.real_transform, "real_transform")?,
            imag_transform: Transform::parse(&self.imag_transform, "imag_transform")?,
            b_clip: self.b_clip,
            with_p: Disc::WITH_P,
        })
    }

    /// The forward mode `forward_mode` names (validated: anything else is `auto`).
    pub fn forward_mode(&self) -> super::ForwardMode {
        super::ForwardMode::parse(&self.forward_mode)
    }
}
