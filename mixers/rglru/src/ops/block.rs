//! The whole RG-LRU block over a sequence as one op with a hand-written
//! backward pass.
//!
//! Composed from separate ops, the block's autograd graph has a node per
//! projection, convolution, gate and product, and candle's backward pays a
//! zero-fill and an add over a `(B*L, D)` buffer for every one of their
//! inputs. As one node the backward runs straight through: the forward keeps
//! its intermediates (`gate`, `xi`, `xc`, `z`, `h`, `gate * h`) for it, and
//! the input gradient is skipped when the input is not part of a graph.
//!
//! Inputs: `x (B*L, H)`, the packed weights `[Wg | Win | Wr;Wi | Wout (| bg | bin | bout)]`
//! (flattened, in that order) and the packed per-channel parameters
//! `[conv_w (D*W) | conv_b (D) | a_log | br | bi]`.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::util::{cpu_slice, tensor, Float};
use super::{conv, gate_scan, gelu_mul};

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
    /// `out_proj`, `(H, D)`.
    pub out: Dense,
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
    fn detach(&self) -> Self {
        Self {
            gate: self.gate.detach(),
            input: self.input.detach(),
            gates_w: self.gates_w.detach(),
            out: self.out.detach(),
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
            self.out.w.clone(),
        ];
        v.extend([&self.gate.b, &self.input.b, &self.out.b].into_iter().flatten().cloned());
        v
    }
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone)]
struct Stash {
    gate: Tensor,
    xi: Tensor,
    xc: Tensor,
    z: Tensor,
    h: Tensor,
    yg: Tensor,
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
    let flat = ts.iter().map(|t| t.flatten_all()).collect::<Result<Vec<_>>>()?;
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
        let z = xc.matmul(&prm.gates_w.t()?)?;
        let gdims = gate_scan::Dims { b: self.b, l, d };
        let h = with_slice::<T, _>(&z, |z| {
            with_slice::<T, _>(&xc, |xc| {
                with_slice::<T, _>(&prm.p, |p| gate_scan::forward(gdims, z, xc, p, None, prm.c))
            })
        })???;
        let h = tensor(h, (t, d))?;
        let yg = with_slice::<T, _>(&gate, |g| {
            with_slice::<T, _>(&h, |h| gelu_mul::forward(g, h))
        })??;
        let yg = tensor(yg, (t, d))?;
        let y = prm.out.apply(&yg)?;
        let y = with_slice::<T, _>(&y, |y| y.to_vec())?;
        Ok((
            y,
            Stash {
                gate,
                xi,
                xc,
                z,
                h,
                yg,
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
        let gy = gy.contiguous()?;
        let d_out_w = gy.t()?.matmul(&st.yg)?;
        let d_out_b = prm.out.b.as_ref().map(|_| gy.sum(0)).transpose()?;
        let dyg = gy.matmul(&prm.out.w)?;
        let (dgate, dh) = with_slice::<T, _>(&st.gate, |g| {
            with_slice::<T, _>(&st.h, |h| {
                with_slice::<T, _>(&dyg, |dy| gelu_mul::backward(g, h, dy))
            })
        })???;
        let gdims = gate_scan::Dims { b: self.b, l, d };
        let (dz, mut dxc, dp) = with_slice::<T, _>(&st.z, |z| {
            with_slice::<T, _>(&st.xc, |xc| {
                with_slice::<T, _>(&prm.p, |p| {
                    with_slice::<T, _>(&st.h, |h| gate_scan::backward(gdims, z, xc, p, h, None, &dh, prm.c))
                })
            })
        })????;
        let dz = tensor(dz, (t, 2 * d))?;
        let d_gates_w = dz.t()?.matmul(&st.xc)?;
        with_slice::<T, _>(&dz.matmul(&prm.gates_w)?, |v| {
            for (a, &b) in dxc.iter_mut().zip(v) {
                *a += b;
            }
        })?;
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
        let mut dws = vec![d_gate_w, d_in_w, d_gates_w, d_out_w];
        if prm.gate.b.is_some() {
            dws.push(dgate.sum(0)?);
        }
        if prm.input.b.is_some() {
            dws.push(dxi.sum(0)?);
        }
        dws.extend(d_out_b);
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
        let shape = lx.shape().clone();
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

/// The block over `x (B*L, H)` (rows batch-major, `B = batch`), zero initial
/// states; returns `(B*L, H)`.
pub fn block(x: &Tensor, batch: usize, prm: &BlockParams) -> Result<Tensor> {
    let (t, h) = x.dims2()?;
    let (d, _) = prm.conv_w.dims2()?;
    if batch == 0 || t % batch != 0 || prm.gate.w.dims() != [d, h] || prm.out.w.dims() != [h, d] {
        candle_core::bail!(
            "RG-LRU block: expected x (B*L, H) with B = {batch} and weights for H = {h}, D = {d}; found x {:?}",
            x.dims()
        );
    }
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
