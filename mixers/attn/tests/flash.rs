//! The flash-attention kernels against attention written out with candle's
//! ops (scores, mask, softmax, weighted sum), forward and every gradient, on
//! random inputs at odd shapes: one position, blocks cut short, several
//! query and key blocks, grouped and multi-query heads, head sizes that are
//! not a multiple of the vector width, more keys than queries (a prefill
//! after a cached prefix), and no mask.

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_attn::flash_attention;
use lrnnx_testing::attention::{attention_reference, FLASH_SHAPES};
use lrnnx_testing::{max_rel, randn};

/// Past the CUDA kernels' head sizes: the CPU kernels take any up to 256.
const WIDE_HEAD: (usize, usize, usize, usize, usize, usize, bool) = (1, 65, 129, 2, 1, 80, false);

fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Tensor {
    attention_reference(q, k, v, scale, causal).expect("reference attention")
}

fn check(dtype: DType, tol: f64) {
    for (n, &(b, lq, lk, h, hkv, d, causal)) in FLASH_SHAPES.iter().chain([&WIDE_HEAD]).enumerate()
    {
        let seed = 100 * n as u64;
        let q = Var::from_tensor(&randn(&[b, lq, h, d], seed, dtype)).expect("q");
        let k = Var::from_tensor(&randn(&[b, lk, hkv, d], seed + 1, dtype)).expect("k");
        let v = Var::from_tensor(&randn(&[b, lk, hkv, d], seed + 2, dtype)).expect("v");
        let w = randn(&[b, lq, h, d], seed + 3, dtype);
        let scale = 1.0 / (d as f64).sqrt();
        let ours = flash_attention(&q, &k, &v, scale, causal).expect("flash");
        let want = reference(&q, &k, &v, scale, causal);
        let shape = format!("B{b} Lq{lq} Lk{lk} h{h} hkv{hkv} d{d} causal={causal}");
        let e = max_rel(&ours, &want);
        assert!(e < tol, "{dtype:?} {shape}: forward off by {e:e}");
        let g_ours = (ours * &w)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("bwd");
        let g_want = (want * &w)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("bwd");
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (
                g_ours.get(var).expect("our gradient"),
                g_want.get(var).expect("reference gradient"),
            );
            let e = max_rel(a, b);
            assert!(e < tol, "{dtype:?} {shape}: d{name} off by {e:e}");
        }
    }
}

#[test]
fn flash_attention_matches_candle_ops_in_f64() {
    check(DType::F64, 1e-11);
}

#[test]
fn flash_attention_matches_candle_ops_in_f32() {
    check(DType::F32, 2e-5);
}

#[test]
fn flash_attention_refuses_bad_shapes_naming_them() {
    let dev = Device::Cpu;
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).expect("zeros");
    let cases: [(&[usize], &[usize], &str); 4] = [
        (
            &[1, 4, 3, 8],
            &[1, 4, 2, 8],
            "dividing the 3 query heads, found 2",
        ),
        (&[1, 4, 2, 8], &[1, 4, 2, 9], "d=8"),
        (&[1, 5, 2, 8], &[1, 4, 2, 8], "found 4 keys for 5 queries"),
        (&[1, 4, 2, 300], &[1, 4, 2, 300], "1..=256, found 300"),
    ];
    for (qs, ks, want) in cases {
        let e = flash_attention(&z(qs), &z(ks), &z(ks), 1.0, true)
            .expect_err("bad shape refused")
            .to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    }
}
