//! The CPU kernel toolkit every mixer shares: the [`Float`] trait with
//! vectorizable `exp`/`erf`/softplus and the activations, the one run-time
//! choice of vector instruction set ([`simd_level`], honouring
//! `LRNNX_NO_SIMD` / `LRNNX_NO_AVX512`), the two ways to run code at that
//! level ([`crate::with_simd`] for generic loops that the compiler
//! vectorizes, [`exec`] + [`simd`] for task kernels written with explicit
//! vectors), raw slice access to CPU tensors, parallel row writes and small
//! row-by-weight products for decoding steps.

mod dispatch;
pub mod exec;
pub mod float;
pub mod shared_mut;
pub mod simd;
pub mod simd_kernel;
pub mod slices;
pub mod small_matmul;

pub use crate::with_simd;
pub use dispatch::{cpu_supports, has_avx2, has_avx512, simd_level, SimdLevel};
pub use float::{erf_f32, exp_f32, gelu, gelu_and_grad, log_sigmoid, sigmoid, Float};
pub use shared_mut::SharedMut;
pub use slices::{
    batch_dims, contiguous, cpu_slice, dispatch3, for_rows, tensor, with_cpu_slice, ROWS_PER_TASK,
};
pub use small_matmul::matmul_t;
