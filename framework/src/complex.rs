//! Complex tensors as a pair of real tensors.
//!
//! candle has no complex dtype. Diagonal state-space models need only
//! elementwise complex arithmetic, which this type provides on top of two
//! real tensors of the same shape. Gradients flow through both halves.

use candle_core::{Tensor, D};

use crate::Result;

/// A complex tensor stored as its real and imaginary parts.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lrnnx_framework::Complex;
/// let dev = Device::Cpu;
/// let z = Complex::new(Tensor::new(&[0f32], &dev)?, Tensor::new(&[std::f32::consts::PI], &dev)?);
/// let e = z.exp()?; // e^{i pi} = -1
/// assert!((e.re.to_vec1::<f32>()?[0] + 1.0).abs() < 1e-6);
/// # Ok::<(), lrnnx_framework::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Complex {
    /// Real part.
    pub re: Tensor,
    /// Imaginary part.
    pub im: Tensor,
}

impl Complex {
    /// Pairs two real tensors of equal shape.
    pub fn new(re: Tensor, im: Tensor) -> Self {
        Self { re, im }
    }

    /// A purely real complex tensor.
    pub fn from_real(re: Tensor) -> Result<Self> {
        let im = re.zeros_like()?;
        Ok(Self { re, im })
    }

    /// `r * exp(i theta)`.
    pub fn from_polar(r: &Tensor, theta: &Tensor) -> Result<Self> {
        Ok(Self {
            re: (r * theta.cos()?)?,
            im: (r * theta.sin()?)?,
        })
    }

    /// Elementwise sum (broadcasting).
    pub fn add(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_add(&o.re)?,
            im: self.im.broadcast_add(&o.im)?,
        })
    }

    /// Elementwise difference (broadcasting).
    pub fn sub(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_sub(&o.re)?,
            im: self.im.broadcast_sub(&o.im)?,
        })
    }

    /// Elementwise product (broadcasting).
    pub fn mul(&self, o: &Self) -> Result<Self> {
        let re = (self.re.broadcast_mul(&o.re)? - self.im.broadcast_mul(&o.im)?)?;
        let im = (self.re.broadcast_mul(&o.im)? + self.im.broadcast_mul(&o.re)?)?;
        Ok(Self { re, im })
    }

    /// Elementwise product with a real tensor (broadcasting).
    pub fn mul_real(&self, r: &Tensor) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_mul(r)?,
            im: self.im.broadcast_mul(r)?,
        })
    }

    /// Adds a real scalar.
    pub fn add_scalar(&self, s: f64) -> Result<Self> {
        Ok(Self {
            re: (&self.re + s)?,
            im: self.im.clone(),
        })
    }

    /// Multiplies by a real scalar.
    pub fn scale(&self, s: f64) -> Result<Self> {
        Ok(Self {
            re: (&self.re * s)?,
            im: (&self.im * s)?,
        })
    }

    /// Elementwise quotient (broadcasting).
    pub fn div(&self, o: &Self) -> Result<Self> {
        let den = (o.re.sqr()? + o.im.sqr()?)?;
        let num = self.mul(&o.conj()?)?;
        Ok(Self {
            re: num.re.broadcast_div(&den)?,
            im: num.im.broadcast_div(&den)?,
        })
    }

    /// Complex conjugate.
    pub fn conj(&self) -> Result<Self> {
        Ok(Self {
            re: self.re.clone(),
            im: self.im.neg()?,
        })
    }

    /// `exp(z) = e^re (cos im + i sin im)`.
    pub fn exp(&self) -> Result<Self> {
        Self::from_polar(&self.re.exp()?, &self.im)
    }

    /// Modulus `|z|`.
    pub fn abs(&self) -> Result<Tensor> {
        Ok((self.re.sqr()? + self.im.sqr()?)?.sqrt()?)
    }

    /// Shape of either part.
    pub fn dims(&self) -> &[usize] {
        self.re.dims()
    }

    /// Concatenates real and imaginary parts along the last axis:
    /// `(..., N)` becomes `(..., 2N)` with the real part first. This
    /// "split" layout is what the scan kernels take.
    pub fn to_split(&self) -> Result<Tensor> {
        Ok(Tensor::cat(&[&self.re, &self.im], D::Minus1)?)
    }

    /// Inverse of [`Complex::to_split`].
    pub fn from_split(t: &Tensor) -> Result<Self> {
        let n = t.dim(D::Minus1)? / 2;
        Ok(Self {
            re: t.narrow(D::Minus1, 0, n)?,
            im: t.narrow(D::Minus1, n, n)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn c(re: f32, im: f32) -> Complex {
        let d = Device::Cpu;
        Complex::new(
            Tensor::new(&[re], &d).unwrap(),
            Tensor::new(&[im], &d).unwrap(),
        )
    }

    fn get(z: &Complex) -> (f32, f32) {
        (
            z.re.to_vec1::<f32>().unwrap()[0],
            z.im.to_vec1::<f32>().unwrap()[0],
        )
    }

    #[test]
    fn arithmetic_matches_closed_forms() {
        let (a, b) = (c(1.5, -0.5), c(-0.25, 2.0));
        let (mr, mi) = get(&a.mul(&b).unwrap());
        assert!((mr - (1.5 * -0.25 - (-0.5 * 2.0))).abs() < 1e-6);
        assert!((mi - (1.5 * 2.0 + -0.5 * -0.25)).abs() < 1e-6);
        let (qr, qi) = get(&a.div(&b).unwrap().mul(&b).unwrap());
        assert!((qr - 1.5).abs() < 1e-5 && (qi + 0.5).abs() < 1e-5);
        let (er, ei) = get(&a.exp().unwrap());
        assert!((er - 1.5f32.exp() * (-0.5f32).cos()).abs() < 1e-5);
        assert!((ei - 1.5f32.exp() * (-0.5f32).sin()).abs() < 1e-5);
    }
}
