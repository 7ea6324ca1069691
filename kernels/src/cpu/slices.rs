//! Raw access to CPU tensors for the kernels: contiguous slices, shapes, and
//! parallel writes to disjoint row ranges of one buffer.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// `(B, L, D)` of a `(B, L, D)` shape, or of a `(B*L, D)` one with `B = batch`.
pub fn batch_dims(
    s: &candle_core::Shape,
    batch: usize,
    what: &str,
) -> Result<(usize, usize, usize)> {
    match *s.dims() {
        [b, l, d] => Ok((b, l, d)),
        [t, d] if batch > 0 && t % batch == 0 => Ok((batch, t / batch, d)),
        _ => candle_core::bail!(
            "{what}: expected (B, L, D), or (B*L, D) with B = {batch}; found {:?}",
            s.dims()
        ),
    }
}

/// The contiguous part of `s` that `l` describes.
pub fn contiguous<'a, T>(s: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// The contiguous CPU slice of a tensor's storage.
pub fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a Storage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    match s {
        Storage::Cpu(c) => contiguous(c.as_slice::<T>()?, l, what),
        _ => candle_core::bail!(
            "{what}: this kernel runs on the CPU only; found a tensor on {:?}",
            s.device().location()
        ),
    }
}

/// Runs `f` on the contiguous CPU slice of `t` (copied first if `t` is a
/// strided view); `what` names the tensor in errors.
pub fn with_cpu_slice<T: candle_core::WithDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    f(cpu_slice::<T>(&s, l, what)?)
}

/// A CPU tensor from a vector.
pub fn tensor<T: candle_core::WithDType>(
    v: Vec<T>,
    shape: impl Into<candle_core::Shape>,
) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Rows `(b, t)` per parallel task of the elementwise passes.
pub const ROWS_PER_TASK: usize = 64;

/// Below this many elements the elementwise passes run on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Splits `rows` rows of width `d` into parallel tasks of [`ROWS_PER_TASK`]
/// rows: `f(first row, rows)`.
pub fn for_rows(rows: usize, d: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let run = |k: usize| {
        let r0 = k * ROWS_PER_TASK;
        f(r0, ROWS_PER_TASK.min(rows - r0));
    };
    if rows * d < PARALLEL_THRESHOLD {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Runs a three-input CPU kernel on f32 or f64 storages: `f32k` or `f64k` gets
/// the contiguous slices of the three inputs. Errors name the op (`op`) and
/// the input (`names`): a strided input, or inputs of mixed or other dtypes.
pub fn dispatch3(
    op: &str,
    names: [&str; 3],
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    f32k: impl FnOnce(&[f32], &[f32], &[f32]) -> Vec<f32>,
    f64k: impl FnOnce(&[f64], &[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    let [n1, n2, n3] = names;
    let what = |name: &str| format!("{op}: {name}");
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(f32k(
            contiguous(a, l1, &what(n1))?,
            contiguous(b, l2, &what(n2))?,
            contiguous(c, l3, &what(n3))?,
        )),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(f64k(
            contiguous(a, l1, &what(n1))?,
            contiguous(b, l2, &what(n2))?,
            contiguous(c, l3, &what(n3))?,
        )),
        _ => candle_core::bail!(
            "{op}: expected {n1}, {n2} and {n3} all f32 or all f64, found {:?}, {:?}, {:?}",
            s1.dtype(),
            s2.dtype(),
            s3.dtype()
        ),
    })
}
