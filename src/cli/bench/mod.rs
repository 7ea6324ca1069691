//! `lrnnx bench`: throughput of the mixers and kernels against the memory
//! floor, on the CPU or a CUDA GPU. Prints a table and writes JSON.
//!
//! - [`timing`]: the timer (queued calls, one synchronisation, median of five);
//! - [`layers`]: one row per mixer and precision: forward, forward+backward, step;
//! - [`kernels`]: the scan kernels alone against the copy floor, and the
//!   flash-attention kernels (CUDA).

#[cfg(feature = "cuda")]
mod kernels;
mod layers;
mod timing;

use timing::time;

use std::path::PathBuf;

use candle_core::{DType, Tensor};

use serde_json::json;

/// The flags of `lrnnx bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::device::DeviceArg,
    /// Comma-separated precisions of the layer rows (`f32`, `bf16`, `f16`): parameters
    /// in f32, activations in the dtype, as in mixed-precision training.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Comma-separated registered mixer names, one row each (forward, forward+backward, step).
    #[arg(long, default_value = DEFAULT_MIXERS)]
    mixers: String,
    /// Bytes copied by the copy-floor measurement; on a GPU make it several times
    /// the L2 (60 MB on an H200) so that it measures HBM. Default 4 GiB on CUDA, 256 MiB on the CPU.
    #[arg(long)]
    floor_bytes: Option<usize>,
    /// Sequences per batch.
    #[arg(
        long = "batch-size",
        visible_alias = "batch",
        value_name = "BATCH_SIZE",
        default_value_t = 8
    )]
    batch: usize,
    /// Tokens per sequence.
    #[arg(
        long = "seq-len",
        visible_alias = "seqlen",
        value_name = "SEQ_LEN",
        default_value_t = 2048
    )]
    seqlen: usize,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// State size.
    #[arg(long, default_value_t = 256)]
    d_state: usize,
    /// State size of the Mamba rows (Mamba's usual 16).
    #[arg(long, default_value_t = 16)]
    mamba_d_state: usize,
    /// `B,L,D,N` of the second Mamba scan kernel row (the first is at the layer
    /// rows' shape): mamba_ssm's benchmark shape by default.
    #[arg(long, default_value = "8,4096,1536,16")]
    mamba_scan_shape: String,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Let cuBLAS use TF32 for f32 matmuls (faster, ~1e-3 relative error).
    #[arg(long)]
    tf32: bool,
    /// Where to write the JSON results (a file; `info --json` and
    /// `mixers --json` print JSON instead).
    #[arg(
        long = "json-out",
        visible_alias = "json",
        value_name = "PATH",
        default_value = "bench.json"
    )]
    json: PathBuf,
}

/// A closure copying `u` once (a `cudaMemcpy` into a preallocated buffer on the GPU).
fn copy_floor(u: &Tensor) -> anyhow::Result<Box<dyn FnMut() -> anyhow::Result<()> + '_>> {
    #[cfg(feature = "cuda")]
    if u.device().is_cuda() {
        let mut f = lrnnx_kernels::cuda::memcpy_repeater(u)?;
        return Ok(Box::new(move || Ok(f()?)));
    }
    Ok(Box::new(move || {
        let _ = u.copy()?;
        Ok(())
    }))
}

/// `B,L,D,N`.
pub fn parse_shape(s: &str) -> anyhow::Result<(usize, usize, usize, usize)> {
    let v = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--mamba-scan-shape: expected B,L,D,N, found {s:?} ({e})"))?;
    match v[..] {
        [b, l, d, n]
            if n > 0
                && b.checked_mul(l)
                    .and_then(|x| x.checked_mul(d))
                    .is_some_and(|bld| bld > 0 && bld <= 1 << 30) =>
        {
            Ok((b, l, d, n))
        }
        _ => anyhow::bail!(
            "--mamba-scan-shape: expected four positive sizes B,L,D,N with B*L*D at most 2^30, found {s:?}"
        ),
    }
}

/// Every built-in mixer.
pub const DEFAULT_MIXERS: &str = "LRU,S4,S4D,S5,S5LTV,Centaurus,Mamba,RGLRU,S7,attn,mLSTM";

/// Runs `lrnnx bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = a.device.open()?;
    if a.tf32 {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    let (b, l, h, n) = (a.batch, a.seqlen, a.d_model, a.d_state);
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    let mamba_scan_shape = parse_shape(&a.mamba_scan_shape)?;

    let mut rows = Vec::new();
    println!(
        "device {:?}  B={b} L={l} d_model={h} d_state={n}  (median of {} runs)",
        dev, a.reps
    );

    // Floor: a device-to-device copy (read + write) of a buffer larger than
    // any cache (an H200's L2 holds 60 MB).
    let floor_bytes = a
        .floor_bytes
        .unwrap_or(if dev.is_cuda() { 4 << 30 } else { 256 << 20 });
    let floor_buf = Tensor::zeros(floor_bytes.div_ceil(4).max(1), DType::F32, &dev)?;
    let bytes = (2 * floor_buf.elem_count() * 4) as f64;
    let mut copy = copy_floor(&floor_buf)?;
    let t_copy = time(&dev, a.reps.min(10), &mut copy)?;
    let copy_gbs = bytes / t_copy / 1e9;
    println!(
        "{:<28} {:>10.3} ms {:>10.1} GB/s  ({} MiB copied)",
        "copy (floor)",
        t_copy * 1e3,
        copy_gbs,
        floor_bytes >> 20
    );
    drop(copy);
    drop(floor_buf);
    rows.push(
        json!({"name": "copy_floor", "bytes": floor_bytes, "ms": t_copy * 1e3, "gb_s": copy_gbs}),
    );

    // The complex scan over (B, L, 2N): read u, write h.
    let u = Tensor::randn(0f32, 1.0, (b, l, 2 * n), &dev)?;
    let bytes = (2 * u.elem_count() * 4) as f64;
    // The complex scan kernel alone.
    let lam = (Tensor::rand(0f32, 0.9, 2 * n, &dev)? - 0.45)?;
    let t_scan = time(&dev, a.reps, || {
        let _ = lrnnx_kernels::scan::complex_diag_scan(&u, &lam, None)?;
        Ok(())
    })?;
    let scan_gbs = bytes / t_scan / 1e9;
    println!(
        "{:<28} {:>10.3} ms {:>10.1} GB/s  {:>5.1}% of copy",
        "complex scan kernel",
        t_scan * 1e3,
        scan_gbs,
        100.0 * scan_gbs / copy_gbs
    );
    rows.push(
        json!({"name": "complex_scan", "ms": t_scan * 1e3, "gb_s": scan_gbs, "copy_gb_s": copy_gbs,
                      "fraction_of_copy": scan_gbs / copy_gbs}),
    );

    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        rows.extend(kernels::mamba_scan_kernels(
            &dev,
            &a,
            mamba_scan_shape,
            copy_gbs,
        )?);
    }

    #[cfg(feature = "cuda")]
    if dev.is_cuda() && a.mixers.split(',').any(|m| m.trim() == "attn") {
        rows.extend(kernels::flash_attention_kernels(&dev, &a)?);
    }

    let dtypes = a
        .dtype
        .split(',')
        .map(|d| Ok(d.trim().parse::<lrnnx::Precision>()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for name in a.mixers.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        for &precision in &dtypes {
            match layers::bench_layer(&dev, &a, name, precision) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    let msg = e.to_string();
                    let msg = msg.lines().next().unwrap_or_default();
                    println!("{name:<12} {:?}: error: {msg}", precision.compute);
                    rows.push(json!({"name": name, "dtype": format!("{:?}", precision.compute).to_lowercase(), "error": msg}));
                }
            }
        }
    }
    let out = json!({"device": format!("{dev:?}"), "tf32": a.tf32, "batch": b, "seqlen": l, "d_model": h, "d_state": n,
                      "copy_gb_s": copy_gbs, "results": rows});
    lrnnx::io::write_json(&a.json, &out)?;
    println!("wrote {}", a.json.display());
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::parse_shape;

    #[test]
    fn the_mamba_scan_shape_is_four_positive_bounded_sizes() {
        assert_eq!(
            parse_shape("8,4096,1536,16").expect("default"),
            (8, 4096, 1536, 16)
        );
        for bad in [
            "8,4096,1536",
            "8,0,1536,16",
            "8,x,1,1",
            "65536,65536,65536,16",
        ] {
            let e = parse_shape(bad).expect_err(bad).to_string();
            assert!(e.contains("B,L,D,N") && e.contains(bad), "{bad}: {e}");
        }
    }
}
