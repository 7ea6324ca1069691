//! `lrnnx bench`: throughput of the mixers and kernels against the memory
//! floor, on the CPU or a CUDA GPU. Prints a table and writes JSON.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lrnnx::{BuildArgs, ForwardOpts, Mixer, ParamStore, Registry, StepOpts};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `cpu` or `cuda` (`cuda:N` for another GPU; needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 2048)]
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
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Let cuBLAS use TF32 for f32 matmuls (faster, ~1e-3 relative error).
    #[arg(long)]
    tf32: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
}

fn device(name: &str) -> anyhow::Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => match other.strip_prefix("cuda:") {
            Some(i) => Device::new_cuda(i.parse()?)?,
            None => anyhow::bail!("unknown device `{other}`; expected cpu, cuda or cuda:N"),
        },
    })
}

/// Seconds per call of `f`: `reps` calls queued back to back, one device
/// synchronization at the end (so that launch and sync latency do not count
/// per call), repeated five times, median taken. Two warm-up calls first.
fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let reps = reps.max(1);
    let mut ts = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        dev.synchronize()?;
        ts.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = device(&a.device)?;
    if a.tf32 {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    let (b, l, h, n) = (a.batch, a.seqlen, a.d_model, a.d_state);
    let tokens = (b * l) as f64;
    let mut rows = Vec::new();
    println!(
        "device {:?}  B={b} L={l} d_model={h} d_state={n}  (median of {} runs)",
        dev, a.reps
    );

    // Floor: copying the scan's input (read + write of the same bytes); on a
    // GPU a device-to-device cudaMemcpy.
    let u = Tensor::randn(0f32, 1.0, (b, l, 2 * n), &dev)?;
    let bytes = (2 * u.elem_count() * 4) as f64;
    let mut copy = copy_floor(&u)?;
    let t_copy = time(&dev, a.reps, &mut copy)?;
    let copy_gbs = bytes / t_copy / 1e9;
    println!(
        "{:<28} {:>10.3} ms {:>10.1} GB/s",
        "copy (floor)",
        t_copy * 1e3,
        copy_gbs
    );

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
        rows.push(mamba_scan_kernel(&dev, &a, copy_gbs)?);
    }

    for name in ["LRU", "attn", "Mamba"] {
        if name == "attn" && l > 4096 {
            println!("attn forward skipped at L={l} (the (L, L) score matrix is too large)");
            continue;
        }
        let store = ParamStore::init(0, DType::F32, &dev);
        let kwargs = if name == "attn" {
            serde_json::from_str(r#"{"num_heads": 4, "causal": true}"#)?
        } else {
            Default::default()
        };
        let args = BuildArgs {
            d_model: h,
            d_state: if name == "Mamba" { a.mamba_d_state } else { n },
            layer_idx: 0,
            kwargs,
            params: store.builder(),
        };
        let m: Box<dyn Mixer> = Registry::build(name, &args)?;
        let x = Tensor::randn(0f32, 1.0, (b, l, h), &dev)?;
        let t_fwd = time(&dev, a.reps, || {
            let _ = m.forward(&x, &ForwardOpts::default())?;
            Ok(())
        })?;
        let mut st = m.init_state(b, l + 4 * a.reps + 8, DType::F32, &dev)?;
        if name == "attn" {
            // Decode against a cache already holding most of the sequence.
            let _ = m.prefill(
                &x.narrow(1, 0, l.min(1400))?,
                &mut st,
                &ForwardOpts::default(),
            )?;
        }
        let xt = x.narrow(1, 0, 1)?.squeeze(1)?;
        let t_step = time(&dev, a.reps, || {
            let _ = m.step(&xt, &mut st, &StepOpts::default())?;
            Ok(())
        })?;
        println!(
            "{:<28} {:>10.3} ms {:>10.0} tok/s   step {:>8.1} us/token (batch {b})",
            format!("{name} forward"),
            t_fwd * 1e3,
            tokens / t_fwd,
            t_step * 1e6
        );
        rows.push(
            json!({"name": name, "forward_ms": t_fwd * 1e3, "forward_tokens_per_s": tokens / t_fwd,
                          "step_us": t_step * 1e6}),
        );
    }
    let out = json!({"device": format!("{dev:?}"), "tf32": a.tf32, "batch": b, "seqlen": l, "d_model": h, "d_state": n,
                      "copy_gb_s": copy_gbs, "results": rows});
    lrnnx::io::write_json(&a.json, &out)?;
    println!("wrote {}", a.json.display());
    Ok(())
}

/// Mamba's selective-scan kernel alone at `(B, L, D = 2 d_model, N)`, against
/// the copy floor: bytes = one read of `uz`, `delta`, `xdbl` and one write of `y`.
#[cfg(feature = "cuda")]
fn mamba_scan_kernel(dev: &Device, a: &Args, copy_gbs: f64) -> anyhow::Result<serde_json::Value> {
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
