//! CUDA plumbing: PTX modules loaded through candle's CUDA device, launch helpers.

pub mod scan;

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

/// A launch configuration with a grid, a block and dynamic shared memory.
pub fn config(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: shared_bytes,
    }
}
