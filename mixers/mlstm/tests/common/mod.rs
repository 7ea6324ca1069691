//! Helpers shared by the tests: seeded random tensors (from lrnnx-testing)
//! and a plain-loop f64 reference of the mLSTM cell (mlstm_kernels' recurrence and parallel form).

#![allow(dead_code)]

use candle_core::Tensor;

/// A seeded normal tensor `mean + std * N(0, 1)`.
pub use lrnnx_testing::normal as randn;
pub use lrnnx_testing::{max_abs, max_err, vec1};

fn logsig(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// Flat cell inputs: q, k `[B][NH][S][DK]`, v `[B][NH][S][DV]`, gates `[B][NH][S]`.
pub struct CellRef {
    pub b: usize,
    pub nh: usize,
    pub s: usize,
    pub dk: usize,
    pub dv: usize,
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub i: Vec<f64>,
    pub f: Vec<f64>,
}

/// Outputs of the reference: h `[B][NH][S][DV]` and last c, n, m.
pub struct RefOut {
    pub h: Vec<f64>,
    pub c: Vec<f64>,
    pub n: Vec<f64>,
    pub m: Vec<f64>,
}

impl CellRef {
    pub fn from(q: &Tensor, k: &Tensor, v: &Tensor, i: &Tensor, f: &Tensor) -> Self {
        let (b, nh, s, dk) = q.dims4().unwrap();
        let dv = v.dim(3).unwrap();
        Self {
            b,
            nh,
            s,
            dk,
            dv,
            q: vec1(q),
            k: vec1(k),
            v: vec1(v),
            i: vec1(i),
            f: vec1(f),
        }
    }

    /// The recurrence, position by position, from `init` (c, n, m) or zeros.
    pub fn recurrent(&self, init: Option<(&[f64], &[f64], &[f64])>, eps: f64) -> RefOut {
        let (dk, dv, s) = (self.dk, self.dv, self.s);
        let mut out = RefOut {
            h: vec![0.0; self.b * self.nh * s * dv],
            c: vec![0.0; self.b * self.nh * dk * dv],
            n: vec![0.0; self.b * self.nh * dk],
            m: vec![0.0; self.b * self.nh],
        };
        if let Some((c, n, m)) = init {
            out.c.copy_from_slice(c);
            out.n.copy_from_slice(n);
            out.m.copy_from_slice(m);
        }
        let scale = 1.0 / (dk as f64).sqrt();
        for bh in 0..self.b * self.nh {
            let c = &mut out.c[bh * dk * dv..(bh + 1) * dk * dv];
            let n = &mut out.n[bh * dk..(bh + 1) * dk];
            let mut m = out.m[bh];
            for t in 0..s {
                let g = bh * s + t;
                let (it, lf) = (self.i[g], logsig(self.f[g]));
                let m_new = (lf + m).max(it);
                let fa = (lf + m - m_new).exp();
                let ia = (it - m_new).exp();
                let q = &self.q[g * dk..(g + 1) * dk];
                let k = &self.k[g * dk..(g + 1) * dk];
                let v = &self.v[g * dv..(g + 1) * dv];
                for a in 0..dk {
                    for e in 0..dv {
                        c[a * dv + e] = fa * c[a * dv + e] + ia * k[a] * v[e];
                    }
                    n[a] = fa * n[a] + ia * k[a];
                }
                m = m_new;
                let qn: f64 = (0..dk).map(|a| q[a] * scale * n[a]).sum();
                let den = qn.abs().max((-m).exp()) + eps;
                for e in 0..dv {
                    let num: f64 = (0..dk).map(|a| q[a] * scale * c[a * dv + e]).sum();
                    out.h[g * dv + e] = num / den;
                }
            }
            out.m[bh] = m;
        }
        out
    }

    /// mlstm_kernels' `mlstm_parallel_fw`: stabilizer `max_s logD[t, s]`, no initial state.
    pub fn parallel(&self, eps: f64) -> Vec<f64> {
        let (dk, dv, s) = (self.dk, self.dv, self.s);
        let scale = 1.0 / (dk as f64).sqrt();
        let mut h = vec![0.0; self.b * self.nh * s * dv];
        for bh in 0..self.b * self.nh {
            let base = bh * s;
            let mut cum = vec![0.0; s + 1];
            for t in 0..s {
                cum[t + 1] = cum[t] + logsig(self.f[base + t]);
            }
            for t in 0..s {
                let logd: Vec<f64> = (0..=t)
                    .map(|j| cum[t + 1] - cum[j + 1] + self.i[base + j])
                    .collect();
                let m = logd.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut w = vec![0.0; t + 1];
                for j in 0..=t {
                    let qk: f64 = (0..dk)
                        .map(|a| self.q[(base + t) * dk + a] * self.k[(base + j) * dk + a])
                        .sum();
                    w[j] = qk * scale * (logd[j] - m).exp();
                }
                let den = w.iter().sum::<f64>().abs().max((-m).exp()) + eps;
                for e in 0..dv {
                    let num: f64 = (0..=t).map(|j| w[j] * self.v[(base + j) * dv + e]).sum();
                    h[(base + t) * dv + e] = num / den;
                }
            }
        }
        h
    }
}
