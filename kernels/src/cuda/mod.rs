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

/// The kernel `name` of the fatbin `fatbin` (named `module` in errors and in
/// the cache), its module loaded once per device and kept.
pub fn fatbin_function(
    dev: &candle_core::cuda_backend::CudaDevice,
    module: &'static str,
    fatbin: &'static [u8],
    name: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
    use candle_core::cuda_backend::cudarc::driver::CudaModule;
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::cuda_backend::{DeviceId, WrapErr};
    use std::sync::{Arc, Mutex};
    type Cache = Vec<(DeviceId, &'static str, Arc<CudaModule>)>;
    static MODULES: Mutex<Cache> = Mutex::new(Vec::new());
    let mut modules = MODULES
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{module}: module cache poisoned")))?;
    let found = modules
        .iter()
        .find(|(id, m, _)| *id == dev.id() && *m == module)
        .map(|(_, _, m)| m.clone());
    let m = match found {
        Some(m) => m,
        None => {
            let ctx = dev.cuda_stream().context().clone();
            let m = ctx.load_module(Ptx::from_binary(fatbin.to_vec())).w()?;
            modules.push((dev.id(), module, m.clone()));
            m
        }
    };
    m.load_function(name).w()
}
