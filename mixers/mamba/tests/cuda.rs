//! Mamba on the GPU against the CPU: forward, prefill then steps, the scan
//! kernel against the plain reference (needs a GPU; feature `cuda`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{Discretization, ForwardOpts, Init, Mixer, ParamStore, StepOpts};
use lrnnx_mamba::reference::selective_scan_reference;
use lrnnx_mamba::{cuda::selective_scan_gpu, Mamba, MambaConfig, Rule, ScanArgs};
use lrnnx_testing::{max_rel, randn};

fn draw(shape: &[usize], seed: u64, init: Init, dtype: DType, dev: &Device) -> Tensor {
    ParamStore::init(seed, dtype, dev)
        .builder()
        .get(shape, "x", init)
        .expect("random tensor")
}

/// The scan's arguments from `[uz, delta, dta, xdbl, a, skip, h0]`.
fn args<'a>(t: [&'a Tensor; 7], rule: Rule) -> ScanArgs<'a> {
    let [uz, delta, dta, xdbl, a, skip, h0] = t;
    ScanArgs {
        uz,
        delta,
        dta,
        xdbl,
        a,
        skip,
        h0,
        rule,
    }
}

const RULES: [(Discretization, Rule); 4] = [
    (Discretization::Mamba, Rule::Mamba),
    (Discretization::Zoh, Rule::Zoh),
    (Discretization::Bilinear, Rule::Bilinear),
    (Discretization::Dirac, Rule::Dirac),
];

/// The kernel alone against the f64 reference: every compiled state size
/// (N = 3, 16, 33, 64), odd channel counts, chunked and single positions.
#[test]
fn scan_kernel_matches_reference() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    for dtype in [DType::F64, DType::F32] {
        for (case, &(b, l, d, n, r)) in [
            (1, 1, 1, 3, 1),
            (2, 37, 19, 16, 3),
            (3, 300, 40, 33, 5),
            (2, 1000, 17, 64, 2),
            (1, 4099, 32, 8, 4),
        ]
        .iter()
        .enumerate()
        {
            for (_, rule) in RULES {
                let s = 10 * case as u64;
                let normal = Init::Normal {
                    mean: 0.0,
                    std: 1.0,
                };
                let step = Init::Uniform { lo: 0.001, hi: 0.5 };
                // `[uz, delta, dta, xdbl, a, skip, h0]`, seeds `s..s + 7`.
                let specs: [(Vec<usize>, Init); 7] = [
                    (vec![b, l, 2 * d], normal.clone()),
                    (vec![b, l, d], step.clone()),
                    (vec![b, l, d], step),
                    (vec![b, l, r + 2 * n], normal.clone()),
                    (vec![d, n], Init::Uniform { lo: -8.0, hi: -0.5 }),
                    (vec![d], normal.clone()),
                    (vec![b, d.div_ceil(16), n, 16], normal),
                ];
                let drawn: [Tensor; 7] = std::array::from_fn(|i| {
                    let (shape, init) = &specs[i];
                    draw(shape, s + i as u64, init.clone(), dtype, &Device::Cpu)
                });
                let cpu = drawn.each_ref();
                let want = selective_scan_reference(&args(cpu, rule)).expect("reference");
                let on_gpu = cpu.map(|t| t.to_device(&gpu).expect("to GPU"));
                let got = selective_scan_gpu(&args(on_gpu.each_ref(), rule)).expect("GPU scan");
                let (ey, eh) = (max_rel(&got.0, &want.0), max_rel(&got.1, &want.1));
                println!("scan {dtype:?} B={b} L={l} D={d} N={n} {rule:?}: y {ey:.1e}, last state {eh:.1e}");
                let tol = if dtype == DType::F64 { 1e-11 } else { 2e-5 };
                assert!(
                    ey < tol && eh < tol,
                    "{dtype:?} case {case} {rule:?}: y {ey:e}, h {eh:e}"
                );
            }
        }
    }
}

/// The layer on the GPU against the fused CPU kernels: forward, and a
/// prefill followed by steps, every rule, with and without events.
#[test]
fn layer_on_gpu_matches_cpu() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    for (b, l, h, n) in [
        (1, 1, 4, 3),
        (3, 45, 12, 5),
        (2, 300, 24, 16),
        (8, 2048, 256, 16),
    ] {
        for (i, (disc, _)) in RULES.into_iter().enumerate() {
            for events in [false, true] {
                let mut cfg = MambaConfig::new(n);
                cfg.discretization = disc;
                let cpu_store = ParamStore::init(i as u64, DType::F32, &Device::Cpu);
                let cpu = Mamba::new(h, cfg.clone(), &cpu_store.builder()).expect("CPU layer");
                let tensors = cpu_store.tensors().into_iter().collect();
                let gpu_store = ParamStore::load(tensors, DType::F32, &gpu);
                let on_gpu = Mamba::new(h, cfg, &gpu_store.builder()).expect("GPU layer");
                let x = draw(
                    &[b, l, h],
                    7,
                    Init::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                    DType::F32,
                    &Device::Cpu,
                );
                let its = events.then(|| {
                    draw(
                        &[b, l],
                        8,
                        Init::Uniform { lo: 0.2, hi: 2.2 },
                        DType::F32,
                        &Device::Cpu,
                    )
                });
                let opts = |dev: &Device| ForwardOpts {
                    integration_timesteps: its.as_ref().map(|t| t.to_device(dev).expect("its")),
                    lengths: None,
                };
                let want = cpu.forward(&x, &opts(&Device::Cpu)).expect("CPU forward");
                let got = on_gpu
                    .forward(&x.to_device(&gpu).expect("x"), &opts(&gpu))
                    .expect("GPU forward");
                let e = max_rel(&got, &want);
                println!("Mamba B={b} L={l} H={h} N={n} {disc:?} events={events}: forward {e:.1e}");
                assert!(e < 1e-4, "forward {e:e}");
                // Prefill half on the GPU, then up to 16 steps.
                let split = l / 2;
                let mut st = on_gpu.init_state(b, l, DType::F32, &gpu).expect("state");
                let xg = x.to_device(&gpu).expect("x");
                let mut outs = Vec::new();
                if split > 0 {
                    let o = ForwardOpts {
                        integration_timesteps: opts(&gpu)
                            .integration_timesteps
                            .map(|t| t.narrow(1, 0, split).expect("its")),
                        lengths: None,
                    };
                    outs.push(
                        on_gpu
                            .prefill(&xg.narrow(1, 0, split).expect("x"), &mut st, &o)
                            .expect("prefill"),
                    );
                }
                let end = l.min(split + 16);
                for t in split..end {
                    let so = StepOpts {
                        integration_timesteps: opts(&gpu)
                            .integration_timesteps
                            .map(|ts| ts.narrow(1, t, 1).expect("its")),
                    };
                    let yt = on_gpu
                        .step(
                            &xg.narrow(1, t, 1).expect("x").squeeze(1).expect("x"),
                            &mut st,
                            &so,
                        )
                        .expect("step");
                    outs.push(yt.unsqueeze(1).expect("y"));
                }
                let stepped = Tensor::cat(&outs, 1).expect("cat");
                let e = max_rel(&stepped, &want.narrow(1, 0, end).expect("want"));
                assert!(e < 1e-4, "prefill + steps {e:e}");
            }
        }
    }
}

/// Backward through the GPU scan is refused with an error naming the way
/// out, never silently treated as a constant.
#[test]
fn backward_on_gpu_is_a_clear_error() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let store = ParamStore::init(0, DType::F32, &gpu);
    let m = Mamba::new(8, MambaConfig::new(4), &store.builder()).expect("layer");
    let x = randn(&[2, 5, 8], 1, DType::F32).to_device(&gpu).expect("x");
    let y = m.forward(&x, &ForwardOpts::default()).expect("forward");
    let e = y
        .sqr()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect_err("backward must fail")
        .to_string();
    assert!(e.contains("no CUDA backward") && e.contains("CPU"), "{e}");
}
