//! Rotary position embeddings (flash_attn's convention).

use candle_core::{DType, Device, Tensor, D};
use lrnnx_framework::Result;
use lrnnx_kernels::portable::accumulation_dtype;

/// Rotates the first `dim` features of each head by position-dependent angles
/// `t / base^(2i/dim)`: GPT-NeoX halves (`x[i]` with `x[i + dim/2]`) or, when
/// `interleaved`, GPT-J pairs (`x[2i]` with `x[2i+1]`). The rest pass through.
#[derive(Debug, Clone)]
pub struct Rotary {
    dim: usize,
    base: f64,
    interleaved: bool,
}

impl Rotary {
    /// A rotary embedding over `dim` features.
    pub fn new(dim: usize, base: f64, interleaved: bool) -> Self {
        Self {
            dim,
            base,
            interleaved,
        }
    }

    /// `cos` and `sin` tables `(L, dim/2)` for positions `offset..offset+L`.
    fn tables(
        &self,
        offset: usize,
        len: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (self.base as f32).powf((2 * i) as f32 / self.dim as f32))
            .collect();
        let pos: Vec<f32> = (offset..offset + len).map(|p| p as f32).collect();
        let angle = Tensor::new(pos.as_slice(), dev)?
            .unsqueeze(1)?
            .broadcast_mul(&Tensor::new(inv.as_slice(), dev)?.unsqueeze(0)?)?;
        Ok((angle.cos()?.to_dtype(dtype)?, angle.sin()?.to_dtype(dtype)?))
    }

    /// Applies the rotation to `x (B, L, heads, head_dim)` at positions
    /// `offset..offset+L`, on `x`'s device; the rotation is computed in the
    /// accumulation dtype (f32 for bf16/f16) and rounded once to `x`'s dtype.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        if self.dim == 0 {
            return Ok(x.clone());
        }
        let (_, l, _, hd) = x.dims4()?;
        let half = self.dim / 2;
        let acc = accumulation_dtype(x.dtype());
        let (cos, sin) = self.tables(offset, l, acc, x.device())?;
        // (L, half) -> (1, L, 1, half)
        let (cos, sin) = (
            cos.unsqueeze(0)?.unsqueeze(2)?,
            sin.unsqueeze(0)?.unsqueeze(2)?,
        );
        let rot = x.narrow(D::Minus1, 0, self.dim)?.to_dtype(acc)?;
        let rotated = if self.interleaved {
            let dims = rot.dims().to_vec();
            let pairs = rot.reshape((dims[0], dims[1], dims[2], half, 2))?;
            let xe = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
            let xo = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
            let re = (xe.broadcast_mul(&cos)? - xo.broadcast_mul(&sin)?)?;
            let ro = (xo.broadcast_mul(&cos)? + xe.broadcast_mul(&sin)?)?;
            Tensor::stack(&[re, ro], D::Minus1)?.reshape(dims)?
        } else {
            let x1 = rot.narrow(D::Minus1, 0, half)?;
            let x2 = rot.narrow(D::Minus1, half, half)?;
            let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[r1, r2], D::Minus1)?
        };
        let rotated = rotated.to_dtype(x.dtype())?;
        if self.dim == hd {
            Ok(rotated)
        } else {
            Ok(Tensor::cat(
                &[rotated, x.narrow(D::Minus1, self.dim, hd - self.dim)?],
                D::Minus1,
            )?)
        }
    }
}
