//! The diagonal complex scan `h_t = lambda * h_{t-1} + u_t` as a candle op
//! with forward on CPU and CUDA and a backward pass, so gradients flow
//! through it on both devices.
//!
//! Layout ("split complex"): the last axis holds `2N` values, the real parts
//! of the `N` channels, then the imaginary parts. `u` and the result are
//! `(B, L, 2N)`, `lambda` is `(2N)`, the initial state `h0` is `(B, 2N)`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu::dispatch3;
use crate::scan_cpu::{self, ScanDims};

/// The scan op; `reverse` runs from the last position to the first and
/// `conj` conjugates `lambda` (together: the adjoint scan of the backward pass).
#[derive(Debug, Clone, Copy)]
pub struct ComplexScan {
    /// Run from `t = L-1` down to 0.
    pub reverse: bool,
    /// Use `conj(lambda)`.
    pub conj: bool,
}

fn dims_of(u: &Layout, lambda: &Layout, h0: &Layout) -> Result<ScanDims> {
    scan_cpu::split_complex_dims(
        "complex scan",
        "u (B, L, 2N), lambda (2N), h0 (B, 2N)",
        [u, lambda, h0],
        |b, _, n2| [vec![n2], vec![b, n2]],
    )
}

impl CustomOp3 for ComplexScan {
    fn name(&self) -> &'static str {
        "complex-diag-scan"
    }

    fn cpu_fwd(
        &self,
        u: &CpuStorage,
        lu: &Layout,
        lam: &CpuStorage,
        ll: &Layout,
        h0: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(lu, ll, lh)?;
        let (reverse, conj) = (self.reverse, self.conj);
        let out = dispatch3(
            "complex scan",
            ["u", "lambda", "h0"],
            (u, lu),
            (lam, ll),
            (h0, lh),
            |u, lam, h0| scan_cpu::scan(dims, lam, u, Some(h0), reverse, conj),
            |u, lam, h0| scan_cpu::scan(dims, lam, u, Some(h0), reverse, conj),
        )?;
        Ok((out, lu.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        u: &candle_core::CudaStorage,
        lu: &Layout,
        lam: &candle_core::CudaStorage,
        ll: &Layout,
        h0: &candle_core::CudaStorage,
        lh: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = dims_of(lu, ll, lh)?;
        let out = crate::cuda::scan::launch(dims, u, lu, lam, ll, h0, lh, self.reverse, self.conj)?;
        Ok((out, lu.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        lambda: &Tensor,
        h0: &Tensor,
        h: &Tensor,
        grad_h: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // h_t = lam h_{t-1} + u_t. With s_t = dL/dh_t accumulated backwards,
        // s_t = g_t + conj(lam) s_{t+1} (the adjoint scan), and
        // dL/du_t = s_t, dL/dlam = sum_{b,t} s_t conj(h_{t-1}), dL/dh0 = conj(lam) s_0.
        let _ = u;
        let adjoint = ComplexScan {
            reverse: !self.reverse,
            conj: !self.conj,
        };
        let zeros = h0.zeros_like()?;
        let s = grad_h
            .contiguous()?
            .apply_op3_no_bwd(lambda, &zeros, &adjoint)?;
        let l = h.dim(1)?;
        let (first, before_last) = if self.reverse { (l - 1, 1) } else { (0, 0) };
        // h_prev: the state each position was applied to.
        let h_prev = if l > 1 {
            let shifted = h.narrow(1, before_last, l - 1)?;
            if self.reverse {
                Tensor::cat(&[&shifted, &h0.unsqueeze(1)?], 1)?
            } else {
                Tensor::cat(&[&h0.unsqueeze(1)?, &shifted], 1)?
            }
        } else {
            h0.unsqueeze(1)?
        };
        let n = lambda.dim(0)? / 2;
        let split = |t: &Tensor| -> Result<(Tensor, Tensor)> {
            Ok((t.narrow(D::Minus1, 0, n)?, t.narrow(D::Minus1, n, n)?))
        };
        let (sr, si) = split(&s)?;
        let (pr, pi) = split(&h_prev)?;
        // s * conj(p) = (sr pr + si pi) + i (si pr - sr pi); conj flag flips the imaginary part.
        let gr = (sr.mul(&pr)? + si.mul(&pi)?)?.sum((0, 1))?;
        let mut gi = (si.mul(&pr)? - sr.mul(&pi)?)?.sum((0, 1))?;
        if self.conj {
            gi = gi.neg()?;
        }
        let g_lambda = Tensor::cat(&[&gr, &gi], 0)?;
        // dL/dh0 = conj(lam') s_first, where lam' is the lambda actually applied.
        let s0 = s.narrow(1, first, 1)?.squeeze(1)?;
        let (s0r, s0i) = split(&s0)?;
        let (lr, li) = split(lambda)?;
        let li = if self.conj { li.neg()? } else { li };
        let g_h0r = (s0r.broadcast_mul(&lr)? + s0i.broadcast_mul(&li)?)?;
        let g_h0i = (s0i.broadcast_mul(&lr)? - s0r.broadcast_mul(&li)?)?;
        let g_h0 = Tensor::cat(&[&g_h0r, &g_h0i], D::Minus1)?;
        Ok((Some(s), Some(g_lambda), Some(g_h0)))
    }
}

/// Runs `h_t = lambda * h_{t-1} + u_t` over `u (B, L, 2N)` from `h0 (B, 2N)`
/// (zeros when `None`) and returns every state `(B, L, 2N)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // One channel, lambda = i: the state rotates by 90 degrees each step.
/// let lam = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// let u = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], &Device::Cpu)?;
/// let h = lrnnx_kernels::scan::complex_diag_scan(&u, &lam, None)?;
/// assert_eq!(h.to_vec3::<f32>()?, vec![vec![vec![1.0, 0.0], vec![0.0, 1.0]]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// The fused kernels run on CPU and CUDA tensors (bf16/f16 inputs are widened
/// to f32, and the states come back in f32); elsewhere, and under
/// [`crate::portable::with_portable`], the portable scan runs.
pub fn complex_diag_scan(u: &Tensor, lambda: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
    if !crate::portable::kernel_takes(u, true) {
        return crate::portable::scan::complex_scan(u, lambda, h0);
    }
    let u = &crate::portable::widen(u)?;
    let (b, _, n2) = u.dims3()?;
    let h0 = match h0 {
        Some(h) => h.to_dtype(u.dtype())?.contiguous()?,
        None => Tensor::zeros((b, n2), u.dtype(), u.device())?,
    };
    let lambda = lambda.to_dtype(u.dtype())?.contiguous()?;
    u.contiguous()?.apply_op3(
        &lambda,
        &h0,
        ComplexScan {
            reverse: false,
            conj: false,
        },
    )
}

/// Whether `dtype` is supported by the scan.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}
