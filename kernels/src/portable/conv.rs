//! The kernels' convolutions from candle ops.
//!
//! - [`depthwise_conv`]: the short causal depthwise convolution (a few taps),
//!   as a sum of shifted, scaled copies of the input;
//! - [`causal_conv`]: the long channel-wise causal convolution of the LTI
//!   layers' convolution mode, as batched matmuls with each channel's Toeplitz
//!   matrix, built by tiling the kernel and processed in groups of channels so
//!   that no group's tilings exceed [`TOEPLITZ_BUDGET`] elements.

use candle_core::{DType, Result, Tensor};

/// Largest number of Toeplitz-matrix elements materialised at once (256 MiB in f32).
pub const TOEPLITZ_BUDGET: usize = 1 << 26;

/// `y[b,t,d] = bias[d] + sum_k w[d,k] x[b, t-(W-1)+k, d]` (zero before `t = 0`)
/// for `x (B, L, D)`, or `(B*L, D)` with `B = batch`; `w (D, W)`, `bias (D)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[1f32], [2.0], [3.0]]], &Device::Cpu)?; // (1, 3, 1)
/// let w = Tensor::new(&[[10f32, 1.0]], &Device::Cpu)?;          // (1, 2)
/// let b = Tensor::new(&[0.5f32], &Device::Cpu)?;
/// let y = lrnnx_kernels::portable::conv::depthwise_conv(&x, &w, &b, 1)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1.5, 12.5, 23.5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn depthwise_conv(x: &Tensor, w: &Tensor, bias: &Tensor, batch: usize) -> Result<Tensor> {
    let flat = x.rank() == 2;
    let x3 = if flat {
        let (rows, d) = x.dims2()?;
        if batch == 0 || rows % batch != 0 {
            candle_core::bail!("depthwise conv: {rows} rows do not split into a batch of {batch}");
        }
        x.reshape((batch, rows / batch, d))?
    } else {
        x.clone()
    };
    let (b, l, d) = x3.dims3()?;
    let (wd, taps) = w.dims2()?;
    if wd != d || bias.dims() != [d] {
        candle_core::bail!(
            "depthwise conv: expected w ({d}, W) and bias ({d}) for {d} channels, found {:?} and {:?}",
            w.shape(),
            bias.shape()
        );
    }
    let w = w.to_dtype(x.dtype())?;
    let pad = Tensor::zeros((b, taps.saturating_sub(1), d), x.dtype(), x.device())?;
    let padded = Tensor::cat(&[&pad, &x3], 1)?;
    let mut y = bias
        .to_dtype(x.dtype())?
        .reshape((1, 1, d))?
        .broadcast_as((b, l, d))?
        .contiguous()?;
    for k in 0..taps {
        let wk = w.narrow(1, k, 1)?.reshape((1, 1, d))?;
        y = (y + padded.narrow(1, k, l)?.broadcast_mul(&wk)?)?;
    }
    if flat {
        y = y.reshape((b * l, d))?;
    }
    Ok(y)
}

/// `y[b,t,h] = sum_{s<=t} k[h,s] x[b,t-s,h]` for `x (B, L, H)` and `k (H, T)`
/// (taps past `T` are zero), in `x`'s dtype.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[1f32], [2.0], [3.0]]], &Device::Cpu)?; // (1, 3, 1)
/// let k = Tensor::new(&[[1f32, 10.0]], &Device::Cpu)?;           // (1, 2)
/// let y = lrnnx_kernels::portable::conv::causal_conv(&x, &k)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 12.0, 23.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn causal_conv(x: &Tensor, k: &Tensor) -> Result<Tensor> {
    let (_, l, h) = x.dims3()?;
    let (kh, taps) = k.dims2()?;
    if kh != h {
        candle_core::bail!(
            "causal conv: expected a kernel ({h}, T) for {h} channels, found {:?}",
            k.shape()
        );
    }
    if l == 0 || h == 0 {
        return Ok(x.clone());
    }
    if l * l > TOEPLITZ_BUDGET {
        candle_core::bail!(
            "causal conv: the portable convolution builds an L x L matrix per channel and \
             handles L up to {} (found L = {l}); use the layer's scan mode for longer inputs",
            (TOEPLITZ_BUDGET as f64).sqrt() as usize
        );
    }
    let k = k.to_dtype(x.dtype())?;
    // The first L taps, zero-padded to L.
    let k = if taps >= l {
        k.narrow(1, 0, l)?
    } else {
        Tensor::cat(
            &[&k, &Tensor::zeros((h, l - taps), x.dtype(), x.device())?],
            1,
        )?
    };
    // (H, B, L): each channel's inputs as rows, so that y = x M with M[j, t] = k[t - j].
    let xt = x.permute((2, 0, 1))?.contiguous()?;
    if l == 1 {
        return xt
            .broadcast_mul(&k.unsqueeze(1)?)?
            .permute((1, 2, 0))?
            .contiguous();
    }
    let group = (TOEPLITZ_BUDGET / (2 * l * l)).clamp(1, h);
    let mut outs = Vec::with_capacity(h.div_ceil(group));
    for start in (0..h).step_by(group) {
        let g = group.min(h - start);
        outs.push(
            xt.narrow(0, start, g)?
                .matmul(&toeplitz(&k.narrow(0, start, g)?)?)?,
        );
    }
    Tensor::cat(&outs, 0)?.permute((1, 2, 0))?.contiguous()
}

/// `M (G, L, L)` with `M[j, t] = k[t - j]` for `t >= j`, else 0, from `k (G, L)`, `L >= 2`.
///
/// Row `j` of `M` is the period `P = 2L - 1` sequence `w = [k, 0 x (L - 1)]`
/// read from offset `-j`. Laying copies of `w` end to end and cutting rows of
/// length `R = P - 1` shifts each row's start by `-1 (mod P)`, so `M` is the
/// first `L` columns of that tiling: a broadcast, a reshape and two narrows,
/// whose backward passes are sums and copies (a gather's backward on CUDA is a
/// scatter-add that runs one thread per channel over all `L²` indices).
fn toeplitz(k: &Tensor) -> Result<Tensor> {
    let (g, l) = k.dims2()?;
    let (period, row) = (2 * l - 1, 2 * l - 2);
    let w = Tensor::cat(&[k, &Tensor::zeros((g, l - 1), k.dtype(), k.device())?], 1)?;
    w.unsqueeze(1)?
        .broadcast_as((g, l, period))?
        .contiguous()?
        .reshape((g, l * period))?
        .narrow(1, 0, l * row)?
        .reshape((g, l, row))?
        .narrow(2, 0, l)?
        .contiguous()
}

/// Whether [`causal_conv`] can run in `dtype` (every float dtype).
pub fn supports(dtype: DType) -> bool {
    dtype.is_float()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use lrnnx_testing::{max_err, randn, vec1};

    #[test]
    fn depthwise_conv_matches_the_fused_op() {
        for (b, l, d, w) in [(1, 1, 1, 1), (2, 7, 3, 4), (3, 2, 5, 4), (2, 33, 6, 3)] {
            let x = randn(&[b, l, d], 1, DType::F64);
            let wt = randn(&[d, w], 2, DType::F64);
            let bias = randn(&[d], 3, DType::F64);
            let want = crate::depthwise_conv::depthwise_conv(&x, &wt, &bias, b).unwrap();
            let got = depthwise_conv(&x, &wt, &bias, b).unwrap();
            assert!(
                max_err(&vec1(&got), &vec1(&want)) < 1e-12,
                "({b},{l},{d},{w})"
            );
            let flat = depthwise_conv(&x.reshape((b * l, d)).unwrap(), &wt, &bias, b).unwrap();
            assert!(max_err(&vec1(&flat), &vec1(&want)) < 1e-12);
        }
    }

    #[test]
    fn causal_conv_matches_the_fft_op_with_short_and_full_kernels() {
        for (b, l, h, taps) in SHAPES {
            let x = randn(&[b, l, h], 4, DType::F64);
            let k = randn(&[h, taps], 5, DType::F64);
            let want = crate::fft_conv::causal_conv(&x, &k).unwrap();
            let got = causal_conv(&x, &k).unwrap();
            let err = max_err(&vec1(&got), &vec1(&want));
            assert!(err < 1e-10, "({b},{l},{h},{taps}): {err:e}");
        }
    }

    /// `(B, L, H, taps)`: L = 1 and 2, kernels shorter than, as long as and longer than L.
    const SHAPES: [(usize, usize, usize, usize); 7] = [
        (1, 1, 1, 1),
        (2, 1, 2, 3),
        (2, 2, 3, 1),
        (2, 9, 3, 9),
        (3, 50, 4, 7),
        (2, 130, 5, 130),
        (1, 33, 2, 100),
    ];

    #[test]
    fn causal_conv_gradients_match_the_fft_op() {
        use candle_core::Var;
        for (b, l, h, taps) in SHAPES {
            let x = Var::from_tensor(&randn(&[b, l, h], 6, DType::F64)).unwrap();
            let k = Var::from_tensor(&randn(&[h, taps], 7, DType::F64)).unwrap();
            let w = randn(&[b, l, h], 8, DType::F64);
            let grads = |conv: fn(&Tensor, &Tensor) -> Result<Tensor>| {
                let loss = (conv(x.as_tensor(), k.as_tensor()).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                [&x, &k].map(|v| vec1(g.get(v.as_tensor()).expect("a gradient")))
            };
            let (got, want) = (grads(causal_conv), grads(crate::fft_conv::causal_conv));
            for (name, g, w) in [("x", &got[0], &want[0]), ("k", &got[1], &want[1])] {
                let err = max_err(g, w);
                assert!(err < 1e-10, "({b},{l},{h},{taps}) d{name}: {err:e}");
            }
        }
    }

    #[test]
    fn causal_conv_refuses_lengths_past_the_budget_with_the_figure() {
        let x = Tensor::zeros((1, 9000, 1), DType::F32, &candle_core::Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let e = causal_conv(&x, &k).unwrap_err().to_string();
        assert!(e.contains("L = 9000") && e.contains("8192"), "{e}");
    }
}
