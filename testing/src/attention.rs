//! Softmax attention written out with candle's ops (scores, mask, softmax,
//! weighted sum): the obviously right reference the flash kernels are
//! tested against.

use candle_core::{Result, Tensor, D};

/// Shapes `(B, Lq, Lk, h, hkv, d, causal)` the flash kernels are tested at:
/// one position, tiles cut short, several query and key tiles, grouped and
/// multi-query heads, head sizes off the vector width, more keys than
/// queries (a prefill after a cached prefix), and no mask. All heads are at
/// most 64 (what the CUDA kernels take).
pub const FLASH_SHAPES: &[(usize, usize, usize, usize, usize, usize, bool)] = &[
    (1, 1, 1, 1, 1, 1, true),
    (2, 5, 5, 4, 2, 8, true),
    (2, 67, 67, 3, 1, 13, true),
    (1, 130, 130, 2, 2, 64, false),
    (2, 37, 100, 4, 4, 16, true),
    (1, 65, 129, 2, 1, 40, false),
    (1, 300, 300, 2, 1, 48, true),
    (1, 200, 200, 1, 1, 32, true),
];

/// Attention of `q (B, Lq, h, d)` over `k`, `v (B, Lk, hkv, d)` (query
/// head `i` reads KV head `i / (h / hkv)`), scores scaled by `scale`, with a
/// bottom-right aligned causal mask (query `i` sees keys `j <= i + Lk - Lq`)
/// when `causal`: `(B, Lq, h, d)`.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let (b, lq, h, d) = q.dims4()?;
    let (_, lk, hkv, _) = k.dims4()?;
    let g = h / hkv;
    let expand = |t: &Tensor| -> Result<Tensor> {
        t.unsqueeze(3)?
            .broadcast_as((b, lk, hkv, g, d))?
            .reshape((b, lk, h, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let q = q.transpose(1, 2)?.contiguous()?;
    let s = (q.matmul(&k.t()?)? * scale)?;
    let s = if causal {
        let mask: Vec<f64> = (0..lq)
            .flat_map(|i| {
                (0..lk).map(move |j| {
                    if j + lq <= i + lk {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (lq, lk), q.device())?.to_dtype(s.dtype())?;
        s.broadcast_add(&mask)?
    } else {
        s
    };
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(1, 2)
}
