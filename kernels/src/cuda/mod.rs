//! CUDA plumbing: PTX modules loaded through candle's CUDA device, launch helpers.

pub mod scan;

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::Result;

/// A launch configuration with a grid, a block and dynamic shared memory.
pub fn config(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: shared_bytes,
    }
}

/// A device-to-device `cudaMemcpy` of `src`'s data into a buffer of the same
/// size, as a closure to call repeatedly: the copy-bandwidth floor kernels
/// are measured against. `src` must be a contiguous f32 CUDA tensor.
pub fn memcpy_repeater(src: &candle_core::Tensor) -> Result<impl FnMut() -> Result<()>> {
    use candle_core::Storage;
    if !src.is_contiguous() {
        candle_core::bail!("memcpy_repeater: expected a contiguous tensor");
    }
    let (storage, layout) = src.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        candle_core::bail!("memcpy_repeater needs a CUDA tensor");
    };
    let n = src.elem_count();
    let so = layout.start_offset();
    let dev = cs.device.clone();
    // Own copies of source and destination, so the closure holds no borrow.
    let mut from = unsafe { dev.alloc::<f32>(n)? };
    dev.memcpy_dtod(&cs.as_cuda_slice::<f32>()?.slice(so..so + n), &mut from)?;
    // SAFETY: only ever written by the copies.
    let mut to = unsafe { dev.alloc::<f32>(n)? };
    Ok(move || dev.memcpy_dtod(&from, &mut to))
}
