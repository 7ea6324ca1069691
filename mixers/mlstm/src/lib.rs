//! # lrnnx-mlstm
//!
//! The mLSTM of xLSTM (Beck et al. 2024): a matrix-memory LSTM with an
//! exponential input gate, a sigmoid forget gate and a max-state
//! stabilizer, in the layer of the PyTorch `xlstm` package
//! (`xlstm.blocks.mlstm.layer.mLSTMLayer`: up-projection, causal conv,
//! head-wise q/k/v, gates, per-head norm, learnable skip, output gate,
//! down-projection), registered as `"mLSTM"` (alias `"mlstm"`).
//!
//! [`cell`] holds the cell in its recurrent, parallel and chunkwise forms
//! (the math of `mlstm_kernels`), which agree with each other and with the
//! reference. The layer's forward and prefill run the chunkwise form
//! (batched matmuls within chunks, linear in the sequence length); its step
//! runs the recurrence.

pub mod cell;
mod config;
pub mod conformance;
pub mod conv;
pub mod headwise;
mod mlstm;
pub mod norm;

pub use config::MlstmConfig;
pub use mlstm::Mlstm;

use lrnnx_framework::{BuildArgs, Family, Mixer, MixerSpec, Result};

/// The registered name.
pub const NAME: &str = "mLSTM";

fn build(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let cfg: MlstmConfig = args.parse(NAME, &[])?;
    Ok(Box::new(
        Mlstm::new(args.d_model, cfg, &args.params).map_err(|e| match e {
            lrnnx_framework::Error::Config(m) => args.bad(NAME, m),
            other => other,
        })?,
    ))
}

fn default_config() -> serde_json::Value {
    serde_json::to_value(MlstmConfig::default()).unwrap_or(serde_json::Value::Null)
}

inventory::submit! {
    MixerSpec {
        name: NAME,
        aliases: &["mlstm"],
        family: Family::Other,
        summary: "mLSTM (xLSTM): matrix memory with exponential gating, chunkwise-parallel forward",
        build,
        default_config,
        source: env!("CARGO_PKG_NAME"),
    }
}

/// Referenced by the `lrnnx` facade so that the linker keeps this crate's registration.
pub fn link() -> &'static str {
    NAME
}

inventory::submit! {
    lrnnx_framework::conformance::CaseHandler { mixer: "mLSTM-cell", run: conformance::cell_case }
}
