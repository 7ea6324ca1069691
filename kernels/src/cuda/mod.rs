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

/// One device-to-device `cudaMemcpy` of `t` (contiguous, f32): the copy-bandwidth
/// floor kernels are measured against. Returns the bytes moved (read + written).
pub fn memcpy_floor(t: &candle_core::Tensor) -> Result<usize> {
    use candle_core::Storage;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        candle_core::bail!("memcpy_floor needs a CUDA tensor");
    };
    let n = layout.shape().elem_count();
    let src = cs
        .as_cuda_slice::<f32>()?
        .slice(layout.start_offset()..layout.start_offset() + n);
    let dev = &cs.device;
    // SAFETY: fully overwritten by the copy below.
    let mut dst = unsafe { dev.alloc::<f32>(n)? };
    dev.memcpy_dtod(&src, &mut dst)?;
    Ok(2 * n * std::mem::size_of::<f32>())
}
