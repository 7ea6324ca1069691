//! Every vector backend the CPU has, forced one by one, against the scalar
//! [`Float`] math (bit for bit) and against f64 (to the documented accuracy),
//! on random inputs whose lengths are not multiples of [`LANES`].

use super::*;
use crate::cpu::dispatch::{cpu_supports, SimdLevel};

/// The vector functions under test, in order.
const FUNCS: usize = 6;

/// Deterministic uniform numbers in `[lo, hi]` (lrnnx-testing's generator, rounded to f32).
pub(crate) fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    lrnnx_testing::uniform_vec(n, seed, lo as f64, hi as f64)
        .into_iter()
        .map(|v| (v as f32).clamp(lo, hi))
        .collect()
}

/// Evaluates the functions on `xs` with backend `S`, `LANES` at a time and a
/// partial vector at the end, inside the backend's entry point.
struct Eval<'a> {
    xs: &'a [f32],
    out: &'a mut [f32],
}

struct K<'a, S> {
    xs: &'a [f32],
    out: std::sync::Mutex<&'a mut [f32]>,
    _s: std::marker::PhantomData<S>,
}

impl<S: Simd<E = f32>> Kernel for K<'_, S> {
    #[inline(always)]
    fn run(&self, _task: usize) {
        let n = self.xs.len();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for i0 in (0..n).step_by(LANES) {
            let w = LANES.min(n - i0);
            let v = S::load_part(&self.xs[i0..], w);
            let fs = [
                S::exp(v),
                S::expm1_exp(v).0,
                S::softplus(v),
                S::softplus_grad(v),
                S::sigmoid(v),
                S::phi2(v),
            ];
            for (j, f) in fs.into_iter().enumerate() {
                S::store_part(f, &mut out[j * n + i0..], w);
            }
        }
    }
}

impl SimdFn<f32> for Eval<'_> {
    type Out = ();
    fn call<S: Simd<E = f32>>(self) {
        let k = K::<S> {
            xs: self.xs,
            out: std::sync::Mutex::new(self.out),
            _s: std::marker::PhantomData,
        };
        crate::cpu::exec::run_tasks_on::<S, _>(&k, 1, false);
    }
}

/// The functions of `Eval` with the scalar math.
fn scalar(v: f32) -> [f32; FUNCS] {
    [
        v.exp_(),
        v.expm1_exp().0,
        v.softplus(),
        v.softplus_grad(),
        v.sigmoid(),
        v.phi2(),
    ]
}

/// The same functions in f64, the reference for the accuracy check.
fn reference(x: f64) -> [f64; FUNCS] {
    let sig = 1.0 / (1.0 + (-x).exp());
    let phi2 = if x == 0.0 {
        0.5
    } else {
        (x.exp() * (x - 1.0) + 1.0) / (x * x)
    };
    [
        x.exp(),
        x.exp_m1(),
        if x > 20.0 { x } else { x.exp().ln_1p() },
        if x > 20.0 { 1.0 } else { sig },
        sig,
        phi2,
    ]
}

fn run(level: &str, xs: &[f32], f: impl FnOnce(Eval<'_>)) -> Vec<f32> {
    let mut out = vec![f32::NAN; xs.len() * FUNCS];
    f(Eval { xs, out: &mut out });
    assert!(
        out.iter().all(|v| !v.is_nan()),
        "{level}: a lane was not written"
    );
    out
}

#[test]
fn every_backend_equals_scalar_math_bit_for_bit() {
    for (n, seed) in [
        (1, 1),
        (LANES - 1, 2),
        (LANES + 3, 3),
        (7 * LANES + 5, 4),
        (1001, 5),
    ] {
        let mut xs = uniform(n, -30.0, 30.0, seed);
        // Near 0, where expm1 and phi2 switch to their series.
        for (i, x) in xs.iter_mut().enumerate().step_by(3) {
            *x *= 1e-3 * (i % 7) as f32;
        }
        let mut outs = vec![("portable", run("portable", &xs, |e| e.call::<Lanes<f32>>()))];
        #[cfg(target_arch = "x86_64")]
        {
            if cpu_supports(SimdLevel::Avx2) {
                outs.push(("AVX2", run("AVX2", &xs, |e| e.call::<Avx2>())));
            }
            if cpu_supports(SimdLevel::Avx512) {
                outs.push(("AVX-512", run("AVX-512", &xs, |e| e.call::<Avx512>())));
            }
        }
        outs.push(("dispatch", run("dispatch", &xs, |e| dispatch::<f32, _>(e))));
        for (name, out) in &outs {
            for (i, &x) in xs.iter().enumerate() {
                for (j, want) in scalar(x).into_iter().enumerate() {
                    let got = out[j * n + i];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{name}, n = {n}: function {j} at {x}: {got} vs scalar {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn scalar_math_is_accurate_against_f64() {
    let xs = uniform(20_001, -30.0, 30.0, 9);
    for &x in &xs {
        let got = scalar(x);
        let want = reference(x as f64);
        for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = (g as f64 - w).abs() / w.abs().max(1e-30);
            // phi2 loses a few more bits to cancellation just above |x| = 0.1.
            let tol = if j == 5 { 1e-5 } else { 5e-7 };
            assert!(err < tol, "function {j} at {x}: {g} vs {w} ({err:e})");
        }
    }
}

/// An elementwise loop that the compiler vectorizes, built with
/// [`crate::with_simd`] so that it can run at every level.
fn activations_impl<T: Float>(x: &[T], out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let (g, dg) = crate::cpu::gelu_and_grad(v);
        *o = g + dg * crate::cpu::log_sigmoid(v) + v.erf() * v.exp_();
    }
}

crate::with_simd! {
    fn activations<T: Float>(x: &[T], out: &mut [T]) = activations_impl; at activations_at;
}

#[test]
fn with_simd_gives_the_same_bits_at_every_level() {
    for n in [1usize, 17, 255, 1000] {
        let xs = uniform(n, -9.0, 9.0, n as u64);
        let mut plain = vec![0f32; n];
        activations_impl(&xs, &mut plain);
        let mut dispatched = vec![0f32; n];
        activations(&xs, &mut dispatched);
        assert_eq!(plain, dispatched, "n = {n}: dispatched");
        for level in [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512] {
            if !cpu_supports(level) {
                continue;
            }
            let mut out = vec![0f32; n];
            activations_at(level, &xs, &mut out);
            assert_eq!(plain, out, "n = {n}: {level:?}");
        }
    }
}

#[test]
fn the_level_in_force_is_one_the_cpu_has() {
    let level = crate::cpu::simd_level();
    assert!(cpu_supports(level));
    assert_eq!(crate::cpu::has_avx2(), level >= SimdLevel::Avx2);
    assert_eq!(crate::cpu::has_avx512(), level == SimdLevel::Avx512);
    if std::env::var_os("LRNNX_NO_SIMD").is_some() {
        assert_eq!(level, SimdLevel::Baseline);
    } else if std::env::var_os("LRNNX_NO_AVX512").is_some() {
        assert!(level <= SimdLevel::Avx2);
    }
}
