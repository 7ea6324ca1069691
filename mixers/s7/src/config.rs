//! S7 constructor arguments.

use serde::{Deserialize, Serialize};

/// Arguments of lrnnx's `S7(d_model, d_state, J=1, use_fast_path=True, layer_idx=None)`.
///
/// `d_state` is required by lrnnx; here it defaults to the model's `d_state`
/// (which the LM passes, as lrnnx's does). `J` only splits the HiPPO init of
/// `base_params` into blocks, and that init is `-0.5` everywhere whatever `J` is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S7Config {
    /// State size `N`.
    pub d_state: usize,
    /// Number of HiPPO blocks of the init; must divide `d_state`.
    #[serde(rename = "J")]
    pub j: usize,
    /// lrnnx's switch to its fused CUDA path; no effect here.
    pub use_fast_path: bool,
    /// lrnnx's bookkeeping index; no effect here.
    pub layer_idx: Option<i64>,
}

impl Default for S7Config {
    /// lrnnx's defaults, with `d_state = 64` (built by name, the model's `d_state`).
    fn default() -> Self {
        Self::new(64)
    }
}

impl S7Config {
    /// A config with lrnnx's defaults for everything but `d_state`.
    pub fn new(d_state: usize) -> Self {
        Self {
            d_state,
            j: 1,
            use_fast_path: true,
            layer_idx: None,
        }
    }

    /// Checks what lrnnx asserts, and that the layer has a state.
    pub fn validate(&self) -> Result<(), String> {
        if self.d_state == 0 {
            return Err("d_state must be positive, found 0".into());
        }
        if self.j == 0 || !self.d_state.is_multiple_of(self.j) {
            return Err(format!(
                "d_state must be divisible by J (number of blocks for initialization), found d_state = {}, J = {}",
                self.d_state, self.j
            ));
        }
        Ok(())
    }
}
