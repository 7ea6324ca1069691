//! CPU-time profile of the Mamba pieces at the bench shape (B=8, L=2048,
//! d_model=256, d_state=16): process CPU seconds per call, which stays
//! meaningful on a busy machine where wall time does not.
//!
//! `cargo run --release -p lrnnx-mamba --example mamba_profile [iters]`

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_mamba::{Mamba, MambaConfig, Rule};

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = 100.0;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

fn time(name: &str, iters: usize, tokens: usize, mut f: impl FnMut()) {
    if let Some(only) = std::env::args().nth(2) {
        if !name.contains(&only) {
            return;
        }
    }
    f();
    let (c0, w0) = (cpu_seconds(), std::time::Instant::now());
    for _ in 0..iters {
        f();
    }
    let cpu = (cpu_seconds() - c0) / iters as f64;
    let wall = w0.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{name:<28} cpu {:>9.3} ms/call  wall {:>9.3} ms/call  {:>10.0} tokens per cpu-second",
        cpu * 1e3,
        wall * 1e3,
        tokens as f64 / cpu
    );
}

fn main() -> candle_core::Result<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (b, l, h, n) = (8, 2048, 256, 16);
    let (d, r) = (2 * h, h / 16);
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    let m = Mamba::new(h, MambaConfig::new(n), &store.builder()).expect("layer");
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (b, l, h), &dev)?;
    let tok = b * l;
    let uz = Tensor::randn(0f32, 1.0, (b, l, 2 * d), &dev)?;
    let xw = (Tensor::randn(0f32, 1.0, (r + 2 * n, d), &dev)? * 0.05)?;
    let pack = (Tensor::randn(0f32, 1.0, (d, n + r + 3), &dev)? * 0.3)?;
    let w = Tensor::randn(0f32, 1.0, (d, 4), &dev)?;
    let bias = Tensor::randn(0f32, 1.0, d, &dev)?;
    let a = Tensor::randn(0f32, 1.0, (b * l, h), &dev)?;
    let wi = Tensor::randn(0f32, 1.0, (2 * d, h), &dev)?;
    time("in_proj matmul", iters, tok, || {
        a.matmul(&wi.t().unwrap()).unwrap();
    });
    time("conv op", iters, tok, || {
        lrnnx_mamba::conv_silu(&uz, &w, &bias).unwrap();
    });
    time("scan op fwd", iters, tok, || {
        lrnnx_mamba::selective_scan(&uz, &xw, &pack, None, Rule::Mamba, n).unwrap();
    });
    let uzv = Var::from_tensor(&uz)?;
    time("scan op fwd+bwd", iters, tok, || {
        lrnnx_mamba::selective_scan(uzv.as_tensor(), &xw, &pack, None, Rule::Mamba, n)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .unwrap();
    });
    time("layer forward", iters, tok, || {
        m.forward(&x, &ForwardOpts::default()).unwrap();
    });
    let xv = Var::from_tensor(&x)?;
    time("layer forward+backward", iters, tok, || {
        m.forward(xv.as_tensor(), &ForwardOpts::default())
            .unwrap()
            .sqr()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .unwrap();
    });
    let mut st = m.init_state(b, l, DType::F32, &dev).expect("state");
    let xt = x.narrow(1, 0, 1)?.squeeze(1)?;
    time("step", iters * 200, b, || {
        m.step(&xt, &mut st, &StepOpts::default()).unwrap();
    });
    Ok(())
}
