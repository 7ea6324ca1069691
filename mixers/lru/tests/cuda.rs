//! The LRU layer on the GPU against the CPU: forward and step (needs a GPU; feature `cuda`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_lru::{Lru, LruConfig};
use lrnnx_testing::max_rel;

#[test]
fn forward_and_step_match_cpu() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    for (b, l, h, n) in [(1, 1, 4, 3), (3, 45, 12, 21), (8, 2048, 256, 256)] {
        let cfg = LruConfig {
            d_state: n,
            r_min: 0.5,
            r_max: 0.99,
            max_phase: 3.0,
        };
        let cpu_store = ParamStore::init(1, DType::F32, &Device::Cpu);
        let cpu = Lru::new(h, cfg.clone(), &cpu_store.builder()).unwrap();
        let tensors = cpu_store.tensors().into_iter().collect();
        let gpu_store = ParamStore::load(tensors, DType::F32, &gpu);
        let on_gpu = Lru::new(h, cfg, &gpu_store.builder()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (b, l, h), &Device::Cpu).unwrap();
        let y_cpu = cpu.forward(&x, &ForwardOpts::default()).unwrap();
        let y_gpu = on_gpu
            .forward(&x.to_device(&gpu).unwrap(), &ForwardOpts::default())
            .unwrap();
        let err = max_rel(&y_gpu, &y_cpu);
        println!("LRU forward B={b} L={l} H={h} N={n}: max rel err GPU vs CPU {err:.2e}");
        assert!(err < 1e-4, "{err}");
        let steps = l.min(64);
        let mut sc = cpu.init_state(b, l, DType::F32, &Device::Cpu).unwrap();
        let mut sg = on_gpu.init_state(b, l, DType::F32, &gpu).unwrap();
        for t in 0..steps {
            let xt = x.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            let yc = cpu.step(&xt, &mut sc, &StepOpts::default()).unwrap();
            let yg = on_gpu
                .step(&xt.to_device(&gpu).unwrap(), &mut sg, &StepOpts::default())
                .unwrap();
            let err = max_rel(&yg, &yc);
            assert!(err < 1e-4, "step {t}: {err}");
        }
    }
}
