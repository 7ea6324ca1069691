//! One decoding position of attention over the KV cache, fused on the CPU.
//!
//! Per `(batch, KV head)` task: the `g` query heads of the group dot every
//! cached key once (`scores`), take their softmax, and sum the cached values
//! weighted by it. The cache is read once, in place, row by row; no score,
//! mask or transposed tensor is built. Through candle's ops the same step
//! costs ~20 ops and a GEMM call per head with `m = 1`.

use candle_core::{Result, Tensor};
use lrnnx_kernels::cpu::{cpu_slice, tensor, Float};
use lrnnx_kernels::portable::use_fused_cpu;
use lrnnx_kernels::with_simd;
use rayon::prelude::*;

/// Sizes of one decoding step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeShape {
    /// Batch `B`.
    pub batch: usize,
    /// Query heads `h`.
    pub heads: usize,
    /// KV heads `hkv` (divides `h`).
    pub kv_heads: usize,
    /// Head size `d`.
    pub head_dim: usize,
    /// Positions the cache holds per `(batch, KV head)` (its third dim).
    pub capacity: usize,
    /// Positions in use, `1..=capacity`.
    pub len: usize,
}

/// `sum_i a[i] b[i]` with eight partial sums, so that it vectorizes.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::default(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let quads = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (quads[0] + quads[2]) + (quads[1] + quads[3]) + tail
}

/// One `(batch, KV head)` group of `g` query heads of size `d`: `q (g, d)`, `k`/`v (len, d)` rows of the
/// cache, `scores (g, len)` scratch, `out (g, d)`.
#[inline(always)]
fn group_impl<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: usize,
    scale: T,
    scores: &mut [T],
    out: &mut [T],
) {
    let g = q.len() / d;
    let len = scores.len() / g;
    for (j, krow) in k.chunks_exact(d).take(len).enumerate() {
        for (head, qh) in q.chunks_exact(d).enumerate() {
            scores[head * len + j] = dot(qh, krow) * scale;
        }
    }
    for (p, o) in scores.chunks_exact_mut(len).zip(out.chunks_exact_mut(d)) {
        let max = p.iter().fold(p[0], |m, &x| if x > m { x } else { m });
        let mut total = T::default();
        for x in p.iter_mut() {
            *x = (*x - max).exp_();
            total += *x;
        }
        let inv = T::c(1.0) / total;
        o.fill(T::default());
        for (&w, vrow) in p.iter().zip(v.chunks_exact(d)) {
            let w = w * inv;
            for (o, &x) in o.iter_mut().zip(vrow) {
                *o += w * x;
            }
        }
    }
}

with_simd! {
    fn group<T: Float>(q: &[T], k: &[T], v: &[T], d: usize, scale: T, scores: &mut [T], out: &mut [T]) = group_impl;
}

/// `softmax(q k^T * scale) v` for one query position: `q (B, h, d)` and the
/// caches `k`, `v (B, hkv, capacity, d)`, all contiguous; returns `(B, h*d)`.
pub(crate) fn decode<T: Float>(q: &[T], k: &[T], v: &[T], s: DecodeShape, scale: T) -> Vec<T> {
    let (d, g) = (s.head_dim, s.heads / s.kv_heads);
    let mut out = vec![T::default(); s.batch * s.heads * d];
    out.par_chunks_mut(g * d)
        .enumerate()
        .for_each_init(Vec::new, |scores, (task, out)| {
            scores.resize(g * s.len, T::default());
            let cache = task * s.capacity * d..(task * s.capacity + s.len) * d;
            let qg = &q[task * g * d..(task + 1) * g * d];
            group(qg, &k[cache.clone()], &v[cache], d, scale, scores, out);
        });
    out
}

/// [`decode`] on tensors: `q (B, h, d)` and the caches `(B, hkv, capacity, d)`
/// on the CPU; `None` where the fused path does not apply (other devices or
/// dtypes, caches of another dtype or non-contiguous, inside
/// [`lrnnx_kernels::portable::with_portable`]), so that the caller takes
/// candle's ops.
pub(crate) fn decode_tensors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    len: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !use_fused_cpu(q) || !k.is_contiguous() || !v.is_contiguous() {
        return Ok(None);
    }
    let (batch, heads, head_dim) = q.dims3()?;
    let (_, kv_heads, capacity, _) = k.dims4()?;
    let shape = DecodeShape {
        batch,
        heads,
        kv_heads,
        head_dim,
        capacity,
        len,
    };
    let q = q.contiguous()?;
    fn run<T: Float>(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: DecodeShape,
        scale: f64,
    ) -> Result<Tensor> {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let out = decode(
            cpu_slice::<T>(&qs, ql, "attention query")?,
            cpu_slice::<T>(&ks, kl, "attention key cache")?,
            cpu_slice::<T>(&vs, vl, "attention value cache")?,
            s,
            T::c(scale),
        );
        tensor(out, (s.batch, 1, s.heads * s.head_dim))
    }
    match (q.dtype(), k.dtype(), v.dtype()) {
        (candle_core::DType::F32, candle_core::DType::F32, candle_core::DType::F32) => {
            run::<f32>(&q, k, v, shape, scale).map(Some)
        }
        (candle_core::DType::F64, candle_core::DType::F64, candle_core::DType::F64) => {
            run::<f64>(&q, k, v, shape, scale).map(Some)
        }
        _ => Ok(None),
    }
}

/// `lin(x)` for the few rows of a decoding step, reading the weight in place
/// (candle's GEMM repacks the whole weight on every call); `None` where it
/// does not apply (not the CPU, not f32/f64, a weight of another dtype, inside
/// [`lrnnx_kernels::portable::with_portable`]), so that the caller takes candle's.
pub(crate) fn step_linear(x: &Tensor, lin: &candle_nn::Linear) -> Result<Option<Tensor>> {
    let w = lin.weight();
    let bias_dtype_matches = lin.bias().is_none_or(|b| b.dtype() == x.dtype());
    if !use_fused_cpu(x) || x.dtype() != w.dtype() || !bias_dtype_matches || !w.is_contiguous() {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    fn run<T: Float>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, k: usize) -> Result<Vec<T>> {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let bias = b.map(|b| b.contiguous()).transpose()?;
        let guard = bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &guard {
            Some((s, l)) => Some(cpu_slice::<T>(s, l, "projection bias")?),
            None => None,
        };
        Ok(lrnnx_kernels::cpu::matmul_t(
            cpu_slice::<T>(&xs, xl, "step input")?,
            k,
            cpu_slice::<T>(&ws, wl, "projection weight")?,
            bias,
        ))
    }
    dims.pop();
    dims.push(n);
    let y = match x.dtype() {
        candle_core::DType::F32 => tensor(run::<f32>(&x, w, lin.bias(), k)?, dims)?,
        candle_core::DType::F64 => tensor(run::<f64>(&x, w, lin.bias(), k)?, dims)?,
        _ => return Ok(None),
    };
    Ok(Some(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention of one query per head, in f64 with the standard `exp`.
    fn reference(q: &[f64], k: &[f64], v: &[f64], s: DecodeShape, scale: f64) -> Vec<f64> {
        let (d, g) = (s.head_dim, s.heads / s.kv_heads);
        let mut out = vec![0.0; s.batch * s.heads * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let row = |c: &[f64], j: usize| {
                    let at = ((b * s.kv_heads + h / g) * s.capacity + j) * d;
                    c[at..at + d].to_vec()
                };
                let qh = &q[(b * s.heads + h) * d..(b * s.heads + h + 1) * d];
                let logits: Vec<f64> = (0..s.len)
                    .map(|j| row(k, j).iter().zip(qh).map(|(a, b)| a * b).sum::<f64>() * scale)
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = w.iter().sum();
                for (j, wj) in w.iter().enumerate() {
                    for (i, x) in row(v, j).iter().enumerate() {
                        out[(b * s.heads + h) * d + i] += wj / total * x;
                    }
                }
            }
        }
        out
    }

    /// `n` values uniform in `[-2, 2)`, reproducible from `seed`.
    fn random(n: usize, seed: u64) -> Vec<f64> {
        lrnnx_testing::uniform_vec(n, seed, -2.0, 2.0)
    }

    #[test]
    fn fused_decode_equals_plain_attention() {
        // (B, h, hkv, d, capacity, len): GQA, odd head sizes, a full and a one-key cache.
        for (i, &(batch, heads, kv_heads, head_dim, capacity, len)) in [
            (1, 1, 1, 1, 1, 1),
            (2, 4, 2, 5, 9, 7),
            (3, 6, 3, 19, 40, 40),
            (2, 4, 4, 64, 300, 257),
            (1, 8, 1, 16, 5, 1),
        ]
        .iter()
        .enumerate()
        {
            let s = DecodeShape {
                batch,
                heads,
                kv_heads,
                head_dim,
                capacity,
                len,
            };
            let q = random(batch * heads * head_dim, 3 * i as u64);
            let cache = batch * kv_heads * capacity * head_dim;
            let (k, v) = (
                random(cache, 3 * i as u64 + 1),
                random(cache, 3 * i as u64 + 2),
            );
            let scale = 1.0 / (head_dim as f64).sqrt();
            let want = reference(&q, &k, &v, s, scale);
            let got64 = decode(&q, &k, &v, s, scale);
            let err64 = want
                .iter()
                .zip(&got64)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err64 < 1e-12, "shape {i}: f64 error {err64:e}");
            let f = |x: &[f64]| x.iter().map(|&y| y as f32).collect::<Vec<f32>>();
            let got32 = decode(&f(&q), &f(&k), &f(&v), s, scale as f32);
            let err32 = want
                .iter()
                .zip(&got32)
                .map(|(a, &b)| (a - b as f64).abs())
                .fold(0.0, f64::max);
            assert!(err32 < 2e-6, "shape {i}: f32 error {err32:e}");
        }
    }

    #[test]
    fn fused_paths_step_aside_for_the_portable_path_and_narrow_dtypes() {
        use candle_core::{DType, Device};
        use lrnnx_kernels::portable::with_portable;
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).expect("q");
        let kv = Tensor::randn(0f32, 1.0, (2, 2, 5, 3), &dev).expect("cache");
        let lin = candle_nn::Linear::new(
            Tensor::randn(0f32, 1.0, (6, 3), &dev).expect("w"),
            Some(Tensor::randn(0f32, 1.0, 6, &dev).expect("b")),
        );
        let x = Tensor::randn(0f32, 1.0, (2, 1, 3), &dev).expect("x");
        // CPU f32 takes the fused kernels...
        assert!(decode_tensors(&q, &kv, &kv, 4, 0.5).expect("ok").is_some());
        assert!(step_linear(&x, &lin).expect("ok").is_some());
        // ...the portable path (what CUDA runs) does not,
        with_portable(|| {
            assert!(decode_tensors(&q, &kv, &kv, 4, 0.5).expect("ok").is_none());
            assert!(step_linear(&x, &lin).expect("ok").is_none());
        });
        // nor do bf16 inputs, nor f32 ones on a bf16 cache.
        let (qb, kvb, xb) = (
            q.to_dtype(DType::BF16).expect("q"),
            kv.to_dtype(DType::BF16).expect("cache"),
            x.to_dtype(DType::BF16).expect("x"),
        );
        assert!(decode_tensors(&qb, &kvb, &kvb, 4, 0.5)
            .expect("ok")
            .is_none());
        assert!(decode_tensors(&q, &kvb, &kvb, 4, 0.5)
            .expect("ok")
            .is_none());
        assert!(step_linear(&xb, &lin).expect("ok").is_none());
    }

    #[test]
    fn step_linear_equals_candle_linear() {
        use candle_core::{Device, Module};
        let dev = Device::Cpu;
        for (rows, k, n, bias) in [
            (1, 1, 1, false),
            (3, 7, 5, true),
            (8, 256, 768, true),
            (2, 33, 130, false),
        ] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).expect("w");
            let b = bias.then(|| Tensor::randn(0f32, 1.0, n, &dev).expect("b"));
            let lin = candle_nn::Linear::new(w, b);
            let x = Tensor::randn(0f32, 1.0, (rows, 1, k), &dev).expect("x");
            let want = lin.forward(&x).expect("candle");
            let got = step_linear(&x, &lin).expect("ok").expect("CPU f32 applies");
            assert_eq!(got.dims(), want.dims());
            let err = (got - &want)
                .and_then(|d| d.abs())
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f32>())
                .expect("error");
            assert!(err < 1e-4, "rows {rows} k {k} n {n}: {err}");
        }
    }
}
