//! The diagonal linear recurrence `h_t = a_t * h_{t-1} + u_t` that minGRU
//! runs over its gates: the kernels' real time-varying scan
//! ([`lrnnx_kernels::scan_real_tv`]), with a CPU forward (parallel over the
//! batch and channel blocks) and a backward pass.

use candle_core::{Result, Tensor};

/// Runs `h_t = a_t * h_{t-1} + u_t` over `u, a (B, L, C)` from `h0 (B, C)`
/// and returns every state `(B, L, C)`. f32 or f64, CPU; `a` and `h0` are
/// cast to `u`'s dtype. Gradients flow to `u`, `a` and `h0`.
///
/// (Not a doctest: rustdoc links this cdylib crate with a second copy of
/// candle. The same example runs as the unit test `doc_example`.)
///
/// ```ignore
/// use candle_core::{Device, Tensor};
/// let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu)?;
/// let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu)?;
/// let h0 = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu)?;
/// let h = lrnnx_mingru::linear_scan(&u, &a, &h0)?;
/// assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 1.5, 4.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn linear_scan(u: &Tensor, a: &Tensor, h0: &Tensor) -> Result<Tensor> {
    lrnnx_kernels::scan_real_tv::real_tv_scan(u, a, Some(h0))
}

#[cfg(test)]
mod doc_example {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn doc_example() {
        let u = Tensor::new(&[[[1f32], [1.0], [1.0]]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[[0.5f32], [0.5], [2.0]]], &Device::Cpu).unwrap();
        let h0 = Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let h = super::linear_scan(&u, &a, &h0).unwrap();
        assert_eq!(
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 1.5, 4.0]
        );
    }
}
