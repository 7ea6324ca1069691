//! What the fused CPU kernels of several mixers share (RG-LRU, S7): the
//! [`Float`] trait with vectorizable `exp`/`erf`, GELU and sigmoids, raw
//! slice access to CPU tensors, parallel row writes, AVX2 dispatch
//! ([`crate::with_avx2`]) and small row-by-weight products for decoding steps.

mod dispatch;
pub mod float;
pub mod slices;
pub mod small_matmul;

pub use crate::with_avx2;
pub use float::{erf_f32, exp_f32, gelu, gelu_and_grad, log_sigmoid, sigmoid, Float};
pub use slices::{
    batch_dims, contiguous, cpu_slice, for_rows, tensor, with_cpu_slice, Rows, ROWS_PER_TASK,
};
pub use small_matmul::matmul_t;
