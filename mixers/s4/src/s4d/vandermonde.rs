//! The S4D kernel `K[c,h,l] = 2 Re(sum_n W[c,h,n] z[h,n]^l)` as a candle op
//! with backward (lrnnx's `log_vandermonde`), computed by running powers in f64,
//! in parallel over features; `O(channels * H * N/2 * L)` time, no `(H, N/2, L)` tensor.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The op: inputs `w (C, H, N/2, 2)` and `z (H, N/2, 2)` (real, imaginary
/// parts on the last axis), output `(C, H, len)`.
#[derive(Debug, Clone, Copy)]
pub struct Vandermonde {
    /// Kernel length.
    pub len: usize,
}

fn f64s(s: &CpuStorage, l: &Layout, what: &str) -> Result<Vec<f64>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("S4D kernel: {what} must be contiguous");
    };
    Ok(match s {
        CpuStorage::F32(v) => v[a..b].iter().map(|&x| x as f64).collect(),
        CpuStorage::F64(v) => v[a..b].to_vec(),
        o => candle_core::bail!(
            "S4D kernel: {what} must be f32 or f64, found {:?}",
            o.dtype()
        ),
    })
}

fn dims(w: &Shape, z: &Shape) -> Result<(usize, usize, usize)> {
    match (w.dims(), z.dims()) {
        (&[c, h, n, 2], &[zh, zn, 2]) if zh == h && zn == n => Ok((c, h, n)),
        _ => candle_core::bail!(
            "S4D kernel: expected w (C, H, N/2, 2) and z (H, N/2, 2), found {w:?} and {z:?}"
        ),
    }
}

/// `(C, H, len)` kernel from `w (C*H*N2*2)` and `z (H*N2*2)`.
fn forward(w: &[f64], z: &[f64], c: usize, h: usize, n2: usize, len: usize) -> Vec<f64> {
    let rows: Vec<Vec<f64>> = (0..h)
        .into_par_iter()
        .map(|hi| {
            let mut k = vec![0.0; c * len];
            for n in 0..n2 {
                let (zr, zi) = (z[(hi * n2 + n) * 2], z[(hi * n2 + n) * 2 + 1]);
                for ci in 0..c {
                    let at = ((ci * h + hi) * n2 + n) * 2;
                    // v = w z^l, updated in place.
                    let (mut vr, mut vi) = (w[at], w[at + 1]);
                    let row = &mut k[ci * len..(ci + 1) * len];
                    for slot in row.iter_mut() {
                        *slot += 2.0 * vr;
                        (vr, vi) = (vr * zr - vi * zi, vr * zi + vi * zr);
                    }
                }
            }
            k
        })
        .collect();
    let mut out = vec![0.0; c * h * len];
    for (hi, k) in rows.into_iter().enumerate() {
        for ci in 0..c {
            out[(ci * h + hi) * len..(ci * h + hi + 1) * len]
                .copy_from_slice(&k[ci * len..(ci + 1) * len]);
        }
    }
    out
}

/// Gradients `(dw (C*H*N2*2), dz (H*N2*2))` from `g (C, H, len)`:
/// `dw = 2 sum_l g_l conj(z^l)`, `dz = 2 conj(w) sum_l l g_l conj(z)^(l-1)`.
fn backward(
    w: &[f64],
    z: &[f64],
    g: &[f64],
    c: usize,
    h: usize,
    n2: usize,
    len: usize,
) -> (Vec<f64>, Vec<f64>) {
    type PerFeature = (Vec<f64>, Vec<f64>);
    let per: Vec<PerFeature> = (0..h)
        .into_par_iter()
        .map(|hi| {
            let mut gw = vec![0.0; c * n2 * 2];
            let mut gz = vec![0.0; n2 * 2];
            for n in 0..n2 {
                let (zr, zi) = (z[(hi * n2 + n) * 2], z[(hi * n2 + n) * 2 + 1]);
                for ci in 0..c {
                    let gl = &g[(ci * h + hi) * len..(ci * h + hi + 1) * len];
                    // a = sum_l g_l z^l (then conjugated), b = sum_{l>=1} l g_l z^(l-1).
                    let (mut pr, mut pi) = (1.0, 0.0); // z^l
                    let (mut qr, mut qi) = (0.0, 0.0); // z^(l-1)
                    let (mut ar, mut ai, mut br, mut bi) = (0.0, 0.0, 0.0, 0.0);
                    for (l, &gv) in gl.iter().enumerate() {
                        ar += gv * pr;
                        ai += gv * pi;
                        if l > 0 {
                            br += l as f64 * gv * qr;
                            bi += l as f64 * gv * qi;
                        }
                        (qr, qi) = (pr, pi);
                        (pr, pi) = (pr * zr - pi * zi, pr * zi + pi * zr);
                    }
                    gw[(ci * n2 + n) * 2] = 2.0 * ar;
                    gw[(ci * n2 + n) * 2 + 1] = -2.0 * ai;
                    // dz = 2 conj(w b).
                    let at = ((ci * h + hi) * n2 + n) * 2;
                    let (wr, wi) = (w[at], w[at + 1]);
                    gz[n * 2] += 2.0 * (wr * br - wi * bi);
                    gz[n * 2 + 1] -= 2.0 * (wr * bi + wi * br);
                }
            }
            (gw, gz)
        })
        .collect();
    let mut gw = vec![0.0; c * h * n2 * 2];
    let mut gz = Vec::with_capacity(h * n2 * 2);
    for (hi, (w_h, z_h)) in per.into_iter().enumerate() {
        for ci in 0..c {
            gw[(ci * h + hi) * n2 * 2..(ci * h + hi + 1) * n2 * 2]
                .copy_from_slice(&w_h[ci * n2 * 2..(ci + 1) * n2 * 2]);
        }
        gz.extend_from_slice(&z_h);
    }
    (gw, gz)
}

impl CustomOp2 for Vandermonde {
    fn name(&self) -> &'static str {
        "s4d-vandermonde"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        zs: &CpuStorage,
        zl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, h, n2) = dims(wl.shape(), zl.shape())?;
        let k = forward(&f64s(ws, wl, "w")?, &f64s(zs, zl, "z")?, c, h, n2, self.len);
        let out = match ws.dtype() {
            DType::F32 => CpuStorage::F32(k.into_iter().map(|v| v as f32).collect()),
            _ => CpuStorage::F64(k),
        };
        Ok((out, Shape::from((c, h, self.len))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        z: &Tensor,
        _k: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (c, h, n2) = dims(w.shape(), z.shape())?;
        let flat = |t: &Tensor| -> Result<Vec<f64>> {
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
        };
        let (gw, gz) = backward(&flat(w)?, &flat(z)?, &flat(g)?, c, h, n2, self.len);
        let gw = Tensor::from_vec(gw, w.shape(), w.device())?.to_dtype(w.dtype())?;
        let gz = Tensor::from_vec(gz, z.shape(), z.device())?.to_dtype(z.dtype())?;
        Ok((Some(gw), Some(gz)))
    }
}

/// `K (C, H, len) = 2 Re(sum_n w z^len)` for `w (C, H, N/2, 2)`, `z (H, N/2, 2)`.
pub fn vandermonde(w: &Tensor, z: &Tensor, len: usize) -> Result<Tensor> {
    let z = z.to_dtype(w.dtype())?.contiguous()?;
    w.contiguous()?.apply_op2(&z, Vandermonde { len })
}
