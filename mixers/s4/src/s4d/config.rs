//! S4D constructor arguments: the S4-family block arguments
//! ([`SsmBlockConfig`]) with S4D's `disc`, `"zoh"` or `"bilinear"`.

use crate::ssm::{GateStyle, SsmBlockConfig, SsmDisc};
use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `S4D(d_model, ...)`, same names and defaults, plus
/// `forward_mode`; see [`SsmBlockConfig`].
pub type S4dConfig = SsmBlockConfig<S4dDisc>;

/// S4D's `disc`: `"zoh"` (the default) or `"bilinear"` (textbook Tustin).
/// Saved as the bare string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct S4dDisc(pub String);

impl S4dDisc {
    /// Whether it is zero-order hold (else bilinear).
    pub fn is_zoh(&self) -> bool {
        self.0 == "zoh"
    }
}

impl SsmDisc for S4dDisc {
    const GATE_STYLE: GateStyle = GateStyle::S4d;
    const WITH_P: bool = false;

    fn default_disc() -> Self {
        Self("zoh".into())
    }

    /// `disc` names one of the two discretizations.
    fn check(cfg: &S4dConfig) -> Result<(), String> {
        if cfg.disc.0 != "zoh" && cfg.disc.0 != "bilinear" {
            return Err(format!(
                "disc must be \"zoh\" or \"bilinear\", found `{}`",
                cfg.disc.0
            ));
        }
        Ok(())
    }
}
