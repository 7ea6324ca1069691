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

lrnnx_framework::mixers! {
    /// The registered name.
    NAME = "mLSTM" {
        aliases: ["mlstm"],
        family: Other,
        summary: "mLSTM (xLSTM): matrix memory with exponential gating, chunkwise-parallel forward",
        config: MlstmConfig,
        new: Mlstm::new,
    }
}

inventory::submit! {
    lrnnx_framework::conformance::CaseHandler { mixer: "mLSTM-cell", run: conformance::cell_case }
}
