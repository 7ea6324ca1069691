//! `--device` and `--dtype`: where a command runs and in what precision.

use candle_core::Device;
use lrnnx::Precision;

/// The `--device` flag.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArg {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`; CUDA needs a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Default for DeviceArg {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
        }
    }
}

impl DeviceArg {
    /// Opens the device.
    pub fn open(&self) -> anyhow::Result<Device> {
        Ok(lrnnx::device::parse_device(&self.device)?)
    }
}

/// The `--dtype` flag.
#[derive(Debug, Clone, clap::Args)]
pub struct DtypeArg {
    /// `f32`, `bf16` or `f16` (or `f64`). bf16/f16: weights and activations in that dtype,
    /// recurrent states, scan accumulation, norms, logits and loss in f32; training keeps
    /// f32 master weights and optimizer moments.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl Default for DtypeArg {
    fn default() -> Self {
        Self {
            dtype: "f32".into(),
        }
    }
}

impl DtypeArg {
    /// The precision for training (f32 master weights under a narrow compute dtype).
    pub fn for_training(&self) -> anyhow::Result<Precision> {
        Ok(self.dtype.parse()?)
    }

    /// The precision for inference (weights stored in the compute dtype).
    pub fn for_inference(&self) -> anyhow::Result<Precision> {
        Ok(self.for_training()?.for_inference())
    }
}
