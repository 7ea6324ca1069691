//! Exact (erf) GELU as a candle op with an exact backward (candle's own
//! `gelu_erf` backward rounds `1/sqrt(2 pi)` to six digits), vectorized in
//! f32 through the branch-free `erf` of `util`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{
    self as util, contiguous, cpu_slice, gelu_and_grad, tensor, with_simd, Float,
};
use lrnnx_kernels::portable::use_fused_cpu;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `0.5 x (1 + erf(x / sqrt 2))`.
#[derive(Debug, Clone, Copy)]
pub struct Gelu;

#[inline(always)]
fn chunk_fwd_impl<T: Float>(x: &[T], o: &mut [T]) {
    let n = o.len();
    let x = &x[..n];
    for i in 0..n {
        o[i] = util::gelu(x[i]);
    }
}

with_simd! {
    fn chunk_fwd<T: Float>(x: &[T], o: &mut [T]) = chunk_fwd_impl;
}

#[inline(always)]
fn chunk_bwd_impl<T: Float>(x: &[T], g: &[T], o: &mut [T]) {
    let n = o.len();
    let (x, g) = (&x[..n], &g[..n]);
    for i in 0..n {
        o[i] = g[i] * gelu_and_grad(x[i]).1;
    }
}

with_simd! {
    fn chunk_bwd<T: Float>(x: &[T], g: &[T], o: &mut [T]) = chunk_bwd_impl;
}

fn forward<T: Float>(x: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| chunk_fwd(x, o));
    out
}

fn backward<T: Float>(x: &[T], g: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| chunk_bwd(x, g, o));
    out
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-exact"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match x {
            CpuStorage::F32(x) => CpuStorage::F32(forward(contiguous(x, l, "gelu input")?)),
            CpuStorage::F64(x) => CpuStorage::F64(forward(contiguous(x, l, "gelu input")?)),
            _ => candle_core::bail!("gelu: unsupported dtype {:?}", x.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (x, g) = (x.contiguous()?, g.contiguous()?);
        fn typed<T: Float>(x: &Tensor, g: &Tensor) -> Result<Tensor> {
            let (sx, lx) = x.storage_and_layout();
            let (sg, lg) = g.storage_and_layout();
            let d = backward(
                cpu_slice::<T>(&sx, lx, "gelu input")?,
                cpu_slice::<T>(&sg, lg, "gelu gradient")?,
            );
            tensor(d, x.shape())
        }
        Ok(Some(match x.dtype() {
            DType::F32 => typed::<f32>(&x, &g)?,
            DType::F64 => typed::<f64>(&x, &g)?,
            other => candle_core::bail!("gelu: unsupported dtype {other:?}"),
        }))
    }
}

/// Exact-erf GELU of `x`: the fused op for CPU f32/f64, else
/// [`super::portable::gelu`].
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !use_fused_cpu(x) {
        return super::portable::gelu(x);
    }
    x.contiguous()?.apply_op1(Gelu)
}
