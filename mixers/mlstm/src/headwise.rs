//! xLSTM's `LinearHeadwiseExpand` (expand factor 1): a block-diagonal linear map.

use candle_core::{Device, Tensor};
use lrnnx_framework::params::random;
use lrnnx_framework::{Init, ParamBuilder, Result, Role};

/// `y[.., h, o] = sum_d x[.., h, d] W[h, o, d] (+ bias)`, weight `(heads, out/heads, in/heads)`.
#[derive(Debug, Clone)]
pub struct HeadwiseLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    heads: usize,
    block: usize,
}

impl HeadwiseLinear {
    /// `features` split into `heads` blocks; weights drawn as xLSTM's
    /// `small_init_init_(dim = init_dim)`: normal with std `sqrt(2 / (5 init_dim))`.
    pub fn new(
        features: usize,
        heads: usize,
        bias: bool,
        init_dim: usize,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        let block = features / heads;
        let std = (2.0 / (5.0 * init_dim as f64)).sqrt();
        let n = heads * block * block;
        let weight = pb.get_with((heads, block, block), "weight", |rng| {
            let v: Vec<f32> = random::normal(rng, n)
                .into_iter()
                .map(|z| (z * std) as f32)
                .collect();
            Ok(Tensor::from_vec(v, (heads, block, block), &Device::Cpu)?)
        })?;
        let bias = if bias {
            pb.mark("bias", Role::LinearBias);
            Some(pb.get(features, "bias", Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            heads,
            block,
        })
    }

    /// Applies the map over the last axis of `x (.., features)`: a broadcast
    /// product summed over the (small) block, cheaper than `heads` tiny matmuls.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / (self.heads * self.block).max(1);
        let xh = x.reshape((rows, self.heads, 1, self.block))?;
        let y = xh
            .broadcast_mul(&self.weight.unsqueeze(0)?)?
            .sum(3)?
            .reshape(dims)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
