//! Launching the flash-attention kernels of `cuda/flash_attn.cu`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchArgs, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

use super::dims::{Dims, HeadsView};

/// The largest head size the CUDA kernels take (larger ones run candle's ops).
pub(crate) const MAX_CUDA_HEAD_DIM: usize = 64;

const THREADS: u32 = 256;
const TILE: usize = 64;
const PAD: usize = 68;

fn fatbin() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/flash_attn.fatbin"))
}

/// The padded head size a kernel is compiled for.
fn padded(d: usize) -> Result<usize> {
    match d {
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        _ => candle_core::bail!(
            "flash attention on CUDA: expected a head size of at most {MAX_CUDA_HEAD_DIM}, found {d}"
        ),
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => candle_core::bail!(
            "flash attention on CUDA: expected f32, bf16 or f16, found {other:?}"
        ),
    }
}

/// `name`, with `shared` bytes of dynamic shared memory allowed.
fn function(dev: &CudaDevice, name: &str, shared: usize) -> Result<CudaFunction> {
    let f = lrnnx_kernels::cuda::fatbin_function(dev, "flash_attn", fatbin(), name)?;
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared as i32,
    )
    .w()?;
    Ok(f)
}

/// One input: its storage and layout.
type Input<'a> = (&'a CudaStorage, &'a Layout);

/// The sizes and the three views, pushed in the kernels' order.
struct Shared {
    ints: [i32; 7],
    scale: f32,
    views: [[i64; 4]; 3],
}

impl Shared {
    fn new(dims: Dims, layouts: [&Layout; 3]) -> Result<Self> {
        let mut views = [[0i64; 4]; 3];
        for (v, (l, what)) in views
            .iter_mut()
            .zip(layouts.into_iter().zip(["queries", "keys", "values"]))
        {
            let h = HeadsView::of(l, what)?;
            *v = [h.start, h.batch, h.head, h.pos].map(|x| x as i64);
        }
        let int = |x: usize, what: &str| -> Result<i32> {
            i32::try_from(x).map_err(|_| {
                candle_core::Error::Msg(format!(
                    "flash attention on CUDA: expected {what} below 2^31, found {x}"
                ))
            })
        };
        Ok(Self {
            ints: [
                int(dims.b, "a batch")?,
                int(dims.h, "a head count")?,
                int(dims.hkv, "a KV head count")?,
                int(dims.lq, "a query length")?,
                int(dims.lk, "a key length")?,
                int(dims.d, "a head size")?,
                i32::from(dims.causal),
            ],
            scale: dims.scale as f32,
            views,
        })
    }

    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        for v in &self.ints {
            b.arg(v);
        }
        b.arg(&self.scale);
        for v in self.views.iter().flatten() {
            b.arg(v);
        }
    }
}

fn check_dtypes(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage) -> Result<&'static str> {
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        candle_core::bail!(
            "flash attention on CUDA: expected q, k, v of one dtype, found {:?}, {:?}, {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    dtype_name(q.dtype())
}

/// The f32 buffer of a contiguous tensor on the GPU, from its first element.
fn f32_view<'a>(s: &'a Storage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cuda(c), Some((a, b))) => Ok(c.as_cuda_slice::<f32>()?.slice(a..b)),
        _ => candle_core::bail!(
            "flash attention on CUDA: expected {what} as a contiguous f32 GPU tensor"
        ),
    }
}

/// A kernel launch of the forward or a backward pass, in one input dtype.
struct Launch<'a> {
    dims: Dims,
    inputs: [Input<'a>; 3],
    /// `[o | lse]` and `dO` for the backward passes.
    saved: Option<(CudaView<'a, f32>, CudaView<'a, f32>)>,
}

impl Launch<'_> {
    /// Runs `kernel` (`flash_fwd`, `flash_bwd_kv`) into `out`,
    /// with `delta` for the backward ones.
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        shared: usize,
        delta: Option<&CudaSlice<f32>>,
        out: &CudaSlice<f32>,
    ) -> Result<()> {
        let [(q, lq), (k, lk), (v, lv)] = self.inputs;
        let dev = q.device().clone();
        let name = format!(
            "{kernel}_{}_d{}",
            dtype_name(q.dtype())?,
            padded(self.dims.d)?
        );
        let f = function(&dev, &name, shared)?;
        let sh = Shared::new(self.dims, [lq, lk, lv])?;
        let views = [
            q.as_cuda_slice::<T>()?.slice(..),
            k.as_cuda_slice::<T>()?.slice(..),
            v.as_cuda_slice::<T>()?.slice(..),
        ];
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        for x in &views {
            b.arg(x);
        }
        if let (Some((res, dout)), Some(delta)) = (&self.saved, delta) {
            b.arg(res);
            b.arg(dout);
            b.arg(delta);
        }
        b.arg(out);
        sh.push(&mut b);
        let cfg = lrnnx_kernels::cuda::config(grid, (THREADS, 1, 1), shared as u32);
        // SAFETY: argument types and order match the `flash_*` kernels; the
        // views' strides address elements inside their buffers (candle's
        // layouts), `res`, `dout` and `delta` hold the documented
        // shapes (checked by the callers) and `out` holds what the kernel writes.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    fn run_in_dtype(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        shared: usize,
        delta: Option<&CudaSlice<f32>>,
        out: &CudaSlice<f32>,
    ) -> Result<()> {
        match self.inputs[0].0.dtype() {
            DType::F32 => self.run::<f32>(kernel, grid, shared, delta, out),
            DType::BF16 => self.run::<half::bf16>(kernel, grid, shared, delta, out),
            _ => self.run::<half::f16>(kernel, grid, shared, delta, out),
        }
    }
}

fn empty(dims: &Dims) -> bool {
    dims.lq == 0 || dims.lk == 0 || dims.b * dims.h == 0
}

/// Forward: `[o (B, Lq, h, d) | lse (B, h, Lq)]` in f32.
pub(crate) fn forward(dims: Dims, q: Input, k: Input, v: Input) -> Result<(CudaStorage, Shape)> {
    check_dtypes(q.0, k.0, v.0)?;
    let dev = q.0.device().clone();
    let n = dims.o_len() + dims.lse_len();
    let out = dev.alloc_zeros::<f32>(n)?;
    if !empty(&dims) {
        let dp = padded(dims.d)?;
        let shared = (2 * dp * PAD + TILE * dp + TILE * PAD) * 4;
        let grid = (dims.lq.div_ceil(TILE) as u32, dims.h as u32, dims.b as u32);
        let launch = Launch {
            dims,
            inputs: [q, k, v],
            saved: None,
        };
        launch.run_in_dtype("flash_fwd", grid, shared, None, &out)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(n)))
}

/// Backward: `[dq (B, Lq, h, d) | dk | dv (B, Lk, hkv, d)]` in f32, from the
/// forward's `[o | lse]` and the context's gradient `dO (B, Lq, h, d)` (both f32).
pub(crate) fn backward(
    dims: Dims,
    q: Input,
    k: Input,
    v: Input,
    res: &Tensor,
    dout: &Tensor,
) -> Result<(CudaStorage, Shape)> {
    check_dtypes(q.0, k.0, v.0)?;
    let dev = q.0.device().clone();
    let kv_len = dims.b * dims.lk * dims.hkv * dims.d;
    let n = dims.o_len() + 2 * kv_len;
    let grads = dev.alloc_zeros::<f32>(n)?;
    if !empty(&dims) {
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = dout.storage_and_layout();
        let resv = f32_view(&rs, rl, "the forward output")?;
        let doutv = f32_view(&gs, gl, "the context gradient")?;
        if resv.len() != dims.o_len() + dims.lse_len() || doutv.len() != dims.o_len() {
            candle_core::bail!(
                "flash attention backward on CUDA: expected {} saved and {} gradient elements, found {} and {}",
                dims.o_len() + dims.lse_len(),
                dims.o_len(),
                resv.len(),
                doutv.len()
            );
        }
        let delta = dev.alloc_zeros::<f32>(dims.lse_len())?;
        {
            let f = function(&dev, "flash_row_deltas", 0)?;
            let sh = Shared::new(dims, [q.1, k.1, v.1])?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&resv);
            b.arg(&doutv);
            b.arg(&delta);
            for x in &sh.ints {
                b.arg(x);
            }
            b.arg(&sh.scale);
            let rows = dims.lse_len().div_ceil((THREADS / 32) as usize) as u32;
            let cfg = lrnnx_kernels::cuda::config((rows, 1, 1), (THREADS, 1, 1), 0);
            // SAFETY: matches `flash_row_deltas`; `resv` and `doutv` were checked
            // above, `delta` holds B h Lq values.
            unsafe { b.launch(cfg) }.w()?;
        }
        let dp = padded(dims.d)?;
        let launch = Launch {
            dims,
            inputs: [q, k, v],
            saved: Some((resv, doutv)),
        };
        // Kt, Vt, Qt, dOt; Qs, dOs, Ks; Ps, dSs, dSt; lse and delta rows.
        let kv_shared = (4 * dp * PAD + 3 * TILE * dp + 3 * TILE * PAD + 2 * TILE) * 4;
        let kv_grid = (
            dims.lk.div_ceil(TILE) as u32,
            dims.hkv as u32,
            dims.b as u32,
        );
        launch.run_in_dtype("flash_bwd_kv", kv_grid, kv_shared, Some(&delta), &grads)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(grads, dev), Shape::from(n)))
}
