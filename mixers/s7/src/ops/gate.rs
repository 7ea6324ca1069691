//! S7's output gating with its residual, `sigmoid(z) * y + x`, as one op
//! with its backward (three tensor ops and their buffers otherwise).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use lrnnx_kernels::cpu::{contiguous, cpu_slice, tensor, with_simd, Float};
use lrnnx_kernels::portable::use_fused_cpu;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `sigmoid(z) * y + x` for three tensors of one shape.
#[derive(Debug, Clone, Copy)]
pub struct GateResidual;

#[inline(always)]
fn sigmoid<T: Float>(z: T) -> T {
    T::c(1.0) / (T::c(1.0) + (-z).exp_())
}

#[inline(always)]
fn chunk_fwd_impl<T: Float>(z: &[T], y: &[T], x: &[T], o: &mut [T]) {
    let n = o.len();
    let (z, y, x) = (&z[..n], &y[..n], &x[..n]);
    for i in 0..n {
        o[i] = sigmoid(z[i]) * y[i] + x[i];
    }
}

with_simd! {
    fn chunk_fwd<T: Float>(z: &[T], y: &[T], x: &[T], o: &mut [T]) = chunk_fwd_impl;
}

#[inline(always)]
fn chunk_bwd_impl<T: Float>(z: &[T], y: &[T], g: &[T], dz: &mut [T], dy: &mut [T]) {
    let n = dz.len();
    let (z, y, g, dy) = (&z[..n], &y[..n], &g[..n], &mut dy[..n]);
    for i in 0..n {
        let s = sigmoid(z[i]);
        dz[i] = g[i] * y[i] * s * (T::c(1.0) - s);
        dy[i] = g[i] * s;
    }
}

with_simd! {
    fn chunk_bwd<T: Float>(z: &[T], y: &[T], g: &[T], dz: &mut [T], dy: &mut [T]) = chunk_bwd_impl;
}

fn forward<T: Float>(z: &[T], y: &[T], x: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); z.len()];
    if z.len() <= CHUNK {
        chunk_fwd(z, y, x, &mut out);
        return out;
    }
    out.par_chunks_mut(CHUNK)
        .zip(
            z.par_chunks(CHUNK)
                .zip(y.par_chunks(CHUNK))
                .zip(x.par_chunks(CHUNK)),
        )
        .for_each(|(o, ((z, y), x))| chunk_fwd(z, y, x, o));
    out
}

fn backward<T: Float>(z: &[T], y: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dz = vec![T::default(); z.len()];
    let mut dy = vec![T::default(); z.len()];
    if z.len() <= CHUNK {
        chunk_bwd(z, y, g, &mut dz, &mut dy);
        return (dz, dy);
    }
    dz.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks_mut(CHUNK))
        .zip(
            z.par_chunks(CHUNK)
                .zip(y.par_chunks(CHUNK))
                .zip(g.par_chunks(CHUNK)),
        )
        .for_each(|((dz, dy), ((z, y), g))| chunk_bwd(z, y, g, dz, dy));
    (dz, dy)
}

impl CustomOp3 for GateResidual {
    fn name(&self) -> &'static str {
        "s7-gate-residual"
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        lz: &Layout,
        y: &CpuStorage,
        ly: &Layout,
        x: &CpuStorage,
        lx: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if lz.shape() != ly.shape() || lz.shape() != lx.shape() {
            candle_core::bail!(
                "S7 gate: shapes differ, {:?}, {:?} and {:?}",
                lz.shape(),
                ly.shape(),
                lx.shape()
            );
        }
        let out = match (z, y, x) {
            (CpuStorage::F32(z), CpuStorage::F32(y), CpuStorage::F32(x)) => {
                CpuStorage::F32(forward(
                    contiguous(z, lz, "S7 gate")?,
                    contiguous(y, ly, "S7 gated value")?,
                    contiguous(x, lx, "S7 residual")?,
                ))
            }
            (CpuStorage::F64(z), CpuStorage::F64(y), CpuStorage::F64(x)) => {
                CpuStorage::F64(forward(
                    contiguous(z, lz, "S7 gate")?,
                    contiguous(y, ly, "S7 gated value")?,
                    contiguous(x, lx, "S7 residual")?,
                ))
            }
            _ => candle_core::bail!(
                "S7 gate: expected all f32 or all f64, found {:?}, {:?}, {:?}",
                z.dtype(),
                y.dtype(),
                x.dtype()
            ),
        };
        Ok((out, lz.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        y: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (z, y, g) = (z.contiguous()?, y.contiguous()?, g.contiguous()?);
        fn typed<T: Float>(z: &Tensor, y: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
            let (sz, lz) = z.storage_and_layout();
            let (sy, ly) = y.storage_and_layout();
            let (sg, lg) = g.storage_and_layout();
            let (dz, dy) = backward(
                cpu_slice::<T>(&sz, lz, "S7 gate")?,
                cpu_slice::<T>(&sy, ly, "S7 gated value")?,
                cpu_slice::<T>(&sg, lg, "S7 gate gradient")?,
            );
            Ok((tensor(dz, z.shape())?, tensor(dy, z.shape())?))
        }
        let (dz, dy) = match z.dtype() {
            DType::F32 => typed::<f32>(&z, &y, &g)?,
            DType::F64 => typed::<f64>(&z, &y, &g)?,
            other => candle_core::bail!("S7 gate: unsupported dtype {other:?}"),
        };
        Ok((Some(dz), Some(dy), Some(g)))
    }
}

/// `sigmoid(z) * y + x`: the fused op for CPU f32/f64, else
/// [`super::portable::gate_residual`].
pub fn gate_residual(z: &Tensor, y: &Tensor, x: &Tensor) -> Result<Tensor> {
    if !use_fused_cpu(z) {
        return super::portable::gate_residual(z, y, x);
    }
    z.contiguous()?
        .apply_op3(&y.contiguous()?, &x.contiguous()?, GateResidual)
}
