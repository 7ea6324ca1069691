//! The fused selective scan as a candle op with a backward pass (CPU).
//!
//! The op takes `uz (B, L, 2D)` = `[u | z]`, `x_proj.weight (R + 2N, D)` and
//! the parameter pack `(D, N + R + 3)` (see [`crate::cpu::recurrence`]). In one
//! op it computes `xdbl = x_proj(u)` = `[dt_low | B | C]`, `dt_proj` +
//! softplus, the discretization, the recurrence, the `C` read-out, the `D`
//! skip and the `silu(z)` gate, and returns `y (B, L, D)`. Its backward
//! returns the gradients of all three inputs (the `u` half of `d uz`
//! includes the `x_proj` path); the event timesteps (a data input) get none.
//!
//! Keeping `x_proj` inside saves the backward a `(B, L, D)` matmul output, a
//! zero-padded copy of it and an addition of two `(B, L, 2D)` tensors.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};

use crate::cpu::recurrence::{self, Dims, Rule, ScanInputs, LANES};
use crate::cpu::xproj::{self, XDims};
use lrnnx_kernels::cpu::cpu_slice;
use lrnnx_kernels::cpu::float::Float;
use lrnnx_kernels::cpu::simd::Dispatch;

fn dims_of(uz: &Layout, xw: &Layout, pack: &Layout, n: usize) -> candle_core::Result<Dims> {
    let (b, l, d2) = uz.shape().dims3()?;
    let (k, dx) = xw.shape().dims2()?;
    let (d, p) = pack.shape().dims2()?;
    let r = k.saturating_sub(2 * n);
    if d2 != 2 * d || dx != d || k < 2 * n || p != n + r + 3 {
        candle_core::bail!(
            "selective scan: expected uz (B, L, 2D), x_proj.weight (R + 2N, D), pack (D, N + R + 3) with N = {n}; found uz {:?}, x_proj {:?}, pack {:?}",
            uz.shape(),
            xw.shape(),
            pack.shape()
        );
    }
    Ok(Dims { b, l, d, n, r })
}

fn xdims(dims: &Dims) -> XDims {
    XDims {
        rows: dims.b * dims.l,
        d: dims.d,
        k: dims.k(),
    }
}

/// What the forward keeps for the backward: the states every chunk and `xdbl`.
#[derive(Debug)]
struct Saved {
    ck: CpuStorage,
    xdbl: CpuStorage,
}

/// The selective-scan op.
#[derive(Debug)]
pub struct SelectiveScan {
    rule: Rule,
    n: usize,
    its: Option<Tensor>,
    save: bool,
    saved: Mutex<Option<Saved>>,
}

type Guard<'a> = Option<(candle_core::StorageRef<'a>, &'a Layout)>;

fn its_slice<'a, T: Float>(guard: &'a Guard<'_>, dims: &Dims) -> candle_core::Result<&'a [T]> {
    match guard {
        None => Ok(&[]),
        Some((s, l)) => {
            let v = cpu_slice::<T>(s, l, "Mamba integration_timesteps")?;
            if v.len() != dims.b * dims.l {
                candle_core::bail!(
                    "selective scan: integration_timesteps must be (B, L) = ({}, {}), found {:?}",
                    dims.b,
                    dims.l,
                    l.shape()
                );
            }
            Ok(v)
        }
    }
}

impl SelectiveScan {
    fn fwd_typed<T: Dispatch>(
        &self,
        dims: Dims,
        uz: &[T],
        xw: &[T],
        pack: &[T],
    ) -> candle_core::Result<CpuStorage> {
        let guard = self.its.as_ref().map(|t| t.storage_and_layout());
        let its = its_slice::<T>(&guard, &dims)?;
        let xdbl = xproj::forward(xdims(&dims), uz, xw);
        let x = ScanInputs {
            dims,
            uz,
            xdbl: &xdbl,
            its,
        };
        let out = recurrence::forward(self.rule, x, pack, None, self.save, false);
        if let Some(ck) = out.ck {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved {
                ck: T::to_cpu_storage_owned(ck),
                xdbl: T::to_cpu_storage_owned(xdbl),
            });
        }
        Ok(T::to_cpu_storage_owned(out.y))
    }

    fn bwd_typed<T: Dispatch>(
        &self,
        uz: &Tensor,
        xw: &Tensor,
        pack: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (su, lu) = uz.storage_and_layout();
        let (sx, lx) = xw.storage_and_layout();
        let (sp, lp) = pack.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let dims = dims_of(lu, lx, lp, self.n)?;
        let (uzs, xws, ps, gs) = (
            cpu_slice::<T>(&su, lu, "Mamba uz")?,
            cpu_slice::<T>(&sx, lx, "Mamba x_proj.weight")?,
            cpu_slice::<T>(&sp, lp, "Mamba pack")?,
            cpu_slice::<T>(&sg, lg, "Mamba grad")?,
        );
        let guard = self.its.as_ref().map(|t| t.storage_and_layout());
        let its = its_slice::<T>(&guard, &dims)?;
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let recomputed;
        let (ck, xdbl): (&[T], &[T]) = match saved.as_ref() {
            Some(s) => (
                T::cpu_storage_as_slice(&s.ck)?,
                T::cpu_storage_as_slice(&s.xdbl)?,
            ),
            None => {
                let xdbl = xproj::forward(xdims(&dims), uzs, xws);
                let x = ScanInputs {
                    dims,
                    uz: uzs,
                    xdbl: &xdbl,
                    its,
                };
                let ck = recurrence::forward(self.rule, x, ps, None, true, false)
                    .ck
                    .unwrap_or_default();
                recomputed = (ck, xdbl);
                (&recomputed.0, &recomputed.1)
            }
        };
        let x = ScanInputs {
            dims,
            uz: uzs,
            xdbl,
            its,
        };
        let mut out = recurrence::backward(self.rule, x, ps, ck, gs);
        let dxw = xproj::backward(xdims(&dims), uzs, xws, &out.dxdbl, &mut out.duz);
        let dev = uz.device();
        Ok((
            Tensor::from_vec(out.duz, lu.shape(), dev)?,
            Tensor::from_vec(dxw, lx.shape(), dev)?,
            Tensor::from_vec(out.dpack, lp.shape(), dev)?,
        ))
    }
}

impl CustomOp3 for SelectiveScan {
    fn name(&self) -> &'static str {
        "mamba-selective-scan"
    }

    fn cpu_fwd(
        &self,
        uz: &CpuStorage,
        luz: &Layout,
        xw: &CpuStorage,
        lx: &Layout,
        pack: &CpuStorage,
        lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = dims_of(luz, lx, lp, self.n)?;
        let off = |l: &Layout| {
            l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg("selective scan: inputs must be contiguous".into())
            })
        };
        let ((a, b), (c, d), (e, f)) = (off(luz)?, off(lx)?, off(lp)?);
        let out = match (uz, xw, pack) {
            (CpuStorage::F32(u), CpuStorage::F32(x), CpuStorage::F32(p)) => {
                self.fwd_typed::<f32>(dims, &u[a..b], &x[c..d], &p[e..f])?
            }
            (CpuStorage::F64(u), CpuStorage::F64(x), CpuStorage::F64(p)) => {
                self.fwd_typed::<f64>(dims, &u[a..b], &x[c..d], &p[e..f])?
            }
            _ => candle_core::bail!(
                "selective scan: expected f32 or f64 inputs of one dtype, found {:?}, {:?}, {:?}",
                uz.dtype(),
                xw.dtype(),
                pack.dtype()
            ),
        };
        Ok((out, Shape::from((dims.b, dims.l, dims.d))))
    }

    fn bwd(
        &self,
        uz: &Tensor,
        xw: &Tensor,
        pack: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (a, b, c) = match uz.dtype() {
            candle_core::DType::F32 => self.bwd_typed::<f32>(uz, xw, pack, &grad)?,
            candle_core::DType::F64 => self.bwd_typed::<f64>(uz, xw, pack, &grad)?,
            dt => candle_core::bail!("selective scan backward: unsupported dtype {dt:?}"),
        };
        Ok((Some(a), Some(b), Some(c)))
    }
}

fn prepared(
    uz: &Tensor,
    xw: &Tensor,
    pack: &Tensor,
    its: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let dtype = uz.dtype();
    let its = match its {
        Some(t) => Some(t.to_dtype(dtype)?.contiguous()?),
        None => None,
    };
    Ok((
        uz.contiguous()?,
        xw.to_dtype(dtype)?.contiguous()?,
        pack.to_dtype(dtype)?.contiguous()?,
        its,
    ))
}

/// `y (B, L, D)` of the fused scan, with gradients for `uz`, `x_proj.weight` and `pack`.
///
/// `its (B, L)` switches on event mode (`dtA = its * softplus(dtA_proj.bias)`).
pub fn selective_scan(
    uz: &Tensor,
    x_proj: &Tensor,
    pack: &Tensor,
    its: Option<&Tensor>,
    rule: Rule,
    n: usize,
) -> candle_core::Result<Tensor> {
    let (uz, xw, pack, its) = prepared(uz, x_proj, pack, its)?;
    let save = uz.track_op() || xw.track_op() || pack.track_op();
    let op = SelectiveScan {
        rule,
        n,
        its,
        save,
        saved: Mutex::new(None),
    };
    uz.apply_op3(&xw, &pack, op)
}

/// The scan from a fresh (zero) state, without gradients: `y (B, L, D)` and
/// the last state in lane layout `(B, ceil(D / 16), N, 16)` (see
/// [`recurrence::forward`]). For prefill.
pub fn scan_with_state(
    uz: &Tensor,
    x_proj: &Tensor,
    pack: &Tensor,
    its: Option<&Tensor>,
    rule: Rule,
    n: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (uz, xw, pack, its) = prepared(uz, x_proj, pack, its)?;
    match uz.dtype() {
        candle_core::DType::F32 => state_typed::<f32>(&uz, &xw, &pack, its.as_ref(), rule, n),
        candle_core::DType::F64 => state_typed::<f64>(&uz, &xw, &pack, its.as_ref(), rule, n),
        dt => candle_core::bail!("Mamba scan: unsupported dtype {dt:?} (f32 or f64)"),
    }
}

fn state_typed<T: Dispatch + WithDType>(
    uz: &Tensor,
    xw: &Tensor,
    pack: &Tensor,
    its: Option<&Tensor>,
    rule: Rule,
    n: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (su, lu) = uz.storage_and_layout();
    let (sx, lx) = xw.storage_and_layout();
    let (sp, lp) = pack.storage_and_layout();
    let dims = dims_of(lu, lx, lp, n)?;
    let guard = its.map(|t| t.storage_and_layout());
    let its_s = its_slice::<T>(&guard, &dims)?;
    let uzs = cpu_slice::<T>(&su, lu, "Mamba uz")?;
    let xdbl = xproj::forward(
        xdims(&dims),
        uzs,
        cpu_slice::<T>(&sx, lx, "Mamba x_proj.weight")?,
    );
    let x = ScanInputs {
        dims,
        uz: uzs,
        xdbl: &xdbl,
        its: its_s,
    };
    let out = recurrence::forward(
        rule,
        x,
        cpu_slice::<T>(&sp, lp, "Mamba pack")?,
        None,
        false,
        true,
    );
    let dev = uz.device();
    let y = Tensor::from_vec(out.y, (dims.b, dims.l, dims.d), dev)?;
    let h = Tensor::from_vec(
        out.h_last.unwrap_or_default(),
        (dims.b, dims.groups(), dims.n, LANES),
        dev,
    )?;
    Ok((y, h))
}
