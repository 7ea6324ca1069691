//! Flash attention: softmax attention computed a tile at a time with the
//! online softmax, so no `Lq x Lk` score matrix is ever built, forward and
//! backward, on the CPU (f32/f64, vectorized) and, with `--features cuda`,
//! on the GPU (f32/bf16/f16 in, f32 accumulation).
//!
//! The forward op returns `[o (B, Lq, h, d) | lse (B, h, Lq)]` in one flat
//! tensor: the log-sum-exp of every query's scores is what the backward
//! needs to recompute the probabilities tile by tile (as flash-attention 2
//! does). The backward runs in three passes (see [`cpu_bwd`]).

mod blocks;
mod cpu_bwd;
mod cpu_fwd;
#[cfg(feature = "cuda")]
mod cuda;
mod dims;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::Dispatch;
use lrnnx_kernels::cpu::simd_kernel::run_kernel;
use lrnnx_kernels::cpu::SharedMut;

use cpu_bwd::{KeyGrads, QueryGrads, RowDeltas, Saved};
use cpu_fwd::Forward;
pub(crate) use dims::Dims;
use dims::HeadsView;

/// The largest head size the kernels take.
pub const MAX_HEAD_DIM: usize = 256;

/// Softmax attention of `q (B, Lq, h, d)` over `k`, `v (B, Lk, hkv, d)`,
/// as flash-attention's `flash_attn_func` lays them out: the context
/// `(B, Lq, h, d)` in `q`'s dtype, differentiable in `q`, `k` and `v`.
///
/// `hkv` divides `h` (grouped-query attention: query head `i` reads KV head
/// `i / (h / hkv)`). With `causal`, the mask is aligned bottom-right: query
/// `i` sees keys `j <= i + Lk - Lq` (so `Lk >= Lq` is required). bf16/f16
/// inputs are computed in f32 on the CPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let q = Tensor::randn(0f32, 1.0, (2, 5, 4, 8), &dev)?;
/// let kv = Tensor::randn(0f32, 1.0, (2, 5, 2, 8), &dev)?;
/// let o = lrnnx_attn::flash_attention(&q, &kv, &kv, 8f64.powf(-0.5), true)?;
/// assert_eq!(o.dims(), &[2, 5, 4, 8]);
/// # Ok(()) }
/// ```
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!(
            "flash attention: expected q, k, v of one dtype, found {:?}, {:?}, {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    let o = attend_heads(
        &q.transpose(1, 2)?,
        &k.transpose(1, 2)?,
        &v.transpose(1, 2)?,
        scale,
        causal,
    )?;
    let (b, lq, h) = (q.dim(0)?, q.dim(1)?, q.dim(2)?);
    o.reshape((b, lq, h, o.dim(2)? / h))
}

/// Whether the flash kernels take `q`: on the CPU outside
/// [`lrnnx_kernels::portable::with_portable`], and on CUDA in builds with
/// the `cuda` feature for f32/bf16/f16 heads of at most 64.
pub(crate) fn takes(q: &Tensor) -> bool {
    match q.device() {
        candle_core::Device::Cpu => !lrnnx_kernels::portable::portable_forced(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => {
            q.dim(3).is_ok_and(|d| d <= cuda::MAX_CUDA_HEAD_DIM)
                && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
        }
        _ => false,
    }
}

/// [`flash_attention`] on `q (B, h, Lq, d)`, `k`, `v (B, hkv, Lk, d)` (any
/// strides with a unit one along `d`: the KV cache is read in place):
/// `(B, Lq, h * d)` in `q`'s dtype. Inputs the kernels do not take in
/// their dtype, or of mixed dtypes (an f32 cache under bf16 steps), run in
/// the accumulation dtype.
pub(crate) fn attend_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let dims = check(q, k, v, scale, causal)?;
    let dtype = q.dtype();
    let native = match q.device() {
        candle_core::Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        _ => matches!(dtype, DType::F32 | DType::BF16 | DType::F16),
    };
    let (q, k, v) = if native && k.dtype() == dtype && v.dtype() == dtype {
        (q.clone(), k.clone(), v.clone())
    } else {
        let w = lrnnx_kernels::portable::accumulation_dtype(dtype);
        (q.to_dtype(w)?, k.to_dtype(w)?, v.to_dtype(w)?)
    };
    let out = q.apply_op3(&k, &v, FlashAttention { dims })?;
    let o = out.narrow(0, 0, dims.o_len())?;
    let o = if o.dtype() == dtype {
        o
    } else {
        o.to_dtype(dtype)?
    };
    o.reshape((dims.b, dims.lq, dims.h * dims.d))
}

/// The sizes of a call, or an error naming what was expected.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Dims> {
    let (b, h, lq, d) = q.dims4()?;
    let (kb, hkv, lk, kd) = k.dims4()?;
    if k.dims() != v.dims() {
        candle_core::bail!(
            "flash attention: expected keys and values of one shape, found {:?} and {:?}",
            k.dims(),
            v.dims()
        );
    }
    if kb != b || kd != d {
        candle_core::bail!(
            "flash attention: expected keys (B={b}, hkv, Lk, d={d}), found {:?}",
            k.dims()
        );
    }
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!(
            "flash attention: expected KV heads dividing the {h} query heads, found {hkv}"
        );
    }
    if d == 0 || d > MAX_HEAD_DIM {
        candle_core::bail!(
            "flash attention: expected a head size in 1..={MAX_HEAD_DIM}, found {d}"
        );
    }
    if causal && lk < lq {
        candle_core::bail!(
            "flash attention: a causal mask needs at least as many keys as queries, found {lk} keys for {lq} queries"
        );
    }
    if !scale.is_finite() || scale <= 0.0 {
        candle_core::bail!("flash attention: expected a positive finite scale, found {scale}");
    }
    Ok(Dims {
        b,
        h,
        hkv,
        lq,
        lk,
        d,
        scale,
        causal,
    })
}

/// The forward op on `(q, k, v)`.
#[derive(Debug, Clone, Copy)]
struct FlashAttention {
    dims: Dims,
}

fn unsupported(what: &str, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "flash attention {what} on the CPU: expected f32 or f64, found {dtype:?}"
    ))
}

fn forward_cpu<T: Float + Dispatch + Send + Sync + candle_core::WithDType>(
    dims: Dims,
    q: (&[T], &Layout),
    k: (&[T], &Layout),
    v: (&[T], &Layout),
) -> Result<Vec<T>> {
    let mut out = vec![T::ZERO; dims.o_len() + dims.lse_len()];
    if dims.lq > 0 && dims.lk > 0 {
        run_kernel(Forward {
            dims,
            q: (q.0, HeadsView::of(q.1, "queries")?),
            k: (k.0, HeadsView::of(k.1, "keys")?),
            v: (v.0, HeadsView::of(v.1, "values")?),
            out: SharedMut::new(&mut out),
        });
    }
    Ok(out)
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.dims.o_len() + self.dims.lse_len();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(forward_cpu(self.dims, (q, l1), (k, l2), (v, l3))?)
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(forward_cpu(self.dims, (q, l1), (k, l2), (v, l3))?)
            }
            _ => return Err(unsupported("forward", s1.dtype())),
        };
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self.dims, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims;
        let op = FlashGrad {
            dims: dm,
            res: res.contiguous()?,
            dout: grad.narrow(0, 0, dm.o_len())?.contiguous()?,
        };
        let g = q.apply_op3_no_bwd(k, v, &op)?;
        let kv_len = dm.b * dm.lk * dm.hkv * dm.d;
        let heads_major = |t: Tensor, l: usize, h: usize| -> Result<Tensor> {
            t.reshape((dm.b, l, h, dm.d))?.transpose(1, 2)
        };
        // The GPU kernels' gradients are f32 whatever the inputs' dtype.
        let dq = heads_major(g.narrow(0, 0, dm.o_len())?, dm.lq, dm.h)?.to_dtype(q.dtype())?;
        let dk =
            heads_major(g.narrow(0, dm.o_len(), kv_len)?, dm.lk, dm.hkv)?.to_dtype(k.dtype())?;
        let dv = heads_major(g.narrow(0, dm.o_len() + kv_len, kv_len)?, dm.lk, dm.hkv)?
            .to_dtype(v.dtype())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The backward op on `(q, k, v)`: `[dq (B, Lq, h, d) | dk | dv (B, Lk, hkv, d)]`.
struct FlashGrad {
    dims: Dims,
    /// The forward's output `[o | lse]`, contiguous.
    res: Tensor,
    /// The context's gradient `(B, Lq, h, d)`, contiguous.
    dout: Tensor,
}

fn backward_cpu<T: Float + Dispatch + Send + Sync + candle_core::WithDType>(
    dims: Dims,
    q: (&[T], &Layout),
    k: (&[T], &Layout),
    v: (&[T], &Layout),
    res: &Tensor,
    dout: &Tensor,
) -> Result<Vec<T>> {
    let kv_len = dims.b * dims.lk * dims.hkv * dims.d;
    let mut out = vec![T::ZERO; dims.o_len() + 2 * kv_len];
    if dims.lq == 0 || dims.lk == 0 {
        return Ok(out);
    }
    let (rs, rl) = res.storage_and_layout();
    let (gs, gl) = dout.storage_and_layout();
    let res = lrnnx_kernels::cpu::cpu_slice::<T>(&rs, rl, "flash attention output")?;
    let dout = lrnnx_kernels::cpu::cpu_slice::<T>(&gs, gl, "flash attention gradient")?;
    let mut delta = vec![T::ZERO; dims.lse_len()];
    let mut saved = Saved {
        dims,
        q: (q.0, HeadsView::of(q.1, "queries")?),
        k: (k.0, HeadsView::of(k.1, "keys")?),
        v: (v.0, HeadsView::of(v.1, "values")?),
        res,
        dout,
        delta: &[],
    };
    run_kernel(RowDeltas {
        saved: &saved,
        out: SharedMut::new(&mut delta),
    });
    saved.delta = &delta;
    let (dq, dkv) = out.split_at_mut(dims.o_len());
    run_kernel(KeyGrads {
        saved: &saved,
        out: SharedMut::new(dkv),
    });
    run_kernel(QueryGrads {
        saved: &saved,
        out: SharedMut::new(dq),
    });
    Ok(out)
}

impl CustomOp3 for FlashGrad {
    fn name(&self) -> &'static str {
        "flash-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (res, dout) = (&self.res, &self.dout);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => CpuStorage::F32(
                backward_cpu(self.dims, (q, l1), (k, l2), (v, l3), res, dout)?,
            ),
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => CpuStorage::F64(
                backward_cpu(self.dims, (q, l1), (k, l2), (v, l3), res, dout)?,
            ),
            _ => return Err(unsupported("backward", s1.dtype())),
        };
        let len = self.dims.o_len() + 2 * self.dims.b * self.dims.lk * self.dims.hkv * self.dims.d;
        Ok((out, Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward(
            self.dims,
            (s1, l1),
            (s2, l2),
            (s3, l3),
            &self.res,
            &self.dout,
        )
    }
}
