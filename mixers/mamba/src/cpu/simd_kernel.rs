//! Kernels written once over their element type `T` and run with whichever
//! vector backend `S` (`S::E = T`) the dispatch picks, so that one struct
//! serves both as the dispatched call and as the per-task kernel.

use std::marker::PhantomData;

use lrnnx_kernels::cpu::exec::{run_tasks_on, Kernel};
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::Simd;

/// A task-parallel kernel over elements `T`, generic in the backend.
pub(crate) trait SimdKernel<T: Float>: Sync {
    /// Runs task `task` with backend `S`.
    fn run_on<S: Simd<E = T>>(&self, task: usize);
}

/// `K` with its backend fixed: the [`Kernel`] that `run_tasks_on` takes.
struct On<'k, K, S>(&'k K, PhantomData<fn() -> S>);

impl<K: SimdKernel<S::E>, S: Simd> Kernel for On<'_, K, S> {
    #[inline(always)]
    fn run(&self, task: usize) {
        self.0.run_on::<S>(task)
    }
}

/// Runs tasks `0..tasks` of `k` with backend `S` (on rayon when `parallel`).
#[inline]
pub(crate) fn run_simd_tasks<S: Simd, K: SimdKernel<S::E>>(k: &K, tasks: usize, parallel: bool) {
    run_tasks_on::<S, _>(&On::<K, S>(k, PhantomData), tasks, parallel);
}
