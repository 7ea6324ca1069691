//! LRU against a slow, obviously right reference; step, prefill, kernel and gradients.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, Lti, Mixer, ParamStore};
use lrnnx_lru::{Lru, LruConfig};
use lrnnx_testing::{
    assert_decoding_matches_forward, assert_lengths_change_nothing, assert_mentions,
    assert_wrong_width_is_named, forward_error, max_err, randn, vec1, BuildSite, GradientCheck,
};

fn config(n: usize) -> LruConfig {
    LruConfig {
        d_state: n,
        r_min: 0.4,
        r_max: 0.95,
        max_phase: 3.0,
    }
}

fn build(h: usize, n: usize, seed: u64, dtype: DType) -> (Lru, std::sync::Arc<ParamStore>) {
    let store = ParamStore::init(seed, dtype, &Device::Cpu);
    let lru = Lru::new(h, config(n), &store.builder()).unwrap();
    (lru, store)
}

/// Per-token recurrence in f64 with the complex numbers spelled out.
fn reference(store: &ParamStore, x: &Tensor) -> Vec<f64> {
    let p = store.tensors();
    let g = |k: &str| vec1(&p[k]);
    let (nu, th, ga) = (g("nu_log"), g("theta_log"), g("gamma_log"));
    let (bre, bim, cre, cim, d) = (g("B_re"), g("B_im"), g("C_re"), g("C_im"), g("D"));
    let n = nu.len();
    let (b, l, h) = x.dims3().unwrap();
    let xs = vec1(x);
    let mut y = vec![0.0; b * l * h];
    for bi in 0..b {
        let mut st = vec![(0.0f64, 0.0f64); n];
        for t in 0..l {
            let xt = &xs[(bi * l + t) * h..(bi * l + t + 1) * h];
            for k in 0..n {
                let m = (-nu[k].exp()).exp();
                let (lr, li) = (m * th[k].exp().cos(), m * th[k].exp().sin());
                let (mut ur, mut ui) = (0.0, 0.0);
                for i in 0..h {
                    ur += ga[k].exp() * bre[k * h + i] * xt[i];
                    ui += ga[k].exp() * bim[k * h + i] * xt[i];
                }
                let (sr, si) = st[k];
                st[k] = (lr * sr - li * si + ur, lr * si + li * sr + ui);
            }
            for o in 0..h {
                let mut acc = d[o] * xt[o];
                for k in 0..n {
                    acc += cre[o * n + k] * st[k].0 - cim[o * n + k] * st[k].1;
                }
                y[(bi * l + t) * h + o] = acc;
            }
        }
    }
    y
}

#[test]
fn forward_matches_reference_at_odd_shapes() {
    for (b, l, h, n) in [(1, 1, 3, 1), (2, 9, 5, 7), (3, 37, 8, 19), (1, 64, 4, 33)] {
        let (lru, store) = build(h, n, 11, DType::F32);
        let x = randn(&[b, l, h], 5, DType::F32);
        let y = lru.forward(&x, &ForwardOpts::default()).unwrap();
        let err = max_err(&vec1(&y), &reference(&store, &x));
        assert!(err < 1e-4, "({b},{l},{h},{n}): {err}");
    }
}

#[test]
fn step_and_prefill_equal_forward() {
    let (lru, _) = build(6, 10, 2, DType::F32);
    let x = randn(&[3, 21, 6], 9, DType::F32);
    assert_decoding_matches_forward(&lru, &x, &[13], 1e-5, "LRU");
}

#[test]
fn convolution_with_kernel_equals_forward() {
    let (b, l, h, n) = (2, 17, 5, 6);
    let (lru, store) = build(h, n, 3, DType::F64);
    let x = randn(&[b, l, h], 4, DType::F64);
    let y = vec1(&lru.forward(&x, &ForwardOpts::default()).unwrap());
    let k = vec1(&lru.kernel(l).unwrap()); // (H, H, L)
    let d = vec1(&store.tensors()["D"]);
    let xs = vec1(&x);
    let mut conv = vec![0.0; b * l * h];
    for bi in 0..b {
        for t in 0..l {
            for o in 0..h {
                let mut acc = d[o] * xs[(bi * l + t) * h + o];
                for s in 0..=t {
                    for i in 0..h {
                        acc += k[(o * h + i) * l + (t - s)] * xs[(bi * l + s) * h + i];
                    }
                }
                conv[(bi * l + t) * h + o] = acc;
            }
        }
    }
    assert!(max_err(&conv, &y) < 1e-10);
}

#[test]
fn lengths_change_nothing_as_in_lrnnx() {
    let (lru, _) = build(4, 3, 1, DType::F32);
    assert_lengths_change_nothing(&lru, &randn(&[2, 8, 4], 2, DType::F32), false);
}

/// Central finite differences of `sum(forward(x) * w)` against autograd, in f64.
#[test]
fn gradients_match_finite_differences() {
    let (b, l, h, n) = (2, 7, 3, 4);
    let (lru, store) = build(h, n, 8, DType::F64);
    let (_, checked) = GradientCheck::new(1e-6).assert_mixer(&lru, &store, &[b, l, h]);
    assert_eq!(checked, 3 * 9, "every parameter and the input were checked");
}

#[test]
fn bad_shapes_and_kwargs_are_named() {
    let (lru, _) = build(4, 3, 1, DType::F32);
    assert_wrong_width_is_named(&lru, 4);
    assert_mentions(&forward_error(&lru, &[8, 4]), &["[8, 4]"]);
    let site = BuildSite::new(4, 3, 2);
    let e = site.build_error("LRU", r#"{"r_mni": 0.1}"#);
    assert_mentions(&e, &["layer 2", "r_mni", "r_min"]);
    let e = site.build_error("LRU", r#"{"r_min": 0.9, "r_max": 0.5}"#);
    assert_mentions(&e, &["r_min", "0.9"]);
}
