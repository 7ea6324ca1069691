//! What the `Bu` ops of [`super::bilinear`] and [`super::quad`] share: the
//! per-token contractions of a GEMM row block against a vector, and the
//! CPU dispatch of an op on `(u (T, H), Wb (H*N, H))`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};

use lrnnx_kernels::cpu::{contiguous, Float};

/// `o[j] += sum_r a[r] p[r*N + j]` with `N = o.len()`: the rows of `p` weighted by `a`.
#[inline]
pub(crate) fn add_weighted_rows<T: Float>(o: &mut [T], a: &[T], p: &[T]) {
    let n = o.len();
    for (r, &ar) in a.iter().enumerate() {
        for (o, &v) in o.iter_mut().zip(&p[r * n..(r + 1) * n]) {
            *o += ar * v;
        }
    }
}

/// `row[r*N + j] = a[r] b[j]` with `N = b.len()`: the outer product of `a` and `b`.
#[inline]
pub(crate) fn outer<T: Float>(row: &mut [T], a: &[T], b: &[T]) {
    let n = b.len();
    for (r, &ar) in a.iter().enumerate() {
        for (o, &bv) in row[r * n..(r + 1) * n].iter_mut().zip(b) {
            *o = ar * bv;
        }
    }
}

/// `init + sum_j row[j] b[j]`, summed left to right.
#[inline]
pub(crate) fn dot_from<T: Float>(init: T, row: &[T], b: &[T]) -> T {
    let mut acc = init;
    for (&pv, &bv) in row.iter().zip(b) {
        acc += pv * bv;
    }
    acc
}

/// Adds a chunk's `part` into the running sum `acc`.
pub(crate) fn accumulate(acc: &mut Option<Tensor>, part: Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        Some(a) => (a + part)?,
        None => part,
    });
    Ok(())
}

/// Checks `u (T, H)` and `w (H*N, H)` and returns `(T, H)`.
pub(crate) fn check_uw(u: &Shape, w: &Shape, n: usize, what: &str) -> Result<(usize, usize)> {
    let (t, h) = u.dims2()?;
    if w.dims() != [h * n, h] {
        candle_core::bail!(
            "{what}: expected u (T, H) and W (H*N, H) with N = {n}; found u {:?}, W {:?}",
            u.dims(),
            w.dims()
        );
    }
    Ok((t, h))
}

/// An op `Bu (T, N)` of `(u (T, H), Wb (H*N, H))` in either float type.
pub(crate) trait BuOp {
    /// State size `N`.
    fn n(&self) -> usize;
    /// `Bu` from the contiguous `u (T, H)`, added into the zeros `out (T, N)`.
    fn fwd_into<T: Float>(&self, u: &[T], t: usize, h: usize, out: &mut [T]) -> Result<()>;
    /// `(du, dWb)` from `g = dL/dBu (T, N)`.
    fn bwd_typed<T: Float>(&self, u: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// `CustomOp2::cpu_fwd` of a [`BuOp`].
pub(crate) fn bu_cpu_fwd<O: BuOp>(
    op: &O,
    u: &CpuStorage,
    lu: &Layout,
    w: &CpuStorage,
    lw: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (t, h) = check_uw(lu.shape(), lw.shape(), op.n(), "S7 B input")?;
    fn fwd<O: BuOp, T: Float>(op: &O, u: &[T], t: usize, h: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); t * op.n()];
        op.fwd_into(u, t, h, &mut out)?;
        Ok(out)
    }
    let out = match (u, w) {
        (CpuStorage::F32(u), CpuStorage::F32(_)) => {
            CpuStorage::F32(fwd(op, contiguous(u, lu, "u")?, t, h)?)
        }
        (CpuStorage::F64(u), CpuStorage::F64(_)) => {
            CpuStorage::F64(fwd(op, contiguous(u, lu, "u")?, t, h)?)
        }
        _ => candle_core::bail!(
            "S7 B input: expected f32 or f64 throughout, found {:?}, {:?}",
            u.dtype(),
            w.dtype()
        ),
    };
    Ok((out, Shape::from((t, op.n()))))
}

/// `CustomOp2::bwd` of a [`BuOp`].
pub(crate) fn bu_bwd<O: BuOp>(
    op: &O,
    u: &Tensor,
    g: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (du, dw) = match u.dtype() {
        DType::F32 => op.bwd_typed::<f32>(u, g)?,
        DType::F64 => op.bwd_typed::<f64>(u, g)?,
        other => candle_core::bail!("S7 B input: unsupported dtype {other:?}"),
    };
    Ok((Some(du), Some(dw)))
}

/// `impl CustomOp2` for a [`BuOp`] named `$name`, through [`bu_cpu_fwd`] and [`bu_bwd`].
macro_rules! bu_custom_op {
    ($op:ty, $name:literal) => {
        impl candle_core::CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                u: &candle_core::CpuStorage,
                lu: &candle_core::Layout,
                w: &candle_core::CpuStorage,
                lw: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                $crate::ops::contract::bu_cpu_fwd(self, u, lu, w, lw)
            }

            fn bwd(
                &self,
                u: &candle_core::Tensor,
                _w: &candle_core::Tensor,
                _res: &candle_core::Tensor,
                g: &candle_core::Tensor,
            ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)>
            {
                $crate::ops::contract::bu_bwd(self, u, g)
            }
        }
    };
}
pub(crate) use bu_custom_op;
