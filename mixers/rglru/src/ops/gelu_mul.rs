//! `gelu(g) * h` (exact erf GELU) as one op with its backward: the output
//! gating of the RG-LRU block.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{contiguous, cpu_slice, gelu, gelu_and_grad, tensor, with_simd, Float};
use lrnnx_kernels::portable::use_fused_cpu;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `gelu(g) * h` for two tensors of one shape.
#[derive(Debug, Clone, Copy)]
pub struct GeluMul;

#[inline(always)]
fn chunk_fwd_impl<T: Float>(g: &[T], h: &[T], o: &mut [T]) {
    let n = o.len();
    let (g, h) = (&g[..n], &h[..n]);
    for i in 0..n {
        o[i] = gelu(g[i]) * h[i];
    }
}

with_simd! {
    fn chunk_fwd<T: Float>(g: &[T], h: &[T], o: &mut [T]) = chunk_fwd_impl;
}

#[inline(always)]
fn chunk_bwd_impl<T: Float>(g: &[T], h: &[T], dy: &[T], dg: &mut [T], dh: &mut [T]) {
    let n = dg.len();
    let (g, h, dy, dh) = (&g[..n], &h[..n], &dy[..n], &mut dh[..n]);
    for i in 0..n {
        let (v, dv) = gelu_and_grad(g[i]);
        dg[i] = dy[i] * h[i] * dv;
        dh[i] = dy[i] * v;
    }
}

with_simd! {
    fn chunk_bwd<T: Float>(g: &[T], h: &[T], dy: &[T], dg: &mut [T], dh: &mut [T]) = chunk_bwd_impl;
}

pub(crate) fn forward<T: Float>(g: &[T], h: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(h.par_chunks(CHUNK)))
        .for_each(|(o, (g, h))| chunk_fwd(g, h, o));
    out
}

/// `(dL/dg, dL/dh)` from `dy = dL/d(gelu(g) h)`.
pub(crate) fn backward<T: Float>(g: &[T], h: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dg = vec![T::default(); g.len()];
    let mut dh = vec![T::default(); g.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(dh.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(h.par_chunks(CHUNK))
                .zip(dy.par_chunks(CHUNK)),
        )
        .for_each(|((dg, dh), ((g, h), dy))| chunk_bwd(g, h, dy, dg, dh));
    (dg, dh)
}

impl CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "gelu-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        h: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if lg.shape() != lh.shape() {
            candle_core::bail!(
                "gelu-mul: shapes differ, {:?} and {:?}",
                lg.shape(),
                lh.shape()
            );
        }
        let out = match (g, h) {
            (CpuStorage::F32(g), CpuStorage::F32(h)) => CpuStorage::F32(forward(
                contiguous(g, lg, "gelu-mul gate")?,
                contiguous(h, lh, "gelu-mul input")?,
            )),
            (CpuStorage::F64(g), CpuStorage::F64(h)) => CpuStorage::F64(forward(
                contiguous(g, lg, "gelu-mul gate")?,
                contiguous(h, lh, "gelu-mul input")?,
            )),
            _ => candle_core::bail!(
                "gelu-mul: expected both f32 or both f64, found {:?}, {:?}",
                g.dtype(),
                h.dtype()
            ),
        };
        Ok((out, lg.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, h, dy) = (g.contiguous()?, h.contiguous()?, dy.contiguous()?);
        fn typed<T: Float>(g: &Tensor, h: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
            let (sg, lg) = g.storage_and_layout();
            let (sh, lh) = h.storage_and_layout();
            let (sd, ld) = dy.storage_and_layout();
            let (dg, dh) = backward(
                cpu_slice::<T>(&sg, lg, "gelu-mul gate")?,
                cpu_slice::<T>(&sh, lh, "gelu-mul input")?,
                cpu_slice::<T>(&sd, ld, "gelu-mul gradient")?,
            );
            Ok((tensor(dg, g.shape())?, tensor(dh, g.shape())?))
        }
        let (dg, dh) = match g.dtype() {
            DType::F32 => typed::<f32>(&g, &h, &dy)?,
            DType::F64 => typed::<f64>(&g, &h, &dy)?,
            other => candle_core::bail!("gelu-mul: unsupported dtype {other:?}"),
        };
        Ok((Some(dg), Some(dh)))
    }
}

/// `gelu(g) * h` with exact-erf GELU: fused for CPU f32/f64 tensors of one
/// dtype, else [`super::portable::gelu_mul`] (in the accumulation dtype).
pub fn gelu_mul(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    if !(use_fused_cpu(g) && h.dtype() == g.dtype() && h.device().is_cpu()) {
        return super::portable::gelu_mul(g, h);
    }
    g.contiguous()?.apply_op2(&h.contiguous()?, GeluMul)
}
