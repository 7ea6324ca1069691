//! Running kernels: split into tasks over rayon, each task compiled for the
//! vector features of the CPU (AVX-512 or AVX2 + FMA on x86-64), so that the
//! kernels' vector code and fixed-width lane loops compile to wide SIMD.

use rayon::prelude::*;

use super::dispatch::{cpu_supports, has_avx2, has_avx512, SimdLevel};
use super::simd::Simd;

/// A kernel made of independent tasks.
///
/// `run` must be `#[inline(always)]` (and so must everything it calls) so
/// that it is compiled inside the feature-enabled entry points.
pub trait Kernel: Sync {
    /// Runs task `task`.
    fn run(&self, task: usize);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: Kernel>(k: &K, task: usize) {
    k.run(task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn run_avx512<K: Kernel>(k: &K, task: usize) {
    k.run(task)
}

/// Runs `k`'s task compiled for AVX-512; panics on a CPU without it.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn run_on_avx512<K: Kernel>(k: &K, task: usize) {
    assert!(
        cpu_supports(SimdLevel::Avx512),
        "AVX-512 kernel on a CPU without AVX-512"
    );
    // SAFETY: the CPU supports the features `run_avx512` is compiled for.
    unsafe { run_avx512(k, task) }
}

/// Runs `k`'s task compiled for AVX2 + FMA; panics on a CPU without them.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn run_on_avx2<K: Kernel>(k: &K, task: usize) {
    assert!(
        cpu_supports(SimdLevel::Avx2),
        "AVX2 kernel on a CPU without AVX2"
    );
    // SAFETY: the CPU supports the features `run_avx2` is compiled for.
    unsafe { run_avx2(k, task) }
}

/// Runs `k`'s task compiled for the [`super::simd_level`] in force.
#[inline]
pub fn run_best<K: Kernel>(k: &K, task: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return run_on_avx512(k, task);
        }
        if has_avx2() {
            return run_on_avx2(k, task);
        }
    }
    k.run(task)
}

/// Runs tasks `0..tasks` on backend `S`, in parallel when `parallel`.
pub fn run_tasks_on<S: Simd, K: Kernel>(k: &K, tasks: usize, parallel: bool) {
    if parallel && tasks > 1 && threads() > 1 {
        (0..tasks).into_par_iter().for_each(|t| S::enter(k, t));
    } else {
        (0..tasks).for_each(|t| S::enter(k, t));
    }
}

/// Threads rayon runs on.
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
