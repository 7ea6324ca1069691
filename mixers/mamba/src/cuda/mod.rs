//! Launches the selective-scan kernel (`cuda/selective_scan.cu`, forward only).
//!
//! The op runs on `uz (B, L, 2D)` and carries its other inputs; its one output
//! buffer holds `y (B, L, D)` followed by the last state
//! `(B, ceil(D / 16), N, 16)` (the CPU kernels' state layout), which
//! [`selective_scan_gpu`] splits.

use candle_core::backend::BackendStorage;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, DeviceRepr, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor,
};

use crate::cpu::recurrence::{Rule, LANES};
use crate::scan_args::{ScanArgs, ScanSizes};

/// SASS for the build's GPU (sm_90 by default) and PTX for later ones.
const FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/selective_scan.fatbin"));

/// The kernel `name`, its module loaded once per device (a fatbin, so no JIT:
/// the PTX of the 40 instantiations takes minutes to JIT-compile).
fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    static MODULES: Mutex<Vec<(DeviceId, Arc<CudaModule>)>> = Mutex::new(Vec::new());
    let mut modules = MODULES
        .lock()
        .map_err(|_| candle_core::Error::Msg("selective scan module cache poisoned".into()))?;
    let module = match modules.iter().find(|(id, _)| *id == dev.id()) {
        Some((_, m)) => m.clone(),
        None => {
            let ctx = dev.cuda_stream().context().clone();
            let m = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).w()?;
            modules.push((dev.id(), m.clone()));
            m
        }
    };
    module.load_function(name).w()
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

impl GpuScan {
    fn run<T: DeviceRepr + CudaDType + candle_core::WithDType>(
        &self,
        uz: &CudaStorage,
        lu: &Layout,
        prec: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, l, d2) = lu.shape().dims3()?;
        let (d, n, r) = (d2 / 2, self.n, self.r);
        let k = r + 2 * n;
        let state_len = b * d.div_ceil(LANES) * n * LANES;
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
        let mut slices = Vec::with_capacity(guards.len());
        for (s, layout) in &guards {
            let Storage::Cuda(cs) = &**s else {
                candle_core::bail!("Mamba selective scan: every input must be on the GPU")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("Mamba selective scan: inputs must be contiguous")
            };
            slices.push(cs.as_cuda_slice::<T>()?.slice(start..end));
        }
        let uz = uz.as_cuda_slice::<T>()?.slice(lu.start_offset()..);
        // SAFETY: the kernel writes every y element and every state entry.
        let out = unsafe { dev.alloc::<T>(b * l * d + state_len)? };
        if b * l * d > 0 {
            let elem = std::mem::size_of::<T>();
            let (np, width, chunks) = launch_shape(n, l, self.rule, elem)?;
            let rule = rule_code(self.rule);
            let name = format!("selective_scan_{prec}_n{np}_r{rule}");
            let func = function(&dev, &name)?;
            // The registers the compiled kernel uses bound the threads of a block.
            let max_threads = func.max_threads_per_block().w()? as usize;
            let chunks = chunks.min(max_threads / width).max(1);
            let shared = chunks * shared_per_chunk(np, self.rule, elem, width);
            let cfg = lrnnx_kernels::cuda::config(
                (d.div_ceil(width) as u32, b as u32, 1),
                (width as u32, chunks as u32, 1),
                shared as u32,
            );
            let (y, hlast) = (out.slice(..b * l * d), out.slice(b * l * d..));
            let ints = [l, d, n, k, r].map(|v| v as i32);
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            builder.arg(&uz);
            for s in &slices {
                builder.arg(s);
            }
            builder.arg(&y);
            builder.arg(&hlast);
            for v in &ints {
                builder.arg(v);
            }
            // SAFETY: argument types and order match the kernel's signature;
            // every input was checked contiguous, and `out` holds y and the state.
            unsafe { builder.launch(cfg) }.w()?;
        }
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
            "Mamba's selective scan has no CUDA backward yet: train Mamba on the CPU (its fused ops have backward passes), or use the GPU for inference"
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
/// (lanes past `D` zero). No backward: training Mamba runs on the CPU.
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
