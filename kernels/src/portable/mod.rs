//! Device-generic implementations of the kernels' ops, written with candle
//! tensor ops only, so they run on every device candle has (CUDA included)
//! and in every float dtype, and get their backward pass from candle's
//! autograd.
//!
//! They are the "correct, maybe slow" path: a fused kernel is used where one
//! exists for the tensor's device and dtype (see [`use_fused_cpu`]), these run
//! everywhere else. Nothing here falls back to the CPU: every op stays on the
//! device of its inputs.
//!
//! Precision policy: recurrences accumulate in f32 (f64 inputs stay f64), so
//! bf16/f16 inputs are widened before a scan and the states come back as f32;
//! callers cast the outputs they want narrow.
//!
//! - [`scan`]: log-depth (Hillis–Steele) linear scans, real and split-complex,
//!   time-varying or not;
//! - [`conv`]: the causal depthwise convolution and the long causal channel
//!   convolution (Toeplitz matmuls).

pub mod conv;
pub mod scan;

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static FORCE_PORTABLE: Cell<bool> = const { Cell::new(false) };
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with `flag` set on this thread, restoring it afterwards (also on unwinding).
fn with_flag<R>(flag: &'static std::thread::LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(true)));
    f()
}

/// Runs `f` with every op that has a portable path taking it, on this thread,
/// even on the CPU: how the portable paths are tested against the fused CPU
/// kernels without a GPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lrnnx_kernels::portable::{use_fused_cpu, with_portable};
/// let x = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?;
/// assert!(use_fused_cpu(&x));
/// assert!(!with_portable(|| use_fused_cpu(&x)));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_portable<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&FORCE_PORTABLE, f)
}

/// Runs `f` promising that no backward pass will go through what it
/// computes (inference, benchmarks of the forward): ops whose fastest kernel
/// has no backward (Mamba's CUDA selective scan) may then take it even when
/// their inputs are in an autograd graph (parameters are `Var`s). A backward
/// through such an op fails with an error naming it, never silently.
///
/// ```
/// use lrnnx_kernels::portable::{grad_disabled, without_grad};
/// assert!(!grad_disabled());
/// assert!(without_grad(grad_disabled));
/// ```
pub fn without_grad<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&NO_GRAD, f)
}

/// Whether [`without_grad`] is in force on this thread.
pub fn grad_disabled() -> bool {
    NO_GRAD.with(|c| c.get())
}

/// Whether [`with_portable`] is in force on this thread.
pub fn portable_forced() -> bool {
    FORCE_PORTABLE.with(|c| c.get())
}

/// Whether the fused CPU kernels take `t`: a CPU tensor in f32 or f64, outside
/// [`with_portable`]. Everything else (CUDA, bf16/f16) runs the portable ops.
pub fn use_fused_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64) && !portable_forced()
}

/// The dtype recurrences accumulate in for inputs of `dtype`: f64 stays f64,
/// everything else is f32.
pub fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `t` in the accumulation dtype of its own dtype (a no-op for f32/f64).
pub fn widen(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(accumulation_dtype(t.dtype()))
}

/// Whether an op whose kernels run on the CPU (and, with `cuda_kernel`, on
/// CUDA) takes `t` on its device, outside [`with_portable`]. Such ops widen
/// narrow dtypes to f32 themselves, so the dtype does not decide.
pub fn kernel_takes(t: &Tensor, cuda_kernel: bool) -> bool {
    !portable_forced() && (t.device().is_cpu() || (cuda_kernel && t.device().is_cuda()))
}
