//! Kernel rows of `lrnnx bench` (CUDA).

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::{time, Args};

/// Mamba's selective-scan kernel alone at `(B, L, D = 2 d_model, N)`, against
/// the copy floor: bytes = one read of `uz`, `delta`, `xdbl` and one write of `y`.
pub fn mamba_scan_kernel(
    dev: &Device,
    a: &Args,
    copy_gbs: f64,
) -> anyhow::Result<serde_json::Value> {
    let (b, l, d, n) = (a.batch, a.seqlen, 2 * a.d_model, a.mamba_d_state);
    let k = a.d_model.div_ceil(16) + 2 * n;
    let uz = Tensor::randn(0f32, 1.0, (b, l, 2 * d), dev)?;
    let delta = Tensor::rand(0.001f32, 0.1, (b, l, d), dev)?;
    let xdbl = Tensor::randn(0f32, 1.0, (b, l, k), dev)?;
    let a_mat = Tensor::rand(-16f32, -1.0, (d, n), dev)?;
    let skip = Tensor::ones(d, DType::F32, dev)?;
    let h0 = Tensor::zeros((b, d.div_ceil(16), n, 16), DType::F32, dev)?;
    let t = time(dev, a.reps, || {
        let _ = lrnnx_mamba::cuda::selective_scan_gpu(&lrnnx_mamba::ScanArgs {
            uz: &uz,
            delta: &delta,
            dta: &delta,
            xdbl: &xdbl,
            a: &a_mat,
            skip: &skip,
            h0: &h0,
            rule: lrnnx_mamba::Rule::Mamba,
        })?;
        Ok(())
    })?;
    let bytes = 4.0 * (uz.elem_count() + 2 * delta.elem_count() + xdbl.elem_count()) as f64;
    let gbs = bytes / t / 1e9;
    println!(
        "{:<28} {:>10.3} ms {:>10.1} GB/s  {:>5.1}% of copy",
        format!("Mamba scan kernel (N={n})"),
        t * 1e3,
        gbs,
        100.0 * gbs / copy_gbs
    );
    Ok(
        json!({"name": "mamba_selective_scan", "d_state": n, "ms": t * 1e3, "gb_s": gbs,
              "copy_gb_s": copy_gbs, "fraction_of_copy": gbs / copy_gbs}),
    )
}
