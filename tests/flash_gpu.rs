//! The CUDA flash-attention kernels (f32, bf16 and f16 inputs) against
//! attention written out with candle's ops in f64 on the CPU, from the same
//! (rounded) inputs: the context and the gradients of q, k and v, causal and
//! not, grouped heads, head sizes below the compiled 32/64, lengths that cut
//! the 64-row tiles short, more keys than queries. Needs `--features cuda`
//! and a GPU; says it is skipped otherwise.

#[test]
fn cuda_flash_attention_and_its_gradients_equal_candle_ops_in_f64() {
    #[cfg(feature = "cuda")]
    gpu::run();
    #[cfg(not(feature = "cuda"))]
    println!(
        "SKIPPED the CUDA flash-attention test: built without `--features cuda` (build with it and run on a GPU machine, see README)"
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::{DType, Device, Var};
    use lrnnx_attn::flash_attention;
    use lrnnx_testing::attention::{attention_reference, FLASH_SHAPES};
    use lrnnx_testing::{max_rel, randn};

    pub fn run() {
        let dev = match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                println!("SKIPPED the CUDA flash-attention test: no CUDA device ({e})");
                return;
            }
        };
        // (dtype, tolerance relative to the largest reference value): f32
        // arithmetic throughout, then the result rounded to the input dtype.
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let mut worst = 0f64;
            for (n, &(b, lq, lk, h, hkv, d, causal)) in FLASH_SHAPES.iter().enumerate() {
                let seed = 7 + 10 * n as u64;
                let leaf = |shape: &[usize], s: u64| {
                    randn(shape, s, DType::F64)
                        .to_dtype(dtype)
                        .expect("rounded input")
                };
                let host = [
                    leaf(&[b, lq, h, d], seed),
                    leaf(&[b, lk, hkv, d], seed + 1),
                    leaf(&[b, lk, hkv, d], seed + 2),
                ];
                let w = randn(&[b, lq, h, d], seed + 3, DType::F64);
                let scale = 1.0 / (d as f64).sqrt();
                let gpu: Vec<Var> = host
                    .iter()
                    .map(|t| Var::from_tensor(&t.to_device(&dev).expect("to GPU")).expect("var"))
                    .collect();
                let cpu: Vec<Var> = host
                    .iter()
                    .map(|t| Var::from_tensor(&t.to_dtype(DType::F64).expect("f64")).expect("var"))
                    .collect();
                let ours =
                    flash_attention(&gpu[0], &gpu[1], &gpu[2], scale, causal).expect("flash");
                let want = attention_reference(&cpu[0], &cpu[1], &cpu[2], scale, causal)
                    .expect("reference");
                let ours_host = ours
                    .to_device(&Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F64))
                    .expect("host");
                let shape =
                    format!("{dtype:?} B{b} Lq{lq} Lk{lk} h{h} hkv{hkv} d{d} causal={causal}");
                let e = max_rel(&ours_host, &want);
                worst = worst.max(e);
                assert!(e < tol, "{shape}: forward off by {e:e}");
                let wg = w
                    .to_device(&dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .expect("weights");
                let g_ours = (ours * &wg)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.backward())
                    .expect("backward");
                // The reference loss uses the same rounded weights.
                let wr = wg
                    .to_device(&Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F64))
                    .expect("weights");
                let g_want = (want * &wr)
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.backward())
                    .expect("backward");
                for (i, name) in ["q", "k", "v"].iter().enumerate() {
                    let a = g_ours.get(&gpu[i]).expect("our gradient");
                    let a = a
                        .to_device(&Device::Cpu)
                        .and_then(|t| t.to_dtype(DType::F64))
                        .expect("host");
                    let e = max_rel(&a, g_want.get(&cpu[i]).expect("reference gradient"));
                    worst = worst.max(e);
                    assert!(e < tol, "{shape}: d{name} off by {e:e}");
                }
            }
            println!(
                "{dtype:?}: worst relative error {worst:e} over {} shapes (tolerance {tol:e})",
                FLASH_SHAPES.len()
            );
        }
    }
}
