//! Mamba's selective scan on CUDA.
//!
//! - This module: the forward kernel (`cuda/selective_scan.cu`) as a
//!   gradient-free op for decoding and inference. Its one output buffer holds
//!   `y (B, L, D)` followed by the last state `(B, ceil(D / 16), N, 16)` (the
//!   CPU kernels' state layout), which [`selective_scan_gpu`] splits.
//! - [`train`]: the same forward with the backward kernel
//!   (`cuda/selective_scan_bwd.cu`), for training on the GPU.

mod train;

pub use train::selective_scan_gpu_train;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaView, DeviceRepr, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor,
};

use crate::cpu::recurrence::{Rule, LANES};
use crate::scan_args::{ScanArgs, ScanSizes};

/// SASS for the build's GPU (sm_90 by default) and PTX for later ones, one
/// fatbin per kernel file (no JIT: the PTX of the 40 instantiations of each
/// takes minutes to JIT-compile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Forward,
    Backward,
}

impl Kernels {
    fn fatbin(self) -> &'static [u8] {
        match self {
            Kernels::Forward => {
                include_bytes!(concat!(env!("OUT_DIR"), "/selective_scan.fatbin"))
            }
            Kernels::Backward => {
                include_bytes!(concat!(env!("OUT_DIR"), "/selective_scan_bwd.fatbin"))
            }
        }
    }
}

/// The kernel `name` of `kernels`, its module loaded once per device.
fn function(dev: &CudaDevice, kernels: Kernels, name: &str) -> Result<CudaFunction> {
    let module = match kernels {
        Kernels::Forward => "selective_scan",
        Kernels::Backward => "selective_scan_bwd",
    };
    lrnnx_kernels::cuda::fatbin_function(dev, module, kernels.fatbin(), name)
}
/// Channels per block (a multiple of the state layout's 16 lanes; a warp shares its B and C loads).
const WIDTH: usize = 2 * LANES;
/// Most chunks of L per block.
const MAX_CHUNKS: usize = 32;

/// `(channels per block, most chunks)`; `LRNNX_MAMBA_WIDTH` (16 or 32) and
/// `LRNNX_MAMBA_CHUNKS` override them, for tuning runs.
fn block_limits() -> (usize, usize) {
    static LIMITS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let width = match env("LRNNX_MAMBA_WIDTH") {
            Some(16) => 16,
            _ => WIDTH,
        };
        let chunks = env("LRNNX_MAMBA_CHUNKS")
            .unwrap_or(MAX_CHUNKS)
            .clamp(1, 1024 / width);
        (width, chunks)
    })
}
/// Shortest chunk worth a thread.
const MIN_CHUNK: usize = 8;
/// Shared memory a block may use without opting in.
const SHARED_LIMIT: usize = 48 * 1024;
/// State sizes the kernel is compiled for (a state of size N runs on the
/// smallest one at least N).
const STATE_SIZES: [usize; 5] = [4, 8, 16, 32, 64];

/// The selective scan's GPU inputs besides `uz`, all contiguous, on one device.
#[derive(Debug, Clone)]
struct GpuScan {
    /// `softplus(dt)` `(B, L, D)`.
    delta: Tensor,
    /// The step of `Abar`: `delta`, or the event-mode one `(B, L, D)`.
    dta: Tensor,
    /// x_proj's output `(B, L, R + 2N)`.
    xdbl: Tensor,
    /// `A = -exp(A_log)` `(D, N)`.
    a: Tensor,
    /// The skip `D` `(D)`.
    skip: Tensor,
    /// The initial state `(B, ceil(D / 16), N, 16)`.
    h0: Tensor,
    r: usize,
    n: usize,
    rule: Rule,
}

fn rule_code(rule: Rule) -> i32 {
    match rule {
        Rule::Mamba => 0,
        Rule::Zoh => 1,
        Rule::Bilinear => 2,
        Rule::Dirac => 3,
    }
}

/// Shared memory per chunk of a block: the end states, plus the chunk decay
/// (one sum of dtA per channel for the exp rules, a product per state for bilinear).
fn shared_per_chunk(np: usize, rule: Rule, elem: usize, width: usize) -> usize {
    let decay = if rule == Rule::Bilinear { np } else { 1 };
    (np + decay) * width * elem
}

/// `(compiled state size, channels per block, chunks)` for a scan of `l` positions (before the
/// kernel's own thread limit).
fn launch_shape(n: usize, l: usize, rule: Rule, elem: usize) -> Result<(usize, usize, usize)> {
    let Some(&np) = STATE_SIZES.iter().find(|&&s| s >= n) else {
        candle_core::bail!(
            "Mamba selective scan on CUDA: d_state must be at most {}, found {n}",
            STATE_SIZES[STATE_SIZES.len() - 1]
        )
    };
    let (width, max_chunks) = block_limits();
    let chunks = l
        .div_ceil(MIN_CHUNK)
        .min(max_chunks)
        .min(SHARED_LIMIT / shared_per_chunk(np, rule, elem, width))
        .max(1);
    Ok((np, width, chunks))
}

/// The forward kernel's inputs, in its argument order: `uz`, `delta`, `dtA`,
/// `xdbl`, `A`, the skip, `h0`.
type ForwardInputs<'a, T> = [CudaView<'a, T>; 7];

/// Launches the forward kernel writing `y (B L D)` and the last state into `y`
/// and `hlast`.
fn launch_forward<T: DeviceRepr>(
    dev: &CudaDevice,
    inputs: &ForwardInputs<T>,
    y: &CudaView<T>,
    hlast: &CudaView<T>,
    s: ScanSizes,
    rule: Rule,
    prec: &str,
) -> Result<()> {
    let ScanSizes { b, l, d, n, r } = s;
    if b * l * d == 0 {
        return Ok(());
    }
    let (np, width, chunks) = launch_shape(n, l, rule, std::mem::size_of::<T>())?;
    let func = function(
        dev,
        Kernels::Forward,
        &format!("selective_scan_{prec}_n{np}_r{}", rule_code(rule)),
    )?;
    // The registers the compiled kernel uses bound the threads of a block.
    let max_threads = func.max_threads_per_block().w()? as usize;
    let chunks = chunks.min(max_threads / width).max(1);
    let shared = chunks * shared_per_chunk(np, rule, std::mem::size_of::<T>(), width);
    let cfg = lrnnx_kernels::cuda::config(
        (d.div_ceil(width) as u32, b as u32, 1),
        (width as u32, chunks as u32, 1),
        shared as u32,
    );
    let ints = [l, d, n, r + 2 * n, r].map(|v| v as i32);
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    for v in inputs {
        builder.arg(v);
    }
    builder.arg(y);
    builder.arg(hlast);
    for v in &ints {
        builder.arg(v);
    }
    // SAFETY: argument types and order match the kernel's signature, every
    // input holds its documented shape, and y and hlast hold B L D and the state.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

impl GpuScan {
    fn run<T: DeviceRepr + CudaDType + candle_core::WithDType>(
        &self,
        uz: &CudaStorage,
        lu: &Layout,
        prec: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, l, d2) = lu.shape().dims3()?;
        let (d, n, r) = (d2 / 2, self.n, self.r);
        let sizes = ScanSizes { b, l, d, n, r };
        let state_len = sizes.state().iter().product::<usize>();
        let dev = uz.device().clone();
        let guards = [
            &self.delta,
            &self.dta,
            &self.xdbl,
            &self.a,
            &self.skip,
            &self.h0,
        ]
        .map(|t| t.storage_and_layout());
        let mut slices = Vec::with_capacity(guards.len() + 1);
        slices.push(uz.as_cuda_slice::<T>()?.slice(lu.start_offset()..));
        for (s, layout) in &guards {
            let Storage::Cuda(cs) = &**s else {
                candle_core::bail!("Mamba selective scan: every input must be on the GPU")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("Mamba selective scan: inputs must be contiguous")
            };
            slices.push(cs.as_cuda_slice::<T>()?.slice(start..end));
        }
        let inputs: ForwardInputs<T> = slices
            .try_into()
            .map_err(|_| candle_core::Error::Msg("selective scan: seven inputs".into()))?;
        // SAFETY: the kernel writes every y element and every state entry.
        let out = unsafe { dev.alloc::<T>(b * l * d + state_len)? };
        let (y, hlast) = (out.slice(..b * l * d), out.slice(b * l * d..));
        launch_forward(&dev, &inputs, &y, &hlast, sizes, self.rule, prec)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(b * l * d + state_len),
        ))
    }
}

impl CustomOp1 for GpuScan {
    fn name(&self) -> &'static str {
        "mamba-selective-scan-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "the CUDA selective scan got CPU tensors; the CPU path is `selective_scan`"
        )
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        candle_core::bail!(
            "internal: Mamba's gradient-free CUDA scan was differentiated; training runs `selective_scan_gpu_train`"
        )
    }

    fn cuda_fwd(&self, uz: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
        if !lu.is_contiguous() {
            candle_core::bail!("Mamba selective scan: uz must be contiguous");
        }
        match uz.dtype() {
            DType::F32 => self.run::<f32>(uz, lu, "f32"),
            DType::F64 => self.run::<f64>(uz, lu, "f64"),
            other => candle_core::bail!(
                "Mamba selective scan on CUDA: expected f32 or f64, found {other:?}"
            ),
        }
    }
}

/// The scan on the GPU: `(y (B, L, D), last state (B, ceil(D/16), N, 16))`
/// (lanes past `D` zero). No backward: training runs [`selective_scan_gpu_train`].
pub fn selective_scan_gpu(args: &ScanArgs) -> Result<(Tensor, Tensor)> {
    let sizes = args.sizes()?;
    let (state, ScanSizes { b, l, d, n, r }) = (sizes.state(), sizes);
    let op = GpuScan {
        delta: args.delta.contiguous()?,
        dta: args.dta.contiguous()?,
        xdbl: args.xdbl.contiguous()?,
        a: args.a.contiguous()?,
        skip: args.skip.contiguous()?,
        h0: args.h0.contiguous()?,
        r,
        n,
        rule: args.rule,
    };
    // Recorded in the graph, so that a backward through it reaches `bwd` and
    // fails loudly instead of treating the scan as a constant.
    let out = args.uz.contiguous()?.apply_op1(op)?;
    let y = out.narrow(0, 0, b * l * d)?.reshape((b, l, d))?;
    let h = out
        .narrow(0, b * l * d, state.iter().product())?
        .reshape(state.to_vec())?;
    Ok((y, h))
}
