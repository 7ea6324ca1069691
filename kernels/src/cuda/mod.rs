//! CUDA plumbing: PTX modules loaded through candle's CUDA device, launch helpers.

pub mod scan;

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::cuda_backend::{CudaDevice, CudaFunc};
use candle_core::Result;

/// Loads (once per device) the PTX module `module` and returns its function `name`.
pub fn function(dev: &CudaDevice, module: &str, ptx: &'static str, name: &str) -> Result<CudaFunc> {
    dev.get_or_load_custom_func(name, module, ptx)
}

/// A launch configuration with a grid, a block and dynamic shared memory.
pub fn config(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: shared_bytes,
    }
}
