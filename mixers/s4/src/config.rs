//! S4 constructor arguments: the S4-family block arguments
//! ([`SsmBlockConfig`]) with S4's `disc`, which is accepted and ignored.

use crate::ssm::{GateStyle, SsmBlockConfig, SsmDisc};
use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `S4(d_model, ...)`, same names and defaults, plus
/// `forward_mode`; see [`SsmBlockConfig`].
pub type S4Config = SsmBlockConfig<S4Disc>;

/// S4's `disc`: any value or `null` (the default), accepted and ignored as
/// in lrnnx (S4 is always bilinear). Saved as the bare value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct S4Disc(pub Option<String>);

impl SsmDisc for S4Disc {
    const GATE_STYLE: GateStyle = GateStyle::S4;
    const WITH_P: bool = true;

    fn default_disc() -> Self {
        Self(None)
    }

    /// S4 runs the rank-1 DPLR kernel only.
    fn check(cfg: &S4Config) -> Result<(), String> {
        if cfg.rank != 1 {
            return Err(format!(
                "rank must be 1 (the rank-1 DPLR kernel of the legs init), found {}",
                cfg.rank
            ));
        }
        Ok(())
    }
}
