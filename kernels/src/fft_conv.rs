//! Channel-wise causal convolution `y[b,t,h] = sum_s k[h,s] x[b,t-s,h]`, the
//! convolution form of single-input single-output LTI layers (S4, S4D), as a
//! candle op with backward. Long inputs go through a real FFT (`realfft`),
//! short ones through the direct sum.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::cpu::contiguous;
use crate::Real;

/// Below this many taps per output the direct sum beats the FFT.
const DIRECT_MAX_TAPS: usize = 48;

/// Element types the FFT path takes.
pub trait FftReal: Real + realfft::FftNum {}
impl FftReal for f32 {}
impl FftReal for f64 {}

/// Causal (or, with `reverse`, anti-causal: `y[t] = sum_s k[s] x[t+s]`) channel-wise convolution.
#[derive(Debug, Clone, Copy)]
pub struct ChannelConv {
    /// Anti-causal direction (the adjoint of the causal one).
    pub reverse: bool,
}

/// The kernel gradient `dk[h,d] = sum_{b,t} g[b,t,h] x[b,t-d,h]` for `d < taps`.
#[derive(Debug, Clone, Copy)]
struct KernelGrad {
    taps: usize,
}

fn fft_len(n: usize) -> usize {
    n.next_power_of_two()
}

/// Per-channel work on columns of `(B, L, H)` data: gathers channel `h` of batch `b`.
fn column<T: Copy>(
    x: &[T],
    b: usize,
    l: usize,
    h: usize,
    ch: usize,
) -> impl Iterator<Item = T> + '_ {
    (0..l).map(move |t| x[(b * l + t) * h + ch])
}

fn conv_direct<T: FftReal>(xc: &[T], kc: &[T], reverse: bool, out: &mut [T]) {
    let l = xc.len();
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = T::default();
        for (s, &kv) in kc.iter().enumerate() {
            let src = if reverse { t + s } else { t.wrapping_sub(s) };
            if src < l {
                acc += kv * xc[src];
            }
        }
        *o = acc;
    }
}

struct Plans<T: FftReal> {
    n: usize,
    fwd: Arc<dyn RealToComplex<T>>,
    inv: Arc<dyn realfft::ComplexToReal<T>>,
}

impl<T: FftReal> Plans<T> {
    fn new(n: usize) -> Self {
        let mut p = RealFftPlanner::<T>::new();
        Self {
            n,
            fwd: p.plan_fft_forward(n),
            inv: p.plan_fft_inverse(n),
        }
    }

    fn spectrum(
        &self,
        data: impl Iterator<Item = T>,
        reverse_into: Option<usize>,
    ) -> Vec<Complex<T>> {
        let mut buf = vec![T::default(); self.n];
        match reverse_into {
            // Place the sequence time-reversed (for correlations).
            Some(len) => data.enumerate().for_each(|(i, v)| buf[len - 1 - i] = v),
            None => data.enumerate().for_each(|(i, v)| buf[i] = v),
        }
        let mut spec = self.fwd.make_output_vec();
        // Lengths match by construction; a failure here is a bug, not user input.
        self.fwd
            .process(&mut buf, &mut spec)
            .expect("FFT buffer sizes match the plan");
        spec
    }

    fn inverse(&self, mut spec: Vec<Complex<T>>) -> Vec<T> {
        // The imaginary parts of the DC and Nyquist bins are zero in exact
        // arithmetic; clear rounding noise so that realfft accepts them.
        spec[0].im = T::default();
        if let Some(last) = spec.last_mut() {
            last.im = T::default();
        }
        let mut out = self.inv.make_output_vec();
        self.inv
            .process(&mut spec, &mut out)
            .expect("FFT buffer sizes match the plan");
        out
    }
}

fn from_f64<T: FftReal>(v: f64) -> T {
    <T as realfft::num_traits::FromPrimitive>::from_f64(v).unwrap_or_default()
}

fn conv_cpu<T: FftReal>(
    x: &[T],
    k: &[T],
    b: usize,
    l: usize,
    h: usize,
    taps: usize,
    reverse: bool,
) -> Vec<T> {
    let mut y = vec![T::default(); b * l * h];
    let used = taps.min(l);
    let direct = used <= DIRECT_MAX_TAPS;
    let plans = (!direct).then(|| Plans::<T>::new(fft_len(l + used)));
    // Kernel spectra once per channel (time-reversed for the anti-causal direction).
    let kspec: Vec<Vec<Complex<T>>> = match &plans {
        Some(p) => (0..h)
            .into_par_iter()
            .map(|ch| {
                let kc = &k[ch * taps..ch * taps + used];
                if reverse {
                    // y[t] = sum_s k[s] x[t+s]: convolve with k reversed and shift by used-1.
                    p.spectrum(kc.iter().copied(), Some(used))
                } else {
                    p.spectrum(kc.iter().copied(), None)
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let results: Vec<(usize, Vec<T>)> = (0..b * h)
        .into_par_iter()
        .map(|task| {
            let (bi, ch) = (task / h, task % h);
            let xc: Vec<T> = column(x, bi, l, h, ch).collect();
            let kc = &k[ch * taps..ch * taps + used];
            let mut out = vec![T::default(); l];
            match &plans {
                None => conv_direct(&xc, kc, reverse, &mut out),
                Some(p) => {
                    let xs = p.spectrum(xc.iter().copied(), None);
                    let prod: Vec<Complex<T>> =
                        xs.iter().zip(&kspec[ch]).map(|(a, b)| a * b).collect();
                    let full = p.inverse(prod);
                    let scale = from_f64::<T>(1.0 / p.n as f64);
                    let shift = if reverse { used - 1 } else { 0 };
                    for (t, o) in out.iter_mut().enumerate() {
                        *o = full[t + shift] * scale;
                    }
                }
            }
            (task, out)
        })
        .collect();
    for (task, out) in results {
        let (bi, ch) = (task / h, task % h);
        for (t, v) in out.into_iter().enumerate() {
            y[(bi * l + t) * h + ch] = v;
        }
    }
    y
}

fn kernel_grad_cpu<T: FftReal>(
    x: &[T],
    g: &[T],
    b: usize,
    l: usize,
    h: usize,
    taps: usize,
) -> Vec<T> {
    let used = taps.min(l);
    let per_channel: Vec<Vec<T>> = (0..h)
        .into_par_iter()
        .map(|ch| {
            let mut dk = vec![T::default(); taps];
            if used <= DIRECT_MAX_TAPS {
                for bi in 0..b {
                    let xc: Vec<T> = column(x, bi, l, h, ch).collect();
                    let gc: Vec<T> = column(g, bi, l, h, ch).collect();
                    for (d, slot) in dk.iter_mut().take(used).enumerate() {
                        let mut acc = T::default();
                        for t in d..l {
                            acc += gc[t] * xc[t - d];
                        }
                        *slot += acc;
                    }
                }
            } else {
                // corr[d] = sum_t g[t] x[t-d]: convolve g with x reversed; index L-1+d.
                let p = Plans::<T>::new(fft_len(2 * l));
                let mut acc = vec![Complex::new(T::default(), T::default()); p.n / 2 + 1];
                for bi in 0..b {
                    let gs = p.spectrum(column(g, bi, l, h, ch), None);
                    let xs = p.spectrum(column(x, bi, l, h, ch), Some(l));
                    #[allow(clippy::assign_op_pattern)]
                    for (a, (u, v)) in acc.iter_mut().zip(gs.iter().zip(&xs)) {
                        *a = *a + u * v; // Complex<T> has no AddAssign for every FftNum
                    }
                }
                let full = p.inverse(acc);
                let scale = from_f64::<T>(1.0 / p.n as f64);
                for (d, slot) in dk.iter_mut().take(used).enumerate() {
                    *slot = full[l - 1 + d] * scale;
                }
            }
            dk
        })
        .collect();
    per_channel.concat()
}

fn dims(x: &Layout, k: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (b, l, h) = x.shape().dims3()?;
    let (hk, taps) = k.shape().dims2()?;
    if hk != h {
        candle_core::bail!("channel conv: x is (B, L, {h}) but the kernel is ({hk}, {taps})");
    }
    Ok((b, l, h, taps))
}

impl CustomOp2 for ChannelConv {
    fn name(&self) -> &'static str {
        "channel-conv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, h, taps) = dims(xl, kl)?;
        let out = match (xs, ks) {
            (CpuStorage::F32(x), CpuStorage::F32(k)) => CpuStorage::F32(conv_cpu(
                contiguous(x, xl, "channel conv: x")?,
                contiguous(k, kl, "channel conv: kernel")?,
                b,
                l,
                h,
                taps,
                self.reverse,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(k)) => CpuStorage::F64(conv_cpu(
                contiguous(x, xl, "channel conv: x")?,
                contiguous(k, kl, "channel conv: kernel")?,
                b,
                l,
                h,
                taps,
                self.reverse,
            )),
            _ => candle_core::bail!(
                "channel conv: expected x and kernel both f32 or both f64, found {:?} and {:?}",
                xs.dtype(),
                ks.dtype()
            ),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let gx = g.apply_op2_no_bwd(
            k,
            &ChannelConv {
                reverse: !self.reverse,
            },
        )?;
        let taps = k.dim(1)?;
        // For the anti-causal direction the roles of x and g swap.
        let gk = if self.reverse {
            g.apply_op2_no_bwd(x, &KernelGrad { taps })?
        } else {
            x.apply_op2_no_bwd(&g, &KernelGrad { taps })?
        };
        Ok((Some(gx), Some(gk)))
    }
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "channel-conv-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, h) = xl.shape().dims3()?;
        let out = match (xs, gs) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(kernel_grad_cpu(
                contiguous(x, xl, "channel conv: x")?,
                contiguous(g, gl, "channel conv: grad")?,
                b,
                l,
                h,
                self.taps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(kernel_grad_cpu(
                contiguous(x, xl, "channel conv: x")?,
                contiguous(g, gl, "channel conv: grad")?,
                b,
                l,
                h,
                self.taps,
            )),
            _ => candle_core::bail!("channel conv kernel grad: dtype mismatch"),
        };
        Ok((out, Shape::from((h, self.taps))))
    }
}

/// `y[b,t,h] = sum_{s<=t} k[h,s] x[b,t-s,h]` for `x (B, L, H)` and `k (H, taps)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[1f32], [2.0], [3.0]]], &Device::Cpu)?; // (1, 3, 1)
/// let k = Tensor::new(&[[1f32, 10.0]], &Device::Cpu)?;           // (1, 2)
/// let y = lrnnx_kernels::fft_conv::causal_conv(&x, &k)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 12.0, 23.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// The FFT op takes f32/f64 CPU tensors; everything else runs
/// [`crate::portable::conv::causal_conv`] (Toeplitz matmuls).
pub fn causal_conv(x: &Tensor, k: &Tensor) -> Result<Tensor> {
    if !crate::portable::use_fused_cpu(x) {
        return crate::portable::conv::causal_conv(x, k);
    }
    let k = k.to_dtype(x.dtype())?.contiguous()?;
    x.contiguous()?
        .apply_op2(&k, ChannelConv { reverse: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::vec1;
    use candle_core::{DType, Device, Var};

    fn naive(x: &[f64], k: &[f64], b: usize, l: usize, h: usize, taps: usize) -> Vec<f64> {
        let mut y = vec![0.0; b * l * h];
        for bi in 0..b {
            for t in 0..l {
                for ch in 0..h {
                    for s in 0..taps.min(t + 1) {
                        y[(bi * l + t) * h + ch] += k[ch * taps + s] * x[(bi * l + t - s) * h + ch];
                    }
                }
            }
        }
        y
    }

    #[test]
    fn direct_and_fft_paths_match_the_naive_sum() {
        // taps <= 48 takes the direct path, longer ones the FFT.
        for (b, l, h, taps) in [
            (1, 1, 1, 1),
            (2, 9, 3, 4),
            (3, 70, 5, 70),
            (2, 200, 4, 57),
            (1, 33, 2, 100),
        ] {
            let x = Tensor::randn(0f64, 1.0, (b, l, h), &Device::Cpu).unwrap();
            let k = Tensor::randn(0f64, 1.0, (h, taps), &Device::Cpu).unwrap();
            let y = vec1(&causal_conv(&x, &k).unwrap());
            let want = naive(&vec1(&x), &vec1(&k), b, l, h, taps);
            let err = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-9, "({b},{l},{h},{taps}): {err}");
            let yf = vec1(&causal_conv(&x.to_dtype(DType::F32).unwrap(), &k).unwrap());
            let errf = yf
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(errf < 1e-3, "f32 ({b},{l},{h},{taps}): {errf}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (b, l, h, taps) in [(2, 11, 3, 5), (2, 90, 2, 90)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, l, h), &Device::Cpu).unwrap())
                .unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f64, 1.0, (h, taps), &Device::Cpu).unwrap())
                .unwrap();
            let w = Tensor::randn(0f64, 1.0, (b, l, h), &Device::Cpu).unwrap();
            let loss = |x: &Tensor, k: &Tensor| {
                (causal_conv(x, k).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let grads = loss(x.as_tensor(), k.as_tensor()).backward().unwrap();
            // The loss is linear in each argument: the gradient is exact, compare with one difference.
            for (var, other_is_x) in [(&x, false), (&k, true)] {
                let g = vec1(grads.get(var.as_tensor()).unwrap());
                let base = vec1(var.as_tensor());
                for idx in [0, base.len() / 3, base.len() - 1] {
                    let mut v = base.clone();
                    v[idx] += 1.0;
                    let bumped =
                        Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap();
                    let (lx, lk) = if other_is_x {
                        (x.as_tensor().clone(), bumped)
                    } else {
                        (bumped, k.as_tensor().clone())
                    };
                    let fd = loss(&lx, &lk).to_scalar::<f64>().unwrap()
                        - loss(x.as_tensor(), k.as_tensor())
                            .to_scalar::<f64>()
                            .unwrap();
                    assert!(
                        (fd - g[idx]).abs() < 1e-8 * (1.0 + fd.abs()),
                        "({b},{l},{h},{taps}) idx {idx}: {fd} vs {}",
                        g[idx]
                    );
                }
            }
        }
    }
}
