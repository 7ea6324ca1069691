//! Launches the complex scan kernel (`cuda/complex_scan.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Result};

use crate::scan_cpu::ScanDims;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/complex_scan.ptx"));
const MODULE: &str = "lrnnx_complex_scan";
/// Channels per block.
const WIDTH: usize = 16;
/// Largest number of chunks per block (WIDTH * MAX_CHUNKS <= 1024 threads).
const MAX_CHUNKS: usize = 64;
/// Shortest chunk worth a thread.
const MIN_CHUNK: usize = 8;

/// Block shape `(channels, chunks)` for a scan of length `l`.
/// `LRNNX_SCAN_WIDTH` / `LRNNX_SCAN_CHUNKS` override it (for tuning runs).
pub fn block_shape(l: usize) -> (usize, usize) {
    static SHAPE: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let &(width, max_chunks) = SHAPE.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let width = env("LRNNX_SCAN_WIDTH").unwrap_or(WIDTH).clamp(1, 1024);
        (
            width,
            env("LRNNX_SCAN_CHUNKS")
                .unwrap_or(MAX_CHUNKS)
                .clamp(1, 1024 / width),
        )
    });
    (width, l.div_ceil(MIN_CHUNK).clamp(1, max_chunks))
}

/// One input of the scan: its storage and layout.
type Input<'a> = (&'a CudaStorage, &'a Layout);

fn run<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
    name: &str,
    dims: ScanDims,
    [(u, lu), (lam, ll), (h0, lh)]: [Input; 3],
    reverse: bool,
    conj: bool,
) -> Result<CudaStorage> {
    let dev = u.device().clone();
    let ScanDims { b, l, n } = dims;
    let u = u.as_cuda_slice::<T>()?.slice(lu.start_offset()..);
    let lam = lam.as_cuda_slice::<T>()?.slice(ll.start_offset()..);
    let h0 = h0.as_cuda_slice::<T>()?.slice(lh.start_offset()..);
    // SAFETY: the kernel writes every element (each (b, t, channel) once).
    let out = unsafe { dev.alloc::<T>(b * l * 2 * n)? };
    if b * l * n > 0 {
        let (width, chunks) = block_shape(l);
        // Loaded once per device, then cached by candle.
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let shared = 3 * chunks * width * 2 * std::mem::size_of::<T>();
        let cfg = super::config(
            (n.div_ceil(width) as u32, b as u32, 1),
            (width as u32, chunks as u32, 1),
            shared as u32,
        );
        let (l32, n32, rev, cj) = (l as i32, n as i32, reverse as i32, conj as i32);
        let mut builder = func.builder();
        builder.arg(&u);
        builder.arg(&lam);
        builder.arg(&h0);
        builder.arg(&out);
        builder.arg(&l32);
        builder.arg(&n32);
        builder.arg(&rev);
        builder.arg(&cj);
        // SAFETY: argument types and counts match the kernel's signature;
        // `out` holds b*l*2n elements, the inputs were checked contiguous and sized.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Runs the scan on the GPU; inputs must be contiguous and all f32 or all f64.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    dims: ScanDims,
    u: &CudaStorage,
    lu: &Layout,
    lam: &CudaStorage,
    ll: &Layout,
    h0: &CudaStorage,
    lh: &Layout,
    reverse: bool,
    conj: bool,
) -> Result<CudaStorage> {
    for l in [lu, ll, lh] {
        if !l.is_contiguous() {
            candle_core::bail!("complex scan: inputs must be contiguous");
        }
    }
    let inputs = [(u, lu), (lam, ll), (h0, lh)];
    match (u.dtype(), lam.dtype(), h0.dtype()) {
        (DType::F32, DType::F32, DType::F32) => {
            run::<f32>("complex_scan_f32", dims, inputs, reverse, conj)
        }
        (DType::F64, DType::F64, DType::F64) => {
            run::<f64>("complex_scan_f64", dims, inputs, reverse, conj)
        }
        (a, b, c) => candle_core::bail!(
            "complex scan: expected all f32 or all f64, found {a:?}, {b:?}, {c:?}"
        ),
    }
}
