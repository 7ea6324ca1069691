//! The selective scan written plainly, in f64, one channel and position at a
//! time: the reference the GPU kernel is tested against, and what the candle-ops
//! path runs when its tensors are on the CPU (so that path is tested without
//! a GPU).

use candle_core::{DType, Result, Tensor};

use crate::cpu::recurrence::{Rule, LANES};
use crate::scan_args::{ScanArgs, ScanSizes};

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// `(Abar, gain)` of one state entry.
fn discretize(rule: Rule, dta: f64, delta: f64, a: f64) -> (f64, f64) {
    match rule {
        Rule::Mamba => ((dta * a).exp(), delta),
        Rule::Zoh => ((dta * a).exp(), (delta * a).exp_m1() / a),
        Rule::Bilinear => (
            (1.0 + dta * a / 2.0) / (1.0 - dta * a / 2.0),
            delta / (1.0 - delta * a / 2.0),
        ),
        Rule::Dirac => ((dta * a).exp(), 1.0),
    }
}

/// Same contract as `crate::cuda::selective_scan_gpu` (feature `cuda`):
/// `(y (B, L, D), last state (B, ceil(D/16), N, 16))` (lanes past `D` zero),
/// in `uz`'s dtype.
pub fn selective_scan_reference(args: &ScanArgs) -> Result<(Tensor, Tensor)> {
    let ScanSizes { b, l, d, n, r } = args.sizes()?;
    let (uz, h0, rule) = (args.uz, args.h0, args.rule);
    let (d2, k) = (2 * d, r + 2 * n);
    let (uzv, dl, da, xd, av, sk) = (
        values(uz)?,
        values(args.delta)?,
        values(args.dta)?,
        values(args.xdbl)?,
        values(args.a)?,
        values(args.skip)?,
    );
    let mut h = values(h0)?;
    let mut y = vec![0.0; b * l * d];
    for bi in 0..b {
        for ch in 0..d {
            let at =
                |ni: usize| ((bi * d.div_ceil(LANES) + ch / LANES) * n + ni) * LANES + ch % LANES;
            for t in 0..l {
                let i = bi * l + t;
                let (u, z) = (uzv[i * d2 + ch], uzv[i * d2 + d + ch]);
                let mut acc = sk[ch] * u;
                for ni in 0..n {
                    let (abar, gain) =
                        discretize(rule, da[i * d + ch], dl[i * d + ch], av[ch * n + ni]);
                    let s = abar * h[at(ni)] + gain * xd[i * k + r + ni] * u;
                    h[at(ni)] = s;
                    acc += xd[i * k + r + n + ni] * s;
                }
                y[i * d + ch] = acc * z / (1.0 + (-z).exp());
            }
        }
    }
    // Lanes past D hold zeros, as the kernels leave them.
    for (i, v) in h.iter_mut().enumerate() {
        if (i / (n * LANES) % d.div_ceil(LANES)) * LANES + i % LANES >= d {
            *v = 0.0;
        }
    }
    let dev = uz.device();
    Ok((
        Tensor::from_vec(y, (b, l, d), dev)?.to_dtype(uz.dtype())?,
        Tensor::from_vec(h, h0.shape(), dev)?.to_dtype(uz.dtype())?,
    ))
}
