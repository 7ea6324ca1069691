//! `x_proj` inside the fused scan: `xdbl = u @ W^T` for `u`, the first half
//! of `uz (rows, 2D)`, and `W (K, D)`; and its backward, `du += dxdbl @ W`
//! (added in place into the `u` half of the scan's `d uz`) and
//! `dW = dxdbl^T u`. `K = R + 2N` is small, so these are row kernels: a
//! block of rows shares every pass over `W`.

// Index loops over the fixed block of rows keep the accumulators in registers.
#![allow(clippy::needless_range_loop)]

use lrnnx_kernels::cpu::exec::threads;
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::{Dispatch, Simd, LANES};
use lrnnx_kernels::cpu::SharedMut;

use lrnnx_kernels::cpu::simd_kernel::{run_kernel, Schedule, SimdKernel};

/// Rows sharing one pass over `W`.
const ROWS: usize = 8;

/// Sizes: `rows` rows of `uz (rows, 2D)`, `W (K, D)`.
#[derive(Debug, Clone, Copy)]
pub struct XDims {
    /// Rows (`B * L`).
    pub rows: usize,
    /// Channels `D`.
    pub d: usize,
    /// Outputs `K`.
    pub k: usize,
}

fn tasks_for(rows: usize) -> usize {
    (8 * threads()).min(rows.div_ceil(ROWS)).max(1)
}

/// `tasks` tasks, on rayon once the products are large.
fn schedule(x: XDims, tasks: usize) -> Schedule {
    Schedule {
        tasks,
        parallel: x.rows * x.d * x.k >= 1 << 20,
    }
}

fn span(rows: usize, tasks: usize, task: usize) -> (usize, usize) {
    // Whole blocks of ROWS per task.
    let blocks = rows.div_ceil(ROWS);
    let (b0, b1) = (blocks * task / tasks, blocks * (task + 1) / tasks);
    ((b0 * ROWS).min(rows), (b1 * ROWS).min(rows))
}

struct Fwd<'a, T> {
    x: XDims,
    uz: &'a [T],
    w: &'a [T],
    tasks: usize,
    out: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for Fwd<'_, T> {
    fn schedule(&self) -> Schedule {
        schedule(self.x, self.tasks)
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let XDims { rows, d, k } = self.x;
        let (r0, r1) = span(rows, self.tasks, task);
        let full = d / LANES * LANES;
        for b0 in (r0..r1).step_by(ROWS) {
            let nb = ROWS.min(r1 - b0);
            let u: [&[T]; ROWS] = std::array::from_fn(|q| {
                let r = b0 + q.min(nb - 1);
                &self.uz[r * 2 * d..r * 2 * d + d]
            });
            for j in 0..k {
                let wr = &self.w[j * d..(j + 1) * d];
                let mut acc = [S::zero(); ROWS];
                for c in (0..full).step_by(LANES) {
                    let wv = S::load(&wr[c..]);
                    for q in 0..ROWS {
                        acc[q] = S::fma(wv, S::load(&u[q][c..]), acc[q]);
                    }
                }
                if full < d {
                    let t = d - full;
                    let wv = S::load_part(&wr[full..], t);
                    for q in 0..ROWS {
                        acc[q] = S::fma(wv, S::load_part(&u[q][full..], t), acc[q]);
                    }
                }
                for (q, a) in acc.iter().enumerate().take(nb) {
                    // SAFETY: rows r0..r1 belong to this task.
                    let dst = unsafe { self.out.slice((b0 + q) * k + j, 1) };
                    dst[0] = S::hsum(*a);
                }
            }
        }
    }
}

/// `xdbl (rows, K) = u @ W^T`, `u` the first half of each row of `uz (rows, 2D)`.
pub fn forward<T: Dispatch>(x: XDims, uz: &[T], w: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; x.rows * x.k];
    if x.rows * x.k > 0 {
        run_kernel(Fwd {
            x,
            uz,
            w,
            tasks: tasks_for(x.rows),
            out: SharedMut::new(&mut out),
        });
    }
    out
}

struct Bwd<'a, T> {
    x: XDims,
    uz: &'a [T],
    w: &'a [T],
    dx: &'a [T],
    tasks: usize,
    duz: SharedMut<T>,
    /// `(tasks, K, Dp)`.
    dw: SharedMut<T>,
}

impl<T: Float> SimdKernel<T> for Bwd<'_, T> {
    fn schedule(&self) -> Schedule {
        schedule(self.x, self.tasks)
    }

    #[inline(always)]
    fn run_on<S: Simd<E = T>>(&self, task: usize) {
        let XDims { rows, d, k } = self.x;
        let dp = d.div_ceil(LANES) * LANES;
        let (r0, r1) = span(rows, self.tasks, task);
        // SAFETY: this task's partial.
        let dw = unsafe { self.dw.slice(task * k * dp, k * dp) };
        for b0 in (r0..r1).step_by(ROWS) {
            let nb = ROWS.min(r1 - b0);
            // Rows past the block repeat its last row; their results are dropped.
            let g: [&[T]; ROWS] = std::array::from_fn(|q| {
                let r = b0 + q.min(nb - 1);
                &self.dx[r * k..(r + 1) * k]
            });
            for c in (0..d).step_by(LANES) {
                let wl = LANES.min(d - c);
                // du[c..] += sum_j dx[j] W[j, c..] for each row.
                let mut acc = [S::zero(); ROWS];
                for j in 0..k {
                    let wv = S::load_part(&self.w[j * d + c..], wl);
                    for q in 0..ROWS {
                        acc[q] = S::fma(S::splat(g[q][j]), wv, acc[q]);
                    }
                }
                for (q, a) in acc.iter().enumerate().take(nb) {
                    let r = b0 + q;
                    // SAFETY: rows r0..r1 of duz belong to this task.
                    let du = unsafe { self.duz.slice(r * 2 * d + c, wl) };
                    S::store_part(S::add(S::load_part(du, wl), *a), du, wl);
                }
                // dW[j, c..] += sum_rows dx[row, j] u[row, c..].
                let u: [S::V; ROWS] = std::array::from_fn(|q| {
                    let r = b0 + q.min(nb - 1);
                    S::load_part(&self.uz[r * 2 * d + c..], wl)
                });
                for j in 0..k {
                    let dst = &mut dw[j * dp + c..];
                    let mut a = S::load(dst);
                    for q in 0..nb {
                        a = S::fma(S::splat(g[q][j]), u[q], a);
                    }
                    S::store(a, dst);
                }
            }
        }
    }
}

/// Adds `dxdbl @ W` into the `u` half of `duz (rows, 2D)` and returns `dW (K, D)`.
pub fn backward<T: Dispatch>(x: XDims, uz: &[T], w: &[T], dxdbl: &[T], duz: &mut [T]) -> Vec<T> {
    let XDims { rows, d, k } = x;
    let dp = d.div_ceil(LANES) * LANES;
    let tasks = tasks_for(rows);
    let mut part = vec![T::ZERO; tasks * k * dp];
    if rows * d * k > 0 {
        run_kernel(Bwd {
            x,
            uz,
            w,
            dx: dxdbl,
            tasks,
            duz: SharedMut::new(duz),
            dw: SharedMut::new(&mut part),
        });
    }
    let mut dw = vec![T::ZERO; k * d];
    for p in part.chunks((k * dp).max(1)) {
        for j in 0..k {
            for (o, v) in dw[j * d..(j + 1) * d].iter_mut().zip(&p[j * dp..]) {
                *o += *v;
            }
        }
    }
    dw
}
