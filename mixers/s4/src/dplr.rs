//! S4's recurrence as a candle op: the bilinear discretization of a
//! diagonal-plus-low-rank (DPLR) system, stepped in linear time per mode,
//! with a hand-written adjoint so that gradients flow to every parameter.
//!
//! Per feature `h`, in the half basis (`N/2` complex modes `u`; the
//! conjugate-augmented state `[u, conj u]` of lrnnx is implied):
//!
//! ```text
//! A u = Λ u - P · 2 Re(P^H u)        (A_full = diag([Λ, Λ̄]) - p p^H, p = [P, P̄])
//! M = dt A;  Ā = (I - M/2)^{-1} (I + M/2);  B̄ = (I - M/2)^{-1} dt B
//! s_t = Ā s_{t-1} + B̄ x_t;           y_t = 2 Re(Σ_n C_n s_t,n)
//! ```
//!
//! One step, with `E = 1/(1 - dtΛ/2)`, `F = 1 + dtΛ/2`, `W = dt P`,
//! `G = conj(P) E`, `β = 1/(1 + Σ |P|² dt Re E)` (Woodbury for the rank-1 term):
//!
//! ```text
//! σ = Re(P^H s);  r = F s - W σ + dt B x;  ρ = β Re(Σ G r);  s' = E (r - W ρ)
//! ```
//!
//! The op's parameters are packed per feature and mode as
//! `(H, N/2, 7 + 2*channels)`: `Re Λ, Im Λ, Re P, Im P, Re B, Im B, dt`, then
//! `Re C_c, Im C_c` per channel. The backward recomputes the states from
//! checkpoints (every [`CHECKPOINT`] steps), so memory stays `O(B H N)`
//! beyond the inputs and outputs. Computations run in f64 whatever the dtype.

// The step loops walk several per-mode arrays in lockstep; indices read clearer there.
#![allow(clippy::needless_range_loop)]

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use num_complex::Complex64;
use rayon::prelude::*;

/// Number of packed values per mode before the `C` columns.
pub const FIXED: usize = 7;

/// Steps between stored states in the backward pass.
const CHECKPOINT: usize = 64;

/// `Re(conj(a) b)`, the real inner product of two complex numbers.
pub fn re_dot(a: Complex64, b: Complex64) -> f64 {
    a.re * b.re + a.im * b.im
}

/// The per-feature constants of one step.
#[derive(Debug, Clone)]
pub struct Consts {
    n2: usize,
    channels: usize,
    lam: Vec<Complex64>,
    p: Vec<Complex64>,
    b: Vec<Complex64>,
    dt: Vec<f64>,
    /// `(channels, N/2)`.
    c: Vec<Complex64>,
    e: Vec<Complex64>,
    f: Vec<Complex64>,
    w: Vec<Complex64>,
    bd: Vec<Complex64>,
    g: Vec<Complex64>,
    beta: f64,
}

impl Consts {
    /// From the packed rows of one feature, `(N/2, 7 + 2*channels)` row-major.
    pub fn new(rows: &[f64], n2: usize, channels: usize) -> Self {
        let k = FIXED + 2 * channels;
        let at = |n: usize, j: usize| rows[n * k + j];
        let lam: Vec<Complex64> = (0..n2)
            .map(|n| Complex64::new(at(n, 0), at(n, 1)))
            .collect();
        let p: Vec<Complex64> = (0..n2)
            .map(|n| Complex64::new(at(n, 2), at(n, 3)))
            .collect();
        let b: Vec<Complex64> = (0..n2)
            .map(|n| Complex64::new(at(n, 4), at(n, 5)))
            .collect();
        let dt: Vec<f64> = (0..n2).map(|n| at(n, 6)).collect();
        let c: Vec<Complex64> = (0..channels)
            .flat_map(|ci| (0..n2).map(move |n| (ci, n)))
            .map(|(ci, n)| Complex64::new(at(n, FIXED + 2 * ci), at(n, FIXED + 2 * ci + 1)))
            .collect();
        let half: Vec<Complex64> = (0..n2).map(|n| lam[n] * (dt[n] * 0.5)).collect();
        let e: Vec<Complex64> = half
            .iter()
            .map(|&z| (Complex64::new(1.0, 0.0) - z).inv())
            .collect();
        let f: Vec<Complex64> = half.iter().map(|&z| Complex64::new(1.0, 0.0) + z).collect();
        let w: Vec<Complex64> = (0..n2).map(|n| p[n] * dt[n]).collect();
        let bd: Vec<Complex64> = (0..n2).map(|n| b[n] * dt[n]).collect();
        let g: Vec<Complex64> = (0..n2).map(|n| p[n].conj() * e[n]).collect();
        let alpha: f64 = (0..n2).map(|n| p[n].norm_sqr() * dt[n] * e[n].re).sum();
        Self {
            n2,
            channels,
            lam,
            p,
            b,
            dt,
            c,
            e,
            f,
            w,
            bd,
            g,
            beta: 1.0 / (1.0 + alpha),
        }
    }

    /// One step from `s` (in place); writes `y_c` (without the factor 2) to `y`.
    /// `r` is scratch of length `N/2`.
    #[inline]
    fn step(&self, s: &mut [Complex64], x: f64, r: &mut [Complex64], y: &mut [f64]) {
        let mut sigma = 0.0;
        for n in 0..self.n2 {
            sigma += re_dot(self.p[n], s[n]);
        }
        let mut t = 0.0;
        for n in 0..self.n2 {
            let rn = self.f[n] * s[n] - self.w[n] * sigma + self.bd[n] * x;
            r[n] = rn;
            let gr = self.g[n] * rn;
            t += gr.re;
        }
        let rho = self.beta * t;
        y.iter_mut().for_each(|v| *v = 0.0);
        for n in 0..self.n2 {
            let sn = self.e[n] * (r[n] - self.w[n] * rho);
            s[n] = sn;
            for (ci, yc) in y.iter_mut().enumerate() {
                let cs = self.c[ci * self.n2 + n] * sn;
                *yc += cs.re;
            }
        }
    }
}

/// Shapes of one problem.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Length.
    pub l: usize,
    /// Features.
    pub h: usize,
    /// Complex modes per feature.
    pub n2: usize,
    /// Output channels.
    pub c: usize,
}

impl Dims {
    fn k(&self) -> usize {
        FIXED + 2 * self.c
    }
}

fn consts_all(params: &[f64], d: Dims) -> Vec<Consts> {
    let rows = d.n2 * d.k();
    (0..d.h)
        .map(|h| Consts::new(&params[h * rows..(h + 1) * rows], d.n2, d.c))
        .collect()
}

fn load_state(s0: &[f64], d: Dims, bi: usize, h: usize) -> Vec<Complex64> {
    let base = (bi * d.h + h) * d.n2 * 2;
    (0..d.n2)
        .map(|n| Complex64::new(s0[base + 2 * n], s0[base + 2 * n + 1]))
        .collect()
}

/// Runs the recurrence: `x (B, L, H)`, packed `params (H, N/2, K)`, start
/// `s0 (B, H, N/2, 2)`; returns `y (B, L, C, H)` and the last state `(B, H, N/2, 2)`.
pub fn run(x: &[f64], params: &[f64], s0: &[f64], d: Dims) -> (Vec<f64>, Vec<f64>) {
    let consts = consts_all(params, d);
    let tasks: Vec<(Vec<f64>, Vec<Complex64>)> = (0..d.b * d.h)
        .into_par_iter()
        .map(|task| {
            let (bi, h) = (task / d.h, task % d.h);
            let k = &consts[h];
            let mut s = load_state(s0, d, bi, h);
            let mut r = vec![Complex64::default(); d.n2];
            let mut yc = vec![0.0; d.c];
            let mut out = vec![0.0; d.l * d.c];
            for t in 0..d.l {
                k.step(&mut s, x[(bi * d.l + t) * d.h + h], &mut r, &mut yc);
                for ci in 0..d.c {
                    out[t * d.c + ci] = 2.0 * yc[ci];
                }
            }
            (out, s)
        })
        .collect();
    let mut y = vec![0.0; d.b * d.l * d.c * d.h];
    let mut last = vec![0.0; d.b * d.h * d.n2 * 2];
    for (task, (out, s)) in tasks.into_iter().enumerate() {
        let (bi, h) = (task / d.h, task % d.h);
        for t in 0..d.l {
            for ci in 0..d.c {
                y[((bi * d.l + t) * d.c + ci) * d.h + h] = out[t * d.c + ci];
            }
        }
        let base = (bi * d.h + h) * d.n2 * 2;
        for (n, z) in s.iter().enumerate() {
            last[base + 2 * n] = z.re;
            last[base + 2 * n + 1] = z.im;
        }
    }
    (y, last)
}

/// Gradients of one feature, summed over the batch.
struct Acc {
    e: Vec<Complex64>,
    f: Vec<Complex64>,
    g: Vec<Complex64>,
    w: Vec<Complex64>,
    bd: Vec<Complex64>,
    p: Vec<Complex64>,
    c: Vec<Complex64>,
    beta: f64,
}

/// Gradients: `x (B, L, H)`, packed params `(H, N/2, K)`, start state `(B, H, N/2, 2)`.
pub struct Grads {
    /// d loss / d x.
    pub x: Vec<f64>,
    /// d loss / d params.
    pub params: Vec<f64>,
    /// d loss / d s0.
    pub s0: Vec<f64>,
}

/// The adjoint of [`run`] given `gy = d loss / d y (B, L, C, H)`.
pub fn backward(x: &[f64], params: &[f64], s0: &[f64], gy: &[f64], d: Dims) -> Grads {
    let consts = consts_all(params, d);
    let n2 = d.n2;
    // Per feature: (gx column per batch, param grads, gs0 per batch).
    type PerFeature = (Vec<f64>, Vec<f64>, Vec<Complex64>);
    let per: Vec<PerFeature> = (0..d.h)
        .into_par_iter()
        .map(|h| {
            let k = &consts[h];
            let mut acc = Acc {
                e: vec![Complex64::default(); n2],
                f: vec![Complex64::default(); n2],
                g: vec![Complex64::default(); n2],
                w: vec![Complex64::default(); n2],
                bd: vec![Complex64::default(); n2],
                p: vec![Complex64::default(); n2],
                c: vec![Complex64::default(); d.c * n2],
                beta: 0.0,
            };
            let mut gx = vec![0.0; d.b * d.l];
            let mut gs0 = vec![Complex64::default(); d.b * n2];
            let mut r = vec![Complex64::default(); n2];
            let mut yc = vec![0.0; d.c];
            for bi in 0..d.b {
                let xs = |t: usize| x[(bi * d.l + t) * d.h + h];
                // Forward, keeping the state before every CHECKPOINT-th step.
                let mut s = load_state(s0, d, bi, h);
                let mut checkpoints = Vec::with_capacity(d.l.div_ceil(CHECKPOINT));
                for t in 0..d.l {
                    if t % CHECKPOINT == 0 {
                        checkpoints.push(s.clone());
                    }
                    k.step(&mut s, xs(t), &mut r, &mut yc);
                }
                let mut g = vec![Complex64::default(); n2];
                let mut states: Vec<Vec<Complex64>> = Vec::with_capacity(CHECKPOINT);
                for (ck, start) in checkpoints.iter().enumerate().rev() {
                    let t0 = ck * CHECKPOINT;
                    let t1 = (t0 + CHECKPOINT).min(d.l);
                    // states[j] = state before step t0 + j.
                    states.clear();
                    let mut s = start.clone();
                    for t in t0..t1 {
                        states.push(s.clone());
                        k.step(&mut s, xs(t), &mut r, &mut yc);
                    }
                    for t in (t0..t1).rev() {
                        let gyt: Vec<f64> = (0..d.c)
                            .map(|ci| gy[((bi * d.l + t) * d.c + ci) * d.h + h])
                            .collect();
                        gx[bi * d.l + t] =
                            adjoint_step(k, &states[t - t0], xs(t), &gyt, &mut g, &mut acc);
                    }
                }
                gs0[bi * n2..(bi + 1) * n2].copy_from_slice(&g);
            }
            (gx, finish(k, acc), gs0)
        })
        .collect();
    let mut gx = vec![0.0; d.b * d.l * d.h];
    let mut gp = Vec::with_capacity(d.h * n2 * d.k());
    let mut gs = vec![0.0; d.b * d.h * n2 * 2];
    for (h, (gxh, gph, gsh)) in per.into_iter().enumerate() {
        for bi in 0..d.b {
            for t in 0..d.l {
                gx[(bi * d.l + t) * d.h + h] = gxh[bi * d.l + t];
            }
            for n in 0..n2 {
                let z = gsh[bi * n2 + n];
                gs[((bi * d.h + h) * n2 + n) * 2] = z.re;
                gs[((bi * d.h + h) * n2 + n) * 2 + 1] = z.im;
            }
        }
        gp.extend_from_slice(&gph);
    }
    Grads {
        x: gx,
        params: gp,
        s0: gs,
    }
}

/// One reverse step: `s_prev` the state before the step, `g` (in: d loss / d
/// state after the step; out: d loss / d `s_prev`). Returns d loss / d x.
fn adjoint_step(
    k: &Consts,
    s_prev: &[Complex64],
    x: f64,
    gy: &[f64],
    g: &mut [Complex64],
    acc: &mut Acc,
) -> f64 {
    let n2 = k.n2;
    // Recompute the step's intermediates.
    let sigma: f64 = (0..n2).map(|n| re_dot(k.p[n], s_prev[n])).sum();
    let mut r = Vec::with_capacity(n2);
    let mut t_sum = 0.0;
    for n in 0..n2 {
        let rn = k.f[n] * s_prev[n] - k.w[n] * sigma + k.bd[n] * x;
        t_sum += (k.g[n] * rn).re;
        r.push(rn);
    }
    let rho = k.beta * t_sum;
    // Back through s' = E q, q = r - W rho, y_c = 2 Re(C_c s').
    let mut qbar = Vec::with_capacity(n2);
    let mut rhobar = 0.0;
    for n in 0..n2 {
        let q = r[n] - k.w[n] * rho;
        let sp = k.e[n] * q;
        let mut gs = g[n];
        for (ci, &gyc) in gy.iter().enumerate().take(k.channels) {
            gs += k.c[ci * n2 + n].conj() * (2.0 * gyc);
            acc.c[ci * n2 + n] += sp.conj() * (2.0 * gyc);
        }
        acc.e[n] += q.conj() * gs;
        let qb = k.e[n].conj() * gs;
        rhobar -= re_dot(k.w[n], qb);
        acc.w[n] -= qb * rho;
        qbar.push(qb);
    }
    acc.beta += rhobar * t_sum;
    let tbar = rhobar * k.beta;
    // Back through r = F s - W sigma + dt B x and sigma = Re(P^H s).
    let mut sigmabar = 0.0;
    let mut gx = 0.0;
    for n in 0..n2 {
        let rb = qbar[n] + k.g[n].conj() * tbar;
        acc.g[n] += r[n].conj() * tbar;
        acc.f[n] += s_prev[n].conj() * rb;
        sigmabar -= re_dot(k.w[n], rb);
        acc.w[n] -= rb * sigma;
        acc.bd[n] += rb * x;
        gx += re_dot(k.bd[n], rb);
        g[n] = k.f[n].conj() * rb;
        qbar[n] = rb;
    }
    for n in 0..n2 {
        acc.p[n] += s_prev[n] * sigmabar;
        g[n] += k.p[n] * sigmabar;
    }
    gx
}

/// From the accumulated intermediate gradients to the packed parameter gradients `(N/2, K)`.
fn finish(k: &Consts, mut a: Acc) -> Vec<f64> {
    let n2 = k.n2;
    let kk = FIXED + 2 * k.channels;
    let mut out = vec![0.0; n2 * kk];
    let alphabar = -k.beta * k.beta * a.beta;
    for n in 0..n2 {
        let (p, e, dt, lam) = (k.p[n], k.e[n], k.dt[n], k.lam[n]);
        // G = conj(P) E.
        let mut pbar = a.p[n] + a.g[n].conj() * e;
        a.e[n] = a.e[n] + a.g[n] * p;
        // W = dt P, dt B.
        pbar += a.w[n] * dt;
        let mut dtbar = re_dot(p, a.w[n]) + re_dot(k.b[n], a.bd[n]);
        let bbar = a.bd[n] * dt;
        // alpha = sum |P|^2 dt Re E.
        pbar += p * (alphabar * 2.0 * dt * e.re);
        dtbar += alphabar * p.norm_sqr() * e.re;
        a.e[n] += Complex64::new(alphabar * p.norm_sqr() * dt, 0.0);
        // E = 1/(1 - dt lam/2), F = 1 + dt lam/2.
        let e2 = e * e;
        let lambar = (e2 * (dt * 0.5)).conj() * a.e[n] + a.f[n] * (dt * 0.5);
        dtbar += re_dot(e2 * lam * 0.5, a.e[n]) + re_dot(lam * 0.5, a.f[n]);
        let row = &mut out[n * kk..(n + 1) * kk];
        row[0] = lambar.re;
        row[1] = lambar.im;
        row[2] = pbar.re;
        row[3] = pbar.im;
        row[4] = bbar.re;
        row[5] = bbar.im;
        row[6] = dtbar;
        for ci in 0..k.channels {
            let z = a.c[ci * n2 + n];
            row[FIXED + 2 * ci] = z.re;
            row[FIXED + 2 * ci + 1] = z.im;
        }
    }
    out
}

fn to_f64(s: &CpuStorage, l: &Layout, what: &str) -> Result<Vec<f64>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("S4 DPLR scan: {what} must be contiguous");
    };
    Ok(match s {
        CpuStorage::F32(v) => v[a..b].iter().map(|&z| z as f64).collect(),
        CpuStorage::F64(v) => v[a..b].to_vec(),
        other => candle_core::bail!(
            "S4 DPLR scan: {what} must be f32 or f64, found {:?}",
            other.dtype()
        ),
    })
}

/// The recurrence as a candle op on `(x (B, L, H), params (H, N/2, K), s0 (B, H, N/2, 2))`,
/// giving `y (B, L, channels, H)`.
#[derive(Debug, Clone, Copy)]
pub struct DplrScan {
    /// Output channels.
    pub channels: usize,
}

impl DplrScan {
    fn dims(&self, x: &Shape, p: &Shape, s0: &Shape) -> Result<Dims> {
        let (b, l, h) = x.dims3()?;
        let k = FIXED + 2 * self.channels;
        match (p.dims(), s0.dims()) {
            (&[ph, n2, pk], &[sb, sh, sn, 2]) if ph == h && pk == k && sb == b && sh == h && sn == n2 => {
                Ok(Dims {
                    b,
                    l,
                    h,
                    n2,
                    c: self.channels,
                })
            }
            _ => candle_core::bail!(
                "S4 DPLR scan: expected x (B, L, H), params (H, N/2, {k}), s0 (B, H, N/2, 2); found {x:?}, {p:?}, {s0:?}"
            ),
        }
    }
}

impl CustomOp3 for DplrScan {
    fn name(&self) -> &'static str {
        "s4-dplr-scan"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(xl.shape(), pl.shape(), sl.shape())?;
        let (y, _) = run(
            &to_f64(xs, xl, "x")?,
            &to_f64(ps, pl, "params")?,
            &to_f64(ss, sl, "s0")?,
            d,
        );
        let out = match xs.dtype() {
            DType::F32 => CpuStorage::F32(y.into_iter().map(|v| v as f32).collect()),
            _ => CpuStorage::F64(y),
        };
        Ok((out, Shape::from((d.b, d.l, d.c, d.h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        s0: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.shape(), p.shape(), s0.shape())?;
        let flat = |t: &Tensor| -> Result<Vec<f64>> {
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
        };
        let g = backward(&flat(x)?, &flat(p)?, &flat(s0)?, &flat(gy)?, d);
        let dev = x.device();
        let gx = Tensor::from_vec(g.x, x.shape(), dev)?.to_dtype(x.dtype())?;
        let gp = Tensor::from_vec(g.params, p.shape(), dev)?.to_dtype(p.dtype())?;
        let gs = Tensor::from_vec(g.s0, s0.shape(), dev)?.to_dtype(s0.dtype())?;
        Ok((Some(gx), Some(gp), Some(gs)))
    }
}

/// `y (B, L, channels, H)` of the recurrence over `x (B, L, H)` from `s0 (B, H, N/2, 2)`
/// (zeros when `None`), differentiable in all three.
pub fn dplr_scan(
    x: &Tensor,
    params: &Tensor,
    s0: Option<&Tensor>,
    channels: usize,
) -> Result<Tensor> {
    let (b, _, h) = x.dims3()?;
    let n2 = params.dim(1)?;
    let params = params.to_dtype(x.dtype())?.contiguous()?;
    let s0 = match s0 {
        Some(s) => s.to_dtype(x.dtype())?.contiguous()?,
        None => Tensor::zeros((b, h, n2, 2), x.dtype(), x.device())?,
    };
    x.contiguous()?
        .apply_op3(&params, &s0, DplrScan { channels })
}
