//! # lrnnx-kernels
//!
//! What the mixer crates share below the framework:
//!
//! - [`cpu`]: the float trait, vectorizable math, explicit SIMD backends
//!   (AVX-512, AVX2, portable), the one run-time dispatch and slice access
//!   shared by the fused CPU kernels of Mamba, RG-LRU, S7 and attention;
//! - [`depthwise_conv`]: the causal depthwise convolution (op with
//!   backward, and the decoding step) of RG-LRU, mLSTM and Mamba's step;
//! - [`scan`]: the diagonal complex linear recurrence `h_t = lambda * h_{t-1} + u_t`
//!   as a candle custom op with CPU (parallel over batch and channels),
//!   CUDA (feature `cuda`) and backward passes;
//! - [`cuda`] (feature `cuda`): loading PTX through candle's CUDA device and
//!   launching kernels;
//! - `cuda/*.cuh`: headers the mixers' `.cu` files include;
//! - `build_support.rs`: the nvcc-to-PTX helper that mixers' `build.rs`
//!   include (a file, not a dependency, so build scripts stay light).

pub mod cpu;
pub mod depthwise_conv;
pub mod fft_conv;
pub mod linalg;
pub mod portable;
pub mod scan;
pub mod scan_cpu;
pub mod scan_real_tv;
pub mod scan_tv;
#[cfg(test)]
mod test_support;

#[cfg(feature = "cuda")]
pub mod cuda;

/// Floating-point element types the CPU kernels run on.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + candle_core::WithDType
{
}
impl Real for f32 {}
impl Real for f64 {}
