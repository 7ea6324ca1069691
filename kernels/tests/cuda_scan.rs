//! The CUDA scan against the CPU scan on random inputs (needs a GPU; feature `cuda`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_kernels::scan::{complex_diag_scan, ComplexScan};
use lrnnx_testing::max_rel;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device (run on the GPU machine)")
}

fn inputs(b: usize, l: usize, n: usize, dtype: DType) -> (Tensor, Tensor, Tensor) {
    let cpu = Device::Cpu;
    let u = Tensor::randn(0f64, 1.0, (b, l, 2 * n), &cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // |lambda| up to ~0.99 so that long scans stay bounded but carries matter.
    let r = Tensor::rand(0.5f64, 0.99, n, &cpu).unwrap();
    let th = Tensor::rand(-3.0f64, 3.0, n, &cpu).unwrap();
    let lam = Tensor::cat(
        &[
            (&r * th.cos().unwrap()).unwrap(),
            (&r * th.sin().unwrap()).unwrap(),
        ],
        0,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let h0 = Tensor::randn(0f64, 1.0, (b, 2 * n), &cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (u, lam, h0)
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (2, 7, 3),
    (3, 37, 19),
    (2, 1000, 33),
    (1, 4099, 5),
    (8, 2048, 256),
];

#[test]
fn forward_matches_cpu_at_many_shapes() {
    let dev = gpu();
    for &(b, l, n) in SHAPES {
        for dtype in [DType::F32, DType::F64] {
            let (u, lam, h0) = inputs(b, l, n, dtype);
            for (reverse, conj) in [(false, false), (true, true), (false, true)] {
                let op = ComplexScan { reverse, conj };
                let cpu = u.apply_op3_no_bwd(&lam, &h0, &op).unwrap();
                let g = u
                    .to_device(&dev)
                    .unwrap()
                    .apply_op3_no_bwd(
                        &lam.to_device(&dev).unwrap(),
                        &h0.to_device(&dev).unwrap(),
                        &op,
                    )
                    .unwrap();
                let err = max_rel(&g, &cpu);
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                println!("B={b} L={l} N={n} {dtype:?} reverse={reverse} conj={conj}: max rel err {err:.2e}");
                assert!(err < tol, "B={b} L={l} N={n} {dtype:?}: {err}");
            }
        }
    }
}

#[test]
fn gradients_match_cpu() {
    let dev = gpu();
    let (u, lam, h0) = inputs(3, 129, 17, DType::F64);
    let w = Tensor::randn(0f64, 1.0, u.shape(), &Device::Cpu).unwrap();
    let grads_on = |d: &Device| {
        let (u, lam, h0) = (
            Var::from_tensor(&u.to_device(d).unwrap()).unwrap(),
            Var::from_tensor(&lam.to_device(d).unwrap()).unwrap(),
            Var::from_tensor(&h0.to_device(d).unwrap()).unwrap(),
        );
        let h = complex_diag_scan(u.as_tensor(), lam.as_tensor(), Some(h0.as_tensor())).unwrap();
        let loss = (h * w.to_device(d).unwrap()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        [&u, &lam, &h0].map(|v| g.get(v.as_tensor()).unwrap().clone())
    };
    let (c, g) = (grads_on(&Device::Cpu), grads_on(&dev));
    for (name, (a, b)) in ["u", "lambda", "h0"].iter().zip(g.iter().zip(c.iter())) {
        let err = max_rel(a, b);
        println!("grad {name}: max rel err {err:.2e}");
        assert!(err < 1e-10, "{name}: {err}");
    }
}
