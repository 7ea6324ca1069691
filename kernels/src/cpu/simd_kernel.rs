//! Kernels written once over their element type `T` and run with whichever
//! vector backend `S` (`S::E = T`) the dispatch picks: one struct says how
//! its run is split ([`Schedule`]) and what a task does.

use std::marker::PhantomData;

use crate::cpu::exec::{run_tasks_on, Kernel};
use crate::cpu::float::Float;
use crate::cpu::simd::{dispatch, Dispatch, Simd, SimdFn};

/// How a run is split.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How many tasks the run has.
    pub tasks: usize,
    /// Whether the run is large enough to spread over rayon's threads.
    pub parallel: bool,
}

/// A task-parallel kernel over elements `T`, generic in the backend.
pub trait SimdKernel<T: Float>: Sync {
    /// How the run is split.
    fn schedule(&self) -> Schedule;
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

/// `K` as the call that [`dispatch`] hands the chosen backend.
struct Run<K>(K);

impl<T: Float, K: SimdKernel<T>> SimdFn<T> for Run<K> {
    type Out = ();
    fn call<S: Simd<E = T>>(self) {
        let Schedule { tasks, parallel } = self.0.schedule();
        run_tasks_on::<S, _>(&On::<K, S>(&self.0, PhantomData), tasks, parallel);
    }
}

/// Runs every task of `k` with the best vector backend for `T`.
pub fn run_kernel<T: Dispatch, K: SimdKernel<T>>(k: K) {
    dispatch(Run(k))
}
