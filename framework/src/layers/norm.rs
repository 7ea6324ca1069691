//! RMSNorm and LayerNorm over the last axis.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::{Init, ParamBuilder, Result};

/// Which normalisation a model uses (`rms_norm` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    /// `x / sqrt(mean(x^2) + eps) * w`.
    Rms,
    /// `(x - mean) / sqrt(var + eps) * w + b`.
    Layer,
}

/// A normalisation layer over the last axis, computed in f32.
#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    /// Builds the norm with parameters `weight` (and `bias` for LayerNorm) under `pb`.
    pub fn new(kind: NormKind, dim: usize, eps: f64, pb: &ParamBuilder) -> Result<Self> {
        let weight = pb.get(dim, "weight", Init::Ones)?;
        let bias = match kind {
            NormKind::Rms => None,
            NormKind::Layer => Some(pb.get(dim, "bias", Init::Zeros)?),
        };
        Ok(Self {
            kind,
            weight,
            bias,
            eps,
        })
    }

    /// Normalises `x` (any rank) over its last axis; the output keeps `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        // Statistics in f32 (f64 inputs keep f64).
        let wide = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let x = x.to_dtype(wide)?;
        let y = match self.kind {
            NormKind::Rms => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            }
            NormKind::Layer => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
        };
        let mut y = y.broadcast_mul(&self.weight.to_dtype(wide)?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(wide)?)?;
        }
        Ok(y.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamStore;
    use candle_core::Device;

    #[test]
    fn rms_and_layer_norm_match_closed_forms() {
        let dev = Device::Cpu;
        let store = ParamStore::init(0, DType::F32, &dev);
        let x = Tensor::new(&[[1f32, -2.0, 3.0, 0.5]], &dev).unwrap();
        let rms = Norm::new(NormKind::Rms, 4, 1e-5, &store.builder().pp("a")).unwrap();
        let y = rms.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let ms: f32 = (1.0 + 4.0 + 9.0 + 0.25) / 4.0;
        assert!((y[0][2] - 3.0 / (ms + 1e-5).sqrt()).abs() < 1e-6);
        let ln = Norm::new(NormKind::Layer, 4, 1e-5, &store.builder().pp("b")).unwrap();
        let y = ln.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let mean = 2.5 / 4.0;
        let var: f32 = [1.0f32, -2.0, 3.0, 0.5]
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f32>()
            / 4.0;
        assert!((y[0][0] - (1.0 - mean) / (var + 1e-5).sqrt()).abs() < 1e-5);
    }
}
