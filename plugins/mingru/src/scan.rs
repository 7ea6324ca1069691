//! The diagonal linear recurrence `h_t = a_t * h_{t-1} + u_t` as a candle op
//! with a CPU forward (parallel over the batch) and a backward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Below this many updates the scan runs on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Runs `h_t = a_t * h_{t-1} + u_t` over `u, a (B, L, C)` from `h0 (B, C)`
/// and returns every state `(B, L, C)`. f32 or f64, CPU. Gradients flow to
/// `u`, `a` and `h0`.
///
/// (Not a doctest: rustdoc links this cdylib crate with a second copy of
/// candle. The same example runs as the unit test `doc_example`.)
///
/// ```ignore
/// use candle_core::{Device, Tensor};
/// let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu)?;
/// let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu)?;
/// let h0 = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu)?;
/// let h = lrnnx_mingru::linear_scan(&u, &a, &h0)?;
/// assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 1.5, 4.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn linear_scan(u: &Tensor, a: &Tensor, h0: &Tensor) -> Result<Tensor> {
    let dtype = u.dtype();
    let (a, h0) = (a.to_dtype(dtype)?, h0.to_dtype(dtype)?);
    u.contiguous()?
        .apply_op3(&a.contiguous()?, &h0.contiguous()?, LinearScan)
}

#[derive(Debug, Clone, Copy)]
struct LinearScan;

fn dims(u: &Shape, a: &Shape, h0: &Shape) -> Result<(usize, usize, usize)> {
    let (b, l, c) = u.dims3()?;
    if a.dims() != [b, l, c] || h0.dims() != [b, c] {
        candle_core::bail!(
            "minGRU scan: expected u (B, L, C), a (B, L, C), h0 (B, C); found u {:?}, a {:?}, h0 {:?}",
            u.dims(),
            a.dims(),
            h0.dims()
        );
    }
    Ok((b, l, c))
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((x, y)) => Ok(&s.as_slice::<T>()?[x..y]),
        None => candle_core::bail!("minGRU scan: {what} must be contiguous"),
    }
}

fn forward<T: WithDType>((b, l, c): (usize, usize, usize), u: &[T], a: &[T], h0: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); b * l * c];
    let run = |(bi, o): (usize, &mut [T])| {
        let mut h = h0[bi * c..(bi + 1) * c].to_vec();
        for t in 0..l {
            let row = (bi * l + t) * c;
            let (ut, at) = (&u[row..row + c], &a[row..row + c]);
            let ot = &mut o[t * c..(t + 1) * c];
            for j in 0..c {
                h[j] = at[j] * h[j] + ut[j];
                ot[j] = h[j];
            }
        }
    };
    let chunk = (l * c).max(1);
    if b * l * c < PARALLEL_THRESHOLD {
        out.chunks_mut(chunk).enumerate().for_each(run);
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each(run);
    }
    out
}

/// Gradients of the scan: `du_t = s_t`, `da_t = s_t * h_{t-1}`, `dh0 = a_0 * s_0`,
/// with `s_t = g_t + a_{t+1} s_{t+1}`.
fn backward<T: WithDType>(
    (b, l, c): (usize, usize, usize),
    a: &[T],
    h: &[T],
    h0: &[T],
    g: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut du = vec![T::zero(); b * l * c];
    let mut da = vec![T::zero(); b * l * c];
    let mut dh0 = vec![T::zero(); b * c];
    let task = |bi: usize, du: &mut [T], da: &mut [T], dh0: &mut [T]| {
        let mut carry = vec![T::zero(); c];
        for t in (0..l).rev() {
            let row = (bi * l + t) * c;
            let prev = if t == 0 {
                &h0[bi * c..(bi + 1) * c]
            } else {
                &h[row - c..row]
            };
            for j in 0..c {
                let s = g[row + j] + carry[j];
                du[t * c + j] = s;
                da[t * c + j] = s * prev[j];
                carry[j] = a[row + j] * s;
            }
        }
        dh0.copy_from_slice(&carry);
    };
    let chunk = (l * c).max(1);
    if c == 0 {
        return (du, da, dh0);
    }
    du.par_chunks_mut(chunk)
        .zip(da.par_chunks_mut(chunk))
        .zip(dh0.par_chunks_mut(c))
        .enumerate()
        .with_min_len(if b * l * c < PARALLEL_THRESHOLD { b } else { 1 })
        .for_each(|(bi, ((du, da), dh0))| task(bi, du, da, dh0));
    (du, da, dh0)
}

impl CustomOp3 for LinearScan {
    fn name(&self) -> &'static str {
        "mingru-linear-scan"
    }

    fn cpu_fwd(
        &self,
        su: &CpuStorage,
        lu: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        s0: &CpuStorage,
        l0: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(lu.shape(), la.shape(), l0.shape())?;
        let storage = match su.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(
                d,
                slice(su, lu, "u")?,
                slice(sa, la, "a")?,
                slice(s0, l0, "h0")?,
            )),
            DType::F64 => CpuStorage::F64(forward::<f64>(
                d,
                slice(su, lu, "u")?,
                slice(sa, la, "a")?,
                slice(s0, l0, "h0")?,
            )),
            other => candle_core::bail!("minGRU scan: unsupported dtype {other:?} (f32 or f64)"),
        };
        Ok((storage, lu.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        a: &Tensor,
        h0: &Tensor,
        h: &Tensor,
        grad_h: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims(u.shape(), a.shape(), h0.shape())?;
        let dev = u.device();
        fn host<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
            t.flatten_all()?.to_vec1::<T>()
        }
        let (du, da, dh0) = match a.dtype() {
            DType::F32 => {
                let (du, da, dh0) = backward::<f32>(
                    d,
                    &host(a)?,
                    &host(h)?,
                    &host(h0)?,
                    &host(&grad_h.to_dtype(DType::F32)?)?,
                );
                (
                    Tensor::from_vec(du, u.shape(), dev)?,
                    Tensor::from_vec(da, u.shape(), dev)?,
                    Tensor::from_vec(dh0, h0.shape(), dev)?,
                )
            }
            DType::F64 => {
                let (du, da, dh0) = backward::<f64>(
                    d,
                    &host(a)?,
                    &host(h)?,
                    &host(h0)?,
                    &host(&grad_h.to_dtype(DType::F64)?)?,
                );
                (
                    Tensor::from_vec(du, u.shape(), dev)?,
                    Tensor::from_vec(da, u.shape(), dev)?,
                    Tensor::from_vec(dh0, h0.shape(), dev)?,
                )
            }
            other => candle_core::bail!("minGRU scan backward: unsupported dtype {other:?}"),
        };
        Ok((Some(du), Some(da), Some(dh0)))
    }
}

#[cfg(test)]
mod doc_example {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn doc_example() {
        let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu).unwrap();
        let h0 = Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let h = super::linear_scan(&u, &a, &h0).unwrap();
        assert_eq!(
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 1.5, 4.0]
        );
    }
}
