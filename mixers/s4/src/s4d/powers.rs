//! The S4D kernel `K[c,h,l] = 2 Re(sum_n W[c,h,n] z[h,n]^l)` from candle ops
//! (the portable counterpart of [`super::vandermonde`]): the powers
//! `z^l, l < len` by doubling (`ceil(log2 len)` complex products of growing
//! blocks), then one batched matmul over the modes. Runs in `z`'s dtype;
//! gradients from candle's autograd.

use candle_core::Tensor;
use lrnnx_framework::{Complex, Result};

/// `[z^0, ..., z^(len-1)]` of `z (H, N/2)` as `(H, N/2, len)`.
fn powers(z: &Complex, len: usize) -> Result<Complex> {
    let one = z.re.ones_like()?.unsqueeze(2)?;
    let mut v = Complex::new(one.clone(), one.zeros_like()?);
    let mut p = Complex::new(z.re.unsqueeze(2)?, z.im.unsqueeze(2)?);
    let mut have = 1;
    while have < len {
        let take = have.min(len - have);
        let head = Complex::new(v.re.narrow(2, 0, take)?, v.im.narrow(2, 0, take)?);
        let next = head.mul(&p)?;
        v = Complex::new(
            Tensor::cat(&[&v.re, &next.re], 2)?,
            Tensor::cat(&[&v.im, &next.im], 2)?,
        );
        have += take;
        if have < len {
            p = p.mul(&p)?;
        }
    }
    Ok(v)
}

/// The kernel `(C, H, len)` for `w (C, H, N/2)` and `z (H, N/2)` complex.
pub fn kernel(w: &Complex, z: &Complex, len: usize) -> Result<Tensor> {
    let (_, h, n2) = w.re.dims3()?;
    if z.re.dims() != [h, n2] {
        return Err(lrnnx_framework::Error::shape(
            "S4D kernel z",
            format!("({h}, {n2})"),
            z.re.dims(),
        ));
    }
    let pw = powers(z, len)?;
    // (H, N, len) against (H, C, N) with N = [Re; Im] and the readout (2 Re w, -2 Im w).
    let pw = Tensor::cat(&[&pw.re, &pw.im], 1)?;
    let wr = Tensor::cat(&[(&w.re * 2.0)?, (&w.im * -2.0)?], 2)?.transpose(0, 1)?;
    Ok(wr
        .contiguous()?
        .matmul(&pw)?
        .transpose(0, 1)?
        .contiguous()?)
}
