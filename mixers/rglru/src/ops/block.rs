//! The RG-LRU block over a sequence, up to `out_proj`, as one op with a
//! hand-written backward pass.
//!
//! Composed from separate ops, the block's autograd graph has a node per
//! projection, convolution, gate and product, and candle's backward pays a
//! zero-fill and an add over a `(B*L, D)` buffer for every one of their
//! inputs. As one node the backward runs straight through: the forward keeps
//! its intermediates (`gate`, `xi`, `xc`, the gate pre-activations, `h`)
//! for it, and
//! the input gradient is skipped when the input is not part of a graph.
//!
//! Inputs: `x (B*L, H)`, the packed weights `[Wg | Win | Wr;Wi (| bg | bin)]`
//! (flattened, in that order) and the packed per-channel parameters
//! `[conv_w (D*W) | conv_b (D) | a_log | br | bi]`. Output: `gelu(gate) * h`,
//! `(B*L, D)`, which `out_proj` (a plain matmul) then maps back to `H`.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{gate_scan, gelu_mul};
use lrnnx_kernels::cpu::{cpu_slice, tensor, Float};
use lrnnx_kernels::depthwise_conv as conv;
use lrnnx_kernels::portable::use_fused_cpu;

/// A dense layer's weight `(out, in)` and optional bias `(out)`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `(out, in)`.
    pub w: Tensor,
    /// `(out)`.
    pub b: Option<Tensor>,
}

impl Dense {
    fn detach(&self) -> Self {
        Self {
            w: self.w.detach(),
            b: self.b.as_ref().map(Tensor::detach),
        }
    }

    /// `x @ w^T + b` on detached tensors (no graph).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The block's parameters.
#[derive(Debug, Clone)]
pub struct BlockParams {
    /// `gate_proj`, `(D, H)`.
    pub gate: Dense,
    /// `in_proj`, `(D, H)`.
    pub input: Dense,
    /// Both gate projections' weights, `(2D, D)`, recurrent gate first (their biases are in `p`).
    pub gates_w: Tensor,
    /// Convolution taps `(D, W)`.
    pub conv_w: Tensor,
    /// Convolution bias `(D)` (zeros when the layer has none).
    pub conv_b: Tensor,
    /// `[a_log | br | bi]`, `(3D)`.
    pub p: Tensor,
    /// The constant `c`.
    pub c: f64,
}

impl BlockParams {
    /// Every tensor cast to `dtype` (a no-op for those already in it).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let dense = |l: &Dense| -> Result<Dense> {
            Ok(Dense {
                w: l.w.to_dtype(dtype)?,
                b: l.b.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
            })
        };
        Ok(Self {
            gate: dense(&self.gate)?,
            input: dense(&self.input)?,
            gates_w: self.gates_w.to_dtype(dtype)?,
            conv_w: self.conv_w.to_dtype(dtype)?,
            conv_b: self.conv_b.to_dtype(dtype)?,
            p: self.p.to_dtype(dtype)?,
            c: self.c,
        })
    }

    fn detach(&self) -> Self {
        Self {
            gate: self.gate.detach(),
            input: self.input.detach(),
            gates_w: self.gates_w.detach(),
            conv_w: self.conv_w.detach(),
            conv_b: self.conv_b.detach(),
            p: self.p.detach(),
            c: self.c,
        }
    }

    /// The weights in packing order.
    fn weights(&self) -> Vec<Tensor> {
        let mut v = vec![
            self.gate.w.clone(),
            self.input.w.clone(),
            self.gates_w.clone(),
        ];
        v.extend([&self.gate.b, &self.input.b].into_iter().flatten().cloned());
        v
    }
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone)]
struct Stash {
    gate: Tensor,
    xi: Tensor,
    xc: Tensor,
    zr: Tensor,
    zi: Tensor,
    h: Tensor,
}

/// The block op; see the module docs.
#[derive(Debug)]
pub struct Block {
    b: usize,
    x: Tensor,
    prm: BlockParams,
    stash: Mutex<Option<Stash>>,
}

fn cat_flat(ts: &[Tensor]) -> Result<Tensor> {
    let flat = ts
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// Runs `f` on the contiguous CPU slice of `t`.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    Ok(f(cpu_slice::<T>(&s, l, "RG-LRU block buffer")?))
}

impl Block {
    fn dims(&self) -> Result<(usize, usize, usize, usize, usize)> {
        let (t, h) = self.x.dims2()?;
        let (d, w) = self.prm.conv_w.dims2()?;
        Ok((t, t / self.b, h, d, w))
    }

    fn fwd_typed<T: Float>(&self) -> Result<(Vec<T>, Stash)> {
        let (t, l, _, d, w) = self.dims()?;
        let prm = &self.prm;
        let gate = prm.gate.apply(&self.x)?;
        let xi = prm.input.apply(&self.x)?;
        let cdims = conv::Dims { b: self.b, l, d, w };
        let xc = with_slice::<T, _>(&xi, |xi| {
            with_slice::<T, _>(&prm.conv_w, |cw| {
                with_slice::<T, _>(&prm.conv_b, |cb| conv::forward(cdims, xi, cw, cb))
            })
        })???;
        let xc = tensor(xc, (t, d))?;
        // The two gate projections as two (B*L, D) products: one (B*L, 2D)
        // buffer would exceed the allocator's reuse limit (32 MB) at the
        // benchmark size and be mapped afresh on every call.
        let zr = xc.matmul(&prm.gates_w.narrow(0, 0, d)?.t()?)?;
        let zi = xc.matmul(&prm.gates_w.narrow(0, d, d)?.t()?)?;
        let gdims = gate_scan::Dims { b: self.b, l, d };
        let h = with_slice::<T, _>(&zr, |zr| {
            with_slice::<T, _>(&zi, |zi| {
                let pre = gate_scan::Pre {
                    r: zr,
                    i: zi,
                    stride: d,
                };
                with_slice::<T, _>(&xc, |xc| {
                    with_slice::<T, _>(&prm.p, |p| {
                        gate_scan::forward(gdims, pre, xc, p, None, prm.c)
                    })
                })
            })
        })????;
        let h = tensor(h, (t, d))?;
        let y = with_slice::<T, _>(&gate, |g| {
            with_slice::<T, _>(&h, |h| gelu_mul::forward(g, h))
        })??;
        Ok((
            y,
            Stash {
                gate,
                xi,
                xc,
                zr,
                zi,
                h,
            },
        ))
    }

    fn bwd_typed<T: Float>(&self, x_needs_grad: bool, gy: &Tensor) -> Result<[Option<Tensor>; 3]> {
        let (t, l, _, d, w) = self.dims()?;
        let prm = &self.prm;
        let st = match self.stash.lock().map(|s| s.clone()) {
            Ok(Some(st)) => st,
            _ => self.fwd_typed::<T>()?.1,
        };
        let dyg = gy.contiguous()?;
        let (dgate, dh) = with_slice::<T, _>(&st.gate, |g| {
            with_slice::<T, _>(&st.h, |h| {
                with_slice::<T, _>(&dyg, |dy| gelu_mul::backward(g, h, dy))
            })
        })???;
        let gdims = gate_scan::Dims { b: self.b, l, d };
        let (dzr, dzi, mut dxc, dp) = with_slice::<T, _>(&st.zr, |zr| {
            with_slice::<T, _>(&st.zi, |zi| {
                let pre = gate_scan::Pre {
                    r: zr,
                    i: zi,
                    stride: d,
                };
                with_slice::<T, _>(&st.xc, |xc| {
                    with_slice::<T, _>(&prm.p, |p| {
                        with_slice::<T, _>(&st.h, |h| {
                            gate_scan::backward(gdims, pre, xc, p, h, None, &dh, prm.c)
                        })
                    })
                })
            })
        })?????;
        let (dzr, dzi) = (tensor(dzr, (t, d))?, tensor(dzi, (t, d))?);
        let d_gates_w = Tensor::cat(&[dzr.t()?.matmul(&st.xc)?, dzi.t()?.matmul(&st.xc)?], 0)?;
        for (dz, w) in [
            (&dzr, prm.gates_w.narrow(0, 0, d)?),
            (&dzi, prm.gates_w.narrow(0, d, d)?),
        ] {
            with_slice::<T, _>(&dz.matmul(&w)?, |v| {
                for (a, &b) in dxc.iter_mut().zip(v) {
                    *a += b;
                }
            })?;
        }
        let cdims = conv::Dims { b: self.b, l, d, w };
        let (dxi, dcw, dcb) = with_slice::<T, _>(&st.xi, |xi| {
            with_slice::<T, _>(&prm.conv_w, |cw| conv::backward(cdims, xi, cw, &dxc))
        })??;
        let (dgate, dxi) = (tensor(dgate, (t, d))?, tensor(dxi, (t, d))?);
        let d_gate_w = dgate.t()?.matmul(&self.x)?;
        let d_in_w = dxi.t()?.matmul(&self.x)?;
        let dx = if x_needs_grad {
            Some((dgate.matmul(&prm.gate.w)? + dxi.matmul(&prm.input.w)?)?)
        } else {
            None
        };
        let mut dws = vec![d_gate_w, d_in_w, d_gates_w];
        if prm.gate.b.is_some() {
            dws.push(dgate.sum(0)?);
        }
        if prm.input.b.is_some() {
            dws.push(dxi.sum(0)?);
        }
        let dpp = [tensor(dcw, d * w)?, tensor(dcb, d)?, tensor(dp, 3 * d)?];
        Ok([dx, Some(cat_flat(&dws)?), Some(Tensor::cat(&dpp, 0)?)])
    }
}

impl CustomOp3 for Block {
    fn name(&self) -> &'static str {
        "rglru-block"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        _w: &CpuStorage,
        _lw: &Layout,
        _p: &CpuStorage,
        _lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, _) = lx.shape().dims2()?;
        let shape = Shape::from((t, self.prm.conv_w.dim(0)?));
        let (out, stash) = match x {
            CpuStorage::F32(_) => {
                let (y, s) = self.fwd_typed::<f32>()?;
                (CpuStorage::F32(y), s)
            }
            CpuStorage::F64(_) => {
                let (y, s) = self.fwd_typed::<f64>()?;
                (CpuStorage::F64(y), s)
            }
            other => candle_core::bail!("RG-LRU block: unsupported dtype {:?}", other.dtype()),
        };
        if let Ok(mut slot) = self.stash.lock() {
            *slot = Some(stash);
        }
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _p: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let needs = x.track_op();
        let [dx, dw, dp] = match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(needs, gy)?,
            DType::F64 => self.bwd_typed::<f64>(needs, gy)?,
            other => candle_core::bail!("RG-LRU block: unsupported dtype {other:?}"),
        };
        Ok((dx, dw, dp))
    }
}

/// The block over `x (B*L, H)` (rows batch-major, `B = batch`) from zero
/// states, up to `out_proj`: returns `gelu(gate) * h`, `(B*L, D)`, in `x`'s
/// dtype, the parameters cast to it. One fused op for CPU f32/f64; elsewhere
/// [`super::portable::block`].
pub fn block(x: &Tensor, batch: usize, prm: &BlockParams) -> Result<Tensor> {
    let (t, h) = x.dims2()?;
    let (d, _) = prm.conv_w.dims2()?;
    if batch == 0 || t % batch != 0 || prm.gate.w.dims() != [d, h] {
        candle_core::bail!(
            "RG-LRU block: expected x (B*L, H) with B = {batch} and weights for H = {h}, D = {d}; found x {:?} and gate_proj weight {:?}",
            x.dims(),
            prm.gate.w.dims()
        );
    }
    if !use_fused_cpu(x) {
        return super::portable::block(x, batch, prm);
    }
    let prm = &prm.to_dtype(x.dtype())?;
    let x = x.contiguous()?;
    let wpack = cat_flat(&prm.weights())?;
    let ppack = cat_flat(&[prm.conv_w.clone(), prm.conv_b.clone(), prm.p.clone()])?;
    let op = Block {
        b: batch,
        x: x.detach(),
        prm: prm.detach(),
        stash: Mutex::new(None),
    };
    x.apply_op3(&wpack, &ppack, op)
}
