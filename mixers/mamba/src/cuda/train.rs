//! The selective scan on CUDA with a backward pass, for training.
//!
//! candle's custom ops take at most three tensors and return gradients only
//! for those, while the scan has seven differentiable inputs. So they travel
//! as one flat tensor, concatenated in a fixed order ([`Packing`]): the
//! forward op ([`TrainScan`]) runs the forward kernel on views of it, and its
//! backward runs the backward kernel ([`TrainScanGrad`]), whose output has
//! the same packing, so that candle's backward of the concatenation hands
//! each input its gradient. When `dtA` is `delta` (outside event mode) it is
//! packed once and its gradient is the sum of both uses.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor,
};

use super::{function, launch_forward, rule_code, ForwardInputs, Kernels, STATE_SIZES};
use crate::cpu::recurrence::Rule;
use crate::scan_args::{ScanArgs, ScanSizes};

/// Positions per chunk of the backward kernel (its `THREADS * ITEMS`).
const BWD_CHUNK: usize = 128 * 4;
/// Threads per channel of the backward kernel.
const BWD_THREADS: u32 = 128;
/// Channels per block of the backward kernel (its `GROUP`).
const BWD_GROUP: usize = 4;

/// Where each input sits in the flat tensor: `uz`, `delta`, `dtA` (absent
/// when it is `delta`), `xdbl`, `A`, the skip, `h0`, and xdbl's `[B | C]`
/// columns again, transposed to `(B, 2N, L)`: the forward kernel reads
/// `xdbl`, the backward kernel the transposed copy (coalesced loads and
/// gradient atomics), so `xdbl`'s own piece gets a zero gradient and the
/// copy's flows back through the transpose.
#[derive(Debug, Clone, Copy)]
struct Packing {
    sizes: ScanSizes,
    same_dta: bool,
}

impl Packing {
    fn lens(&self) -> [usize; 8] {
        let ScanSizes { b, l, d, n, r } = self.sizes;
        let bld = b * l * d;
        [
            2 * bld,
            bld,
            if self.same_dta { 0 } else { bld },
            b * l * (r + 2 * n),
            d * n,
            d,
            self.sizes.state().iter().product(),
            b * 2 * n * l,
        ]
    }

    fn total(&self) -> usize {
        self.lens().iter().sum()
    }

    /// The eight pieces of `buf` (a flat buffer of this packing from `start`);
    /// `dtA` is `delta`'s piece when they are one.
    fn views<'a, T>(
        &self,
        buf: &'a candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        start: usize,
    ) -> [CudaView<'a, T>; 8] {
        let lens = self.lens();
        let mut at = start;
        let mut piece = |k: usize| {
            let v = buf.slice(at..at + lens[k]);
            at += lens[k];
            v
        };
        let (uz, delta) = (piece(0), piece(1));
        let dta = piece(2);
        let dta = if self.same_dta {
            buf.slice(start + lens[0]..start + lens[0] + lens[1])
        } else {
            dta
        };
        [
            uz,
            delta,
            dta,
            piece(3),
            piece(4),
            piece(5),
            piece(6),
            piece(7),
        ]
    }

    /// The output's length: `y (B L D)` then the last state.
    fn out_len(&self) -> usize {
        let ScanSizes { b, l, d, .. } = self.sizes;
        b * l * d + self.lens()[6]
    }
}

fn unsupported(dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "Mamba selective scan on CUDA: expected f32 or f64, found {dtype:?}"
    ))
}

fn check(p: &Packing, layout: &Layout, what: &str) -> Result<()> {
    if !layout.is_contiguous() || layout.shape().elem_count() != p.total() {
        candle_core::bail!(
            "Mamba selective scan ({what}): expected a contiguous packed input of {} elements, found {:?}",
            p.total(),
            layout.shape()
        );
    }
    Ok(())
}

/// The forward op on the packed inputs.
#[derive(Debug, Clone, Copy)]
struct TrainScan {
    pack: Packing,
    rule: Rule,
}

impl TrainScan {
    fn run<T: DeviceRepr + CudaDType>(
        &self,
        p: &CudaStorage,
        lp: &Layout,
        prec: &str,
    ) -> Result<(CudaStorage, Shape)> {
        check(&self.pack, lp, "forward")?;
        let dev = p.device().clone();
        let [uz, delta, dta, xdbl, a, skip, h0, _] =
            self.pack.views(p.as_cuda_slice::<T>()?, lp.start_offset());
        let inputs: ForwardInputs<T> = [uz, delta, dta, xdbl, a, skip, h0];
        let bld = self.pack.out_len() - self.pack.lens()[6];
        // SAFETY: the kernel writes every y element and every state entry.
        let out = unsafe { dev.alloc::<T>(self.pack.out_len())? };
        let (y, hlast) = (out.slice(..bld), out.slice(bld..));
        launch_forward(&dev, &inputs, &y, &hlast, self.pack.sizes, self.rule, prec)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(self.pack.out_len()),
        ))
    }
}

impl CustomOp1 for TrainScan {
    fn name(&self) -> &'static str {
        "mamba-selective-scan-cuda-train"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the CUDA selective scan got CPU tensors")
    }

    fn cuda_fwd(&self, p: &CudaStorage, lp: &Layout) -> Result<(CudaStorage, Shape)> {
        match p.dtype() {
            DType::F32 => self.run::<f32>(p, lp, "f32"),
            DType::F64 => self.run::<f64>(p, lp, "f64"),
            other => Err(unsupported(other)),
        }
    }

    fn bwd(&self, packed: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let op = TrainScanGrad {
            pack: self.pack,
            rule: self.rule,
        };
        Ok(Some(packed.apply_op2_no_bwd(&grad, &op)?))
    }
}

/// The backward kernel: `(packed inputs, grad of [y | last state])` to the
/// packed gradient of the inputs.
#[derive(Debug, Clone, Copy)]
struct TrainScanGrad {
    pack: Packing,
    rule: Rule,
}

impl TrainScanGrad {
    fn run<T: DeviceRepr + CudaDType + ValidAsZeroBits>(
        &self,
        p: &CudaStorage,
        lp: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        prec: &str,
    ) -> Result<(CudaStorage, Shape)> {
        check(&self.pack, lp, "backward")?;
        let pack = self.pack;
        if !lg.is_contiguous() || lg.shape().elem_count() != pack.out_len() {
            candle_core::bail!(
                "Mamba selective scan backward: expected a contiguous gradient of {} elements, found {:?}",
                pack.out_len(),
                lg.shape()
            );
        }
        let ScanSizes { b, l, d, n, r } = pack.sizes;
        let dev = p.device().clone();
        // Zeroed: dxdbl, dA and the skip's gradient are sums of atomic adds,
        // and dt_low's columns and the state's padding lanes stay zero.
        let dp = dev.alloc_zeros::<T>(pack.total())?;
        if b * l * d > 0 {
            let Some(&np) = STATE_SIZES.iter().find(|&&s| s >= n) else {
                candle_core::bail!(
                    "Mamba selective scan on CUDA: d_state must be at most {}, found {n}",
                    STATE_SIZES[STATE_SIZES.len() - 1]
                )
            };
            // The kernel's order: xdbl's place taken by the transposed [B | C].
            let [uz, delta, dta, _, a, skip, h0, bct] =
                pack.views(p.as_cuda_slice::<T>()?, lp.start_offset());
            let inputs = [uz, delta, dta, bct, a, skip, h0];
            let [duz, ddelta, ddta, _, da, dskip, dh0, dbct] = pack.views(&dp, 0);
            let grads = [duz, ddelta, ddta, dbct, da, dskip, dh0];
            let gbuf = g.as_cuda_slice::<T>()?;
            let (gy, ghlast) = (
                gbuf.slice(lg.start_offset()..lg.start_offset() + b * l * d),
                gbuf.slice(lg.start_offset() + b * l * d..lg.start_offset() + pack.out_len()),
            );
            let chunks = l.div_ceil(BWD_CHUNK);
            // SAFETY: the kernel writes each entering state before reading it.
            let entering = unsafe { dev.alloc::<T>(b * d * chunks * np)? };
            let func = function(
                &dev,
                Kernels::Backward,
                &format!("selective_scan_bwd_{prec}_n{np}_r{}", rule_code(self.rule)),
            )?;
            let cfg = lrnnx_kernels::cuda::config(
                (d.div_ceil(BWD_GROUP) as u32, b as u32, 1),
                (BWD_THREADS, BWD_GROUP as u32, 1),
                0,
            );
            let ints = [i32::from(pack.same_dta)]
                .into_iter()
                .chain([l, d, n, r + 2 * n, r].map(|v| v as i32))
                .collect::<Vec<_>>();
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            for v in &inputs {
                builder.arg(v);
            }
            builder.arg(&gy);
            builder.arg(&ghlast);
            for v in &grads {
                builder.arg(v);
            }
            builder.arg(&entering);
            for v in &ints {
                builder.arg(v);
            }
            // SAFETY: argument types and order match `selective_scan_bwd_*`;
            // the packed views hold their documented shapes (checked above),
            // and `entering` holds B D chunks NP values.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(dp, dev),
            Shape::from(pack.total()),
        ))
    }
}

impl CustomOp2 for TrainScanGrad {
    fn name(&self) -> &'static str {
        "mamba-selective-scan-cuda-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the CUDA selective scan backward got CPU tensors")
    }

    fn cuda_fwd(
        &self,
        p: &CudaStorage,
        lp: &Layout,
        g: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match p.dtype() {
            DType::F32 => self.run::<f32>(p, lp, g, lg, "f32"),
            DType::F64 => self.run::<f64>(p, lp, g, lg, "f64"),
            other => Err(unsupported(other)),
        }
    }
}

/// The scan on the GPU, differentiable in every input (`uz`, `delta`, `dtA`,
/// `xdbl`, `A`, the skip and `h0`): `(y (B, L, D), last state (B, ceil(D/16),
/// N, 16))`, as [`super::selective_scan_gpu`] returns them.
pub fn selective_scan_gpu_train(args: &ScanArgs) -> Result<(Tensor, Tensor)> {
    let sizes = args.sizes()?;
    let dtype = args.uz.dtype();
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(unsupported(dtype));
    }
    let pack = Packing {
        sizes,
        same_dta: args.dta.id() == args.delta.id(),
    };
    let mut pieces = vec![args.uz, args.delta];
    if !pack.same_dta {
        pieces.push(args.dta);
    }
    let ScanSizes { n, r, .. } = sizes;
    let bct = args
        .xdbl
        .narrow(2, r, 2 * n)?
        .transpose(1, 2)?
        .contiguous()?;
    pieces.extend([args.xdbl, args.a, args.skip, args.h0, &bct]);
    let flat = pieces
        .iter()
        .map(|t| t.to_dtype(dtype)?.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    let packed = Tensor::cat(&flat, 0)?;
    let out = packed.apply_op1(TrainScan {
        pack,
        rule: args.rule,
    })?;
    let ScanSizes { b, l, d, .. } = sizes;
    let y = out.narrow(0, 0, b * l * d)?.reshape((b, l, d))?;
    let h = out
        .narrow(0, b * l * d, pack.lens()[6])?
        .reshape(sizes.state().to_vec())?;
    Ok((y, h))
}
