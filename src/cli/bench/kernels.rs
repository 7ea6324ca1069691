//! Kernel rows of `lrnnx bench` (CUDA).

use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

use super::{time, Args};

/// Mamba's selective-scan kernels alone at `(B, L, D, N)`, against the copy
/// floor: the forward (bytes = one read of `uz`, `delta`, `xdbl` and one write
/// of `y`) and, as mamba_ssm's `selective_scan_fn` is timed, forward+backward
/// of `y.sum()` through the training op (bytes not counted: it reads the
/// inputs twice and writes a gradient of each). Rows at the bench's layer
/// shape (`D = 2 d_model`) and at `--mamba-scan-shape` (mamba_ssm's protocol).
pub fn mamba_scan_kernels(
    dev: &Device,
    a: &Args,
    peer: (usize, usize, usize, usize),
    copy_gbs: f64,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let layer = (a.batch, a.seqlen, 2 * a.d_model, a.mamba_d_state);
    let mut rows = vec![mamba_scan_kernel(dev, a.reps, layer, copy_gbs)?];
    if peer != layer {
        rows.push(mamba_scan_kernel(dev, a.reps, peer, copy_gbs)?);
    }
    Ok(rows)
}

fn mamba_scan_kernel(
    dev: &Device,
    reps: usize,
    (b, l, d, n): (usize, usize, usize, usize),
    copy_gbs: f64,
) -> anyhow::Result<serde_json::Value> {
    let k = (d / 2).div_ceil(16) + 2 * n;
    let uz = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, 2 * d), dev)?)?;
    let delta = Var::from_tensor(&Tensor::rand(0.001f32, 0.1, (b, l, d), dev)?)?;
    let xdbl = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, k), dev)?)?;
    let a_mat = Var::from_tensor(&Tensor::rand(-16f32, -1.0, (d, n), dev)?)?;
    let skip = Var::from_tensor(&Tensor::ones(d, DType::F32, dev)?)?;
    let h0 = Tensor::zeros((b, d.div_ceil(16), n, 16), DType::F32, dev)?;
    let args = lrnnx_mamba::ScanArgs {
        uz: uz.as_tensor(),
        delta: delta.as_tensor(),
        dta: delta.as_tensor(),
        xdbl: xdbl.as_tensor(),
        a: a_mat.as_tensor(),
        skip: skip.as_tensor(),
        h0: &h0,
        rule: lrnnx_mamba::Rule::Mamba,
    };
    let t = time(dev, reps, || {
        let _ = lrnnx_mamba::cuda::selective_scan_gpu(&args)?;
        Ok(())
    })?;
    let t_train = time(dev, reps, || {
        let (y, _) = lrnnx_mamba::cuda::selective_scan_gpu_train(&args)?;
        let _ = y.sum_all()?.backward()?;
        Ok(())
    })?;
    let bytes = 4.0 * (uz.elem_count() + 2 * delta.elem_count() + xdbl.elem_count()) as f64;
    let gbs = bytes / t / 1e9;
    println!(
        "{:<28} {:>10.3} ms {:>10.1} GB/s  {:>5.1}% of copy   fwd+bwd {:>8.3} ms",
        format!("Mamba scan B{b} L{l} D{d} N{n}"),
        t * 1e3,
        gbs,
        100.0 * gbs / copy_gbs,
        t_train * 1e3
    );
    Ok(
        json!({"name": "mamba_selective_scan", "batch": b, "seqlen": l, "d_inner": d, "d_state": n,
              "ms": t * 1e3, "fwd_bwd_ms": t_train * 1e3, "gb_s": gbs,
              "copy_gb_s": copy_gbs, "fraction_of_copy": gbs / copy_gbs}),
    )
}

/// The flash-attention kernels alone, causal, `q`, `k`, `v (B, L, h, d)` at
/// the bench's `B`, `L` and 4 heads of `d_model / 4` (lrnnx's MHA peer
/// shape), in f32 and bf16: forward and forward+backward of `sum(o * w)`.
/// TFLOP/s count the causal half of the two products of the forward
/// (`2 B h L^2 d`).
pub fn flash_attention_kernels(dev: &Device, a: &Args) -> anyhow::Result<Vec<serde_json::Value>> {
    let (b, l, h) = (a.batch, a.seqlen, 4);
    let d = (a.d_model / h).max(1);
    let scale = 1.0 / (d as f64).sqrt();
    let flops = 2.0 * (b * h * l * l * d) as f64;
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let leaf = || -> anyhow::Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (b, l, h, d), dev)?.to_dtype(dtype)?,
            )?)
        };
        let (q, k, v) = (leaf()?, leaf()?, leaf()?);
        let w = Tensor::randn(0f32, 1.0, (b, l, h, d), dev)?.to_dtype(dtype)?;
        let t = time(dev, a.reps, || {
            let _ = lrnnx_attn::flash_attention(&q, &k, &v, scale, true)?;
            Ok(())
        })?;
        let t_train = time(dev, a.reps, || {
            let o = lrnnx_attn::flash_attention(&q, &k, &v, scale, true)?;
            let _ = (o * &w)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
            Ok(())
        })?;
        let name = format!("flash attn {dtype:?} B{b} L{l} {h}x{d}");
        println!(
            "{:<28} {:>10.3} ms {:>8.1} TFLOP/s   fwd+bwd {:>8.3} ms",
            name,
            t * 1e3,
            flops / t / 1e12,
            t_train * 1e3
        );
        rows.push(
            json!({"name": "flash_attention", "dtype": format!("{dtype:?}"), "batch": b,
            "seqlen": l, "heads": h, "head_dim": d, "ms": t * 1e3, "fwd_bwd_ms": t_train * 1e3,
            "tflop_s": flops / t / 1e12}),
        );
    }
    Ok(rows)
}
