//! The RG-LRU core as one op: gates, `a_bar`, input scaling and the
//! time-varying recurrence.
//!
//! For every batch `b`, position `t` and channel `d`:
//! ```text
//! r = sigmoid(z[b,t,d] + br[d])          i = sigmoid(z[b,t,D+d] + bi[d])
//! a_bar = exp(c * r * log(sigmoid(a_log[d])))            (= sigmoid(a_log)^(c r))
//! h[b,t,d] = a_bar * h[b,t-1,d] + sqrt(1 - a_bar^2) * i * xc[b,t,d]
//! ```
//! `z (B, L, 2D)` holds the gate pre-activations without bias (recurrent gate
//! first, input gate second), `xc (B, L, D)` the convolved input and
//! `p (3D) = [a_log | br | bi]` the per-channel parameters.
//!
//! The forward is an elementwise pass over contiguous rows (vectorized, with
//! AVX2 when the CPU has it) that writes `a_bar` and the scaled input, then
//! the real time-varying scan of `lrnnx_kernels::scan_real_tv` (in place). The backward
//! recomputes `a_bar`, runs the scan's adjoint (`scan_bwd`) and finishes with
//! one more elementwise pass; nothing but `h` is kept between the two.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use lrnnx_kernels::portable::use_fused_cpu;
use lrnnx_kernels::scan_real_tv::{scan_bwd, scan_in_place, TvDims};

use lrnnx_kernels::cpu::{
    contiguous, cpu_slice, for_rows, log_sigmoid, sigmoid, tensor, with_simd,
};
use lrnnx_kernels::cpu::{Float, SharedMut, ROWS_PER_TASK};

/// The fused gate + scan op; see the module docs.
#[derive(Debug, Clone)]
pub struct GateScan {
    /// The constant `c`.
    pub c: f64,
    /// Initial state `(B, D)` (zeros when `None`); no gradient flows to it.
    pub h0: Option<Tensor>,
    /// `B` for 2-D inputs `z (B*L, 2D)`, `xc (B*L, D)`.
    pub batch: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) l: usize,
    pub(crate) d: usize,
}

impl Dims {
    fn scan(&self) -> TvDims {
        TvDims {
            b: self.b,
            l: self.l,
            c: self.d,
        }
    }
}

pub(super) fn dims_of(z: &Shape, xc: &Shape, p: &Shape, batch: usize) -> Result<Dims> {
    let (b, l, d) = lrnnx_kernels::cpu::batch_dims(xc, batch, "RG-LRU gate scan input")?;
    let mut zdims = xc.dims().to_vec();
    if let Some(last) = zdims.last_mut() {
        *last = 2 * d;
    }
    if z.dims() != zdims.as_slice() || p.dims() != [3 * d] {
        candle_core::bail!(
            "RG-LRU gate scan: expected z (B, L, 2D), xc (B, L, D), p (3D); found z {:?}, xc {:?}, p {:?}",
            z.dims(),
            xc.dims(),
            p.dims()
        );
    }
    Ok(Dims { b, l, d })
}

/// Per-channel constants: `c log(sigmoid(a_log))`, `br`, `bi`, each `(D)`.
struct Consts<T> {
    cla: Vec<T>,
    br: Vec<T>,
    bi: Vec<T>,
}

fn consts<T: Float>(p: &[T], d: usize, c: f64) -> Consts<T> {
    Consts {
        cla: p[..d].iter().map(|&a| T::c(c) * log_sigmoid(a)).collect(),
        br: p[d..2 * d].to_vec(),
        bi: p[2 * d..3 * d].to_vec(),
    }
}

/// Gates and `a_bar` of one element: `(r, i, a_bar, sqrt(1 - a_bar^2))`.
#[inline(always)]
fn gates<T: Float>(zr: T, zi: T, cla: T, br: T, bi: T) -> (T, T, T, T) {
    let r = sigmoid(zr + br);
    let i = sigmoid(zi + bi);
    let ab = (cla * r).exp_();
    let m = (T::c(1.0) - ab * ab).relu().sqrt();
    (r, i, ab, m)
}

/// The gate pre-activations of rows `0..`: row `k`'s recurrent gate is
/// `r[k*stride..k*stride + D]` and its input gate `i[k*stride..k*stride + D]`
/// (`r = z`, `i = z[D..]`, `stride = 2D` for one `(rows, 2D)` buffer; two
/// `(rows, D)` buffers and `stride = D` otherwise).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pre<'a, T> {
    pub(crate) r: &'a [T],
    pub(crate) i: &'a [T],
    pub(crate) stride: usize,
}

impl<'a, T> Pre<'a, T> {
    /// Gates of one `(rows, 2D)` buffer.
    pub(crate) fn interleaved(z: &'a [T], d: usize) -> Self {
        Self {
            r: z,
            i: &z[d.min(z.len())..],
            stride: 2 * d,
        }
    }

    /// Row `k`'s two gates, `d` values each.
    #[inline(always)]
    fn row(&self, k: usize, d: usize) -> (&'a [T], &'a [T]) {
        let o = k * self.stride;
        (&self.r[o..o + d], &self.i[o..o + d])
    }

    /// The rows from `r0` on.
    fn skip_rows(&self, r0: usize) -> Self {
        let o = (r0 * self.stride).min(self.i.len());
        Self {
            r: &self.r[(r0 * self.stride).min(self.r.len())..],
            i: &self.i[o..],
            stride: self.stride,
        }
    }
}

/// Decays `a = a_bar` and inputs `u = sqrt(1 - a_bar^2) i xc` of a run of rows.
#[inline(always)]
fn coeffs_impl<T: Float>(pre: Pre<'_, T>, xc: &[T], k: &Consts<T>, a: &mut [T], u: &mut [T]) {
    let d = k.cla.len();
    let (cla, br, bi) = (&k.cla[..d], &k.br[..d], &k.bi[..d]);
    let outs = a.chunks_exact_mut(d).zip(u.chunks_exact_mut(d));
    for (row, ((a, u), x)) in outs.zip(xc.chunks_exact(d)).enumerate() {
        let (zr, zi) = pre.row(row, d);
        let (x, a, u) = (&x[..d], &mut a[..d], &mut u[..d]);
        for j in 0..d {
            let (_, i, ab, m) = gates(zr[j], zi[j], cla[j], br[j], bi[j]);
            a[j] = ab;
            u[j] = m * i * x[j];
        }
    }
}

with_simd! {
    fn coeffs<T: Float>(pre: Pre<'_, T>, xc: &[T], k: &Consts<T>, a: &mut [T], u: &mut [T]) = coeffs_impl;
}

/// `a_bar` alone, for the backward scan.
#[inline(always)]
fn decay_impl<T: Float>(pre: Pre<'_, T>, k: &Consts<T>, a: &mut [T]) {
    let d = k.cla.len();
    let (cla, br) = (&k.cla[..d], &k.br[..d]);
    for (row, a) in a.chunks_exact_mut(d).enumerate() {
        let (zr, _) = pre.row(row, d);
        let a = &mut a[..d];
        for j in 0..d {
            a[j] = (cla[j] * sigmoid(zr[j] + br[j])).exp_();
        }
    }
}

with_simd! {
    fn decay<T: Float>(pre: Pre<'_, T>, k: &Consts<T>, a: &mut [T]) = decay_impl;
}

/// The gradients of one row `(b, t)`; every output is its own argument so
/// that the compiler knows they do not overlap and vectorizes the loop.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grads_row<T: Float>(
    (zr, zi, x): (&[T], &[T], &[T]),
    (s, da): (&[T], &[T]),
    k: &Consts<T>,
    dzr: &mut [T],
    dzi: &mut [T],
    dx: &mut [T],
    ga: &mut [T],
    gbr: &mut [T],
    gbi: &mut [T],
) {
    let d = k.cla.len();
    let (cla, br, bi) = (&k.cla[..d], &k.br[..d], &k.bi[..d]);
    let (zr, zi, x, s, da) = (&zr[..d], &zi[..d], &x[..d], &s[..d], &da[..d]);
    let (dzr, dzi, dx) = (&mut dzr[..d], &mut dzi[..d], &mut dx[..d]);
    let (ga, gbr, gbi) = (&mut ga[..d], &mut gbr[..d], &mut gbi[..d]);
    for j in 0..d {
        let (r, i, ab, m) = gates(zr[j], zi[j], cla[j], br[j], bi[j]);
        let v = i * x[j];
        // d/d a_bar of sqrt(1 - a_bar^2) v is -a_bar v / m, unbounded at
        // a_bar = 1 (m = 0): left out there.
        // (Written as selects of computed values, so the loop stays branch-free.)
        let live = m > T::default();
        let q = v * ab / if live { m } else { T::c(1.0) };
        let dm = if live { q } else { T::default() };
        let dlog_ab = (da[j] - s[j] * dm) * ab;
        let dv = s[j] * m;
        let dzi_j = dv * x[j] * i * (T::c(1.0) - i);
        let dzr_j = dlog_ab * cla[j] * r * (T::c(1.0) - r);
        dx[j] = dv * i;
        dzi[j] = dzi_j;
        dzr[j] = dzr_j;
        ga[j] += dlog_ab * r;
        gbr[j] += dzr_j;
        gbi[j] += dzi_j;
    }
}

/// The gradients of a run of rows from the scan's `s = dL/du` and
/// `da = dL/da_bar` (through the recurrence): writes `dzr`, `dzi` (rows of
/// `D`) and `dxc` and adds the per-channel sums
/// `[sum dlog(a_bar) r | sum dzr | sum dzi]` to `sums (3D)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grads_impl<T: Float>(
    pre: Pre<'_, T>,
    (xc, s, da): (&[T], &[T], &[T]),
    k: &Consts<T>,
    dzr: &mut [T],
    dzi: &mut [T],
    dxc: &mut [T],
    sums: &mut [T],
) {
    let d = k.cla.len();
    let (ga, rest) = sums.split_at_mut(d);
    let (gbr, gbi) = rest.split_at_mut(d);
    let inputs = xc
        .chunks_exact(d)
        .zip(s.chunks_exact(d))
        .zip(da.chunks_exact(d));
    let outs = dzr
        .chunks_exact_mut(d)
        .zip(dzi.chunks_exact_mut(d))
        .zip(dxc.chunks_exact_mut(d));
    for (row, (((x, s), da), ((dzr, dzi), dx))) in inputs.zip(outs).enumerate() {
        let (zr, zi) = pre.row(row, d);
        grads_row((zr, zi, x), (s, da), k, dzr, dzi, dx, ga, gbr, gbi);
    }
}

with_simd! {
    #[allow(clippy::too_many_arguments)]
    fn grads<T: Float>(
        pre: Pre<'_, T>,
        rows: (&[T], &[T], &[T]),
        k: &Consts<T>,
        dzr: &mut [T],
        dzi: &mut [T],
        dxc: &mut [T],
        sums: &mut [T],
    ) = grads_impl;
}

/// `h (B*L, D)` from the gates `pre`, `xc` and `p`, from `h0 (B, D)` (zeros when `None`).
pub(crate) fn forward<T: Float>(
    dims: Dims,
    pre: Pre<'_, T>,
    xc: &[T],
    p: &[T],
    h0: Option<&[T]>,
    c: f64,
) -> Vec<T> {
    let Dims { b, l, d } = dims;
    let k = consts(p, d, c);
    let mut a = vec![T::default(); b * l * d];
    let mut u = vec![T::default(); b * l * d];
    let (pa, pu) = (SharedMut::new(&mut a), SharedMut::new(&mut u));
    for_rows(b * l, d, |r0, n| {
        // SAFETY: rows r0..r0+n of `a` and `u` belong to this task only.
        let (a, u) = unsafe { (pa.slice(r0 * d, n * d), pu.slice(r0 * d, n * d)) };
        coeffs(pre.skip_rows(r0), &xc[r0 * d..(r0 + n) * d], &k, a, u);
    });
    scan_in_place(dims.scan(), &mut u, &a, h0, false);
    u
}

/// Gradients `(dzr, dzi, dxc, dp)` from `gh = dL/dh`; `dzr` and `dzi` are `(B*L, D)` each.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn backward<T: Float>(
    dims: Dims,
    pre: Pre<'_, T>,
    xc: &[T],
    p: &[T],
    h: &[T],
    h0: Option<&[T]>,
    gh: &[T],
    c: f64,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let Dims { b, l, d } = dims;
    let k = consts(p, d, c);
    let rows = b * l;
    let mut a = vec![T::default(); rows * d];
    let pa = SharedMut::new(&mut a);
    for_rows(rows, d, |r0, n| {
        // SAFETY: rows r0..r0+n of `a` belong to this task only.
        let a = unsafe { pa.slice(r0 * d, n * d) };
        decay(pre.skip_rows(r0), &k, a);
    });
    let (s, da, _) = scan_bwd(dims.scan(), &a, h, h0, gh, false);
    drop(a);
    let mut dzr = vec![T::default(); rows * d];
    let mut dzi = vec![T::default(); rows * d];
    let mut dxc = vec![T::default(); rows * d];
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let mut sums = vec![T::default(); tasks * 3 * d];
    let (pr, pi, px, ps) = (
        SharedMut::new(&mut dzr),
        SharedMut::new(&mut dzi),
        SharedMut::new(&mut dxc),
        SharedMut::new(&mut sums),
    );
    for_rows(rows, d, |r0, n| {
        let task = r0 / ROWS_PER_TASK;
        // SAFETY: rows r0..r0+n and this task's partial sums belong to it only.
        let (dzr, dzi, dx, sums) = unsafe {
            (
                pr.slice(r0 * d, n * d),
                pi.slice(r0 * d, n * d),
                px.slice(r0 * d, n * d),
                ps.slice(task * 3 * d, 3 * d),
            )
        };
        let rd = r0 * d..(r0 + n) * d;
        let inputs = (&xc[rd.clone()], &s[rd.clone()], &da[rd]);
        grads(pre.skip_rows(r0), inputs, &k, dzr, dzi, dx, sums);
    });
    let mut dp = vec![T::default(); 3 * d];
    for part in sums.chunks(3 * d) {
        for (acc, &v) in dp.iter_mut().zip(part) {
            *acc += v;
        }
    }
    // d/d a_log of c r log(sigmoid(a_log)) = c r (1 - sigmoid(a_log)).
    for j in 0..d {
        dp[j] = dp[j] * T::c(c) * sigmoid(-p[j]);
    }
    (dzr, dzi, dxc, dp)
}

impl GateScan {
    fn h0_check(&self, dims: Dims, dtype: DType) -> Result<()> {
        if let Some(h0) = &self.h0 {
            if h0.dims() != [dims.b, dims.d] || h0.dtype() != dtype {
                candle_core::bail!(
                    "RG-LRU gate scan: expected h0 ({}, {}) {dtype:?}, found {:?} {:?}",
                    dims.b,
                    dims.d,
                    h0.dims(),
                    h0.dtype()
                );
            }
        }
        Ok(())
    }

    fn fwd_typed<T: Float>(&self, dims: Dims, z: &[T], xc: &[T], p: &[T]) -> Result<Vec<T>> {
        match &self.h0 {
            Some(h0) => {
                let h0 = h0.contiguous()?;
                let (s, l) = h0.storage_and_layout();
                let h0 = cpu_slice::<T>(&s, l, "h0")?;
                Ok(forward(
                    dims,
                    Pre::interleaved(z, dims.d),
                    xc,
                    p,
                    Some(h0),
                    self.c,
                ))
            }
            None => Ok(forward(
                dims,
                Pre::interleaved(z, dims.d),
                xc,
                p,
                None,
                self.c,
            )),
        }
    }

    fn bwd_typed<T: Float>(
        &self,
        dims: Dims,
        z: &Tensor,
        xc: &Tensor,
        p: &Tensor,
        h: &Tensor,
        gh: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h0 = match &self.h0 {
            Some(h0) => Some(h0.contiguous()?),
            None => None,
        };
        let (sz, lz) = z.storage_and_layout();
        let (sx, lx) = xc.storage_and_layout();
        let (sp, lp) = p.storage_and_layout();
        let (sh, lh) = h.storage_and_layout();
        let (sg, lg) = gh.storage_and_layout();
        let guard = h0.as_ref().map(|t| t.storage_and_layout());
        let h0s = match &guard {
            Some((s, l)) => Some(cpu_slice::<T>(s, l, "h0")?),
            None => None,
        };
        let (dzr, dzi, dxc, dp) = backward(
            dims,
            Pre::interleaved(cpu_slice::<T>(&sz, lz, "z")?, dims.d),
            cpu_slice::<T>(&sx, lx, "xc")?,
            cpu_slice::<T>(&sp, lp, "p")?,
            cpu_slice::<T>(&sh, lh, "h")?,
            h0s,
            cpu_slice::<T>(&sg, lg, "the gradient")?,
            self.c,
        );
        // Back to the (rows, 2D) layout of z.
        let d = dims.d;
        let mut dz = Vec::with_capacity(2 * dzr.len());
        for (r, i) in dzr.chunks_exact(d).zip(dzi.chunks_exact(d)) {
            dz.extend_from_slice(r);
            dz.extend_from_slice(i);
        }
        Ok((
            tensor(dz, z.shape())?,
            tensor(dxc, xc.shape())?,
            tensor(dp, 3 * dims.d)?,
        ))
    }
}

impl CustomOp3 for GateScan {
    fn name(&self) -> &'static str {
        "rglru-gate-scan"
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        lz: &Layout,
        xc: &CpuStorage,
        lx: &Layout,
        p: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(lz.shape(), lx.shape(), lp.shape(), self.batch)?;
        self.h0_check(dims, z.dtype())?;
        let out = match (z, xc, p) {
            (CpuStorage::F32(z), CpuStorage::F32(x), CpuStorage::F32(p)) => {
                CpuStorage::F32(self.fwd_typed(
                    dims,
                    contiguous(z, lz, "z")?,
                    contiguous(x, lx, "xc")?,
                    contiguous(p, lp, "p")?,
                )?)
            }
            (CpuStorage::F64(z), CpuStorage::F64(x), CpuStorage::F64(p)) => {
                CpuStorage::F64(self.fwd_typed(
                    dims,
                    contiguous(z, lz, "z")?,
                    contiguous(x, lx, "xc")?,
                    contiguous(p, lp, "p")?,
                )?)
            }
            _ => candle_core::bail!(
                "RG-LRU gate scan: expected all f32 or all f64, found {:?}, {:?}, {:?}",
                z.dtype(),
                xc.dtype(),
                p.dtype()
            ),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        xc: &Tensor,
        p: &Tensor,
        h: &Tensor,
        gh: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = dims_of(z.shape(), xc.shape(), p.shape(), self.batch)?;
        let (z, xc, p, h, gh) = (
            z.contiguous()?,
            xc.contiguous()?,
            p.contiguous()?,
            h.contiguous()?,
            gh.contiguous()?,
        );
        let (dz, dxc, dp) = match z.dtype() {
            DType::F32 => self.bwd_typed::<f32>(dims, &z, &xc, &p, &h, &gh)?,
            DType::F64 => self.bwd_typed::<f64>(dims, &z, &xc, &p, &h, &gh)?,
            other => candle_core::bail!("RG-LRU gate scan: unsupported dtype {other:?}"),
        };
        Ok((Some(dz), Some(dxc), Some(dp)))
    }
}

/// Runs the RG-LRU core; see the module docs. `z` and `xc` are
/// `(B, L, .)`, or `(B*L, .)` with `B = batch`. The fused op takes CPU f32/f64
/// tensors of one dtype (and returns `h` in it); everything else runs
/// [`super::portable::gate_scan`], which returns `h` in the accumulation dtype.
pub fn gate_scan(
    z: &Tensor,
    xc: &Tensor,
    p: &Tensor,
    c: f64,
    h0: Option<&Tensor>,
    batch: usize,
) -> Result<Tensor> {
    let same = z.dtype() == xc.dtype() && p.dtype() == xc.dtype();
    if !(use_fused_cpu(xc) && same && z.device().is_cpu() && p.device().is_cpu()) {
        return super::portable::gate_scan(z, xc, p, c, h0, batch);
    }
    let h0 = match h0 {
        Some(h) => Some(h.to_dtype(xc.dtype())?.contiguous()?),
        None => None,
    };
    z.contiguous()?.apply_op3(
        &xc.contiguous()?,
        &p.contiguous()?,
        GateScan { c, h0, batch },
    )
}
