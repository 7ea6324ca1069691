//! lrnnx's DPLR initialisations, computed in f64.
//!
//! `nplr` diagonalises the normal part of the HiPPO matrix with a Hermitian
//! eigen-decomposition ([`lrnnx_kernels::linalg::eigh`]). Eigenvectors are only
//! defined up to a phase; LAPACK's `zheevd` (torch) returns them with a real
//! first component of arbitrary sign, and this module picks the positive
//! sign. The result is lrnnx's init up to a sign per mode of `B` and `P`
//! together, which leaves the system unchanged (`C` is random).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use lrnnx_framework::params::random;
use lrnnx_framework::{Error, Result};
use lrnnx_kernels::linalg::eigh;
use num_complex::Complex64 as C64;
use rand::rngs::StdRng;

use super::params::SsmSpec;

/// The init of one set of `n_ssm` copies: `lambda (n_ssm*N2)`,
/// `p (rank*n_ssm*N2)`, `b (n_ssm*N2)` and row 0 of `V` (for deterministic `C`).
#[derive(Debug, Clone, Default)]
pub struct Init {
    /// Diagonal of `A`.
    pub lambda: Vec<C64>,
    /// Low-rank factor, `(rank, n_ssm, N2)`.
    pub p: Vec<C64>,
    /// Input matrix, `(n_ssm, N2)`.
    pub b: Vec<C64>,
    /// `V[0, :N2]` per copy, `(n_ssm, N2)`.
    pub v_row0: Vec<C64>,
}

/// The list of initialisations `init` stands for (`hippo`, `diag`, `all` are combinations).
pub fn expand(init: &str) -> std::result::Result<Vec<String>, String> {
    let list: Vec<&str> = match init {
        "hippo" => vec!["legs", "fourier"],
        "diag" => vec!["diag-inv", "diag-lin"],
        "all" => vec!["legs", "fourier", "diag-inv", "diag-lin"],
        other => vec![other],
    };
    Ok(list.into_iter().map(String::from).collect())
}

/// Whether one initialisation is supported at this rank.
pub fn check(init: &str, rank: usize) -> std::result::Result<(), String> {
    let ok_dplr = [
        "",
        "hippo",
        "legs",
        "rand",
        "random",
        "real",
        "lin",
        "linear",
        "inv",
        "inverse",
        "inv2",
        "inverse2",
        "quad",
        "quadratic",
    ];
    if init == "legs" || init == "fourier" || init == "fout" {
        return Ok(());
    }
    if init == "legt" {
        return Err(format!(
            "init `legt` needs rank >= 2 and is not supported (rank = {rank}); use legs, fourier, hippo, diag-* or dplr-*"
        ));
    }
    for prefix in ["diag", "dplr"] {
        if let Some(rest) = init.strip_prefix(prefix) {
            let sub = rest.strip_prefix('-').unwrap_or(rest);
            if (rest.is_empty() || rest.starts_with('-')) && ok_dplr.contains(&sub) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "unknown init `{init}`; expected legs, fourier, hippo, diag, all, diag-<x> or dplr-<x> \
         with <x> in lin, inv, inv2, quad, rand, real, legs"
    ))
}

/// HiPPO transition `(A (N x N) row-major, B (N))` of `measure`.
fn transition(measure: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = vec![0.0; n * n];
    let mut b = vec![0.0; n];
    match measure {
        "legs" => {
            for i in 0..n {
                b[i] = ((2 * i + 1) as f64).sqrt();
                for j in 0..=i {
                    a[i * n + j] = if i == j {
                        -((i + 1) as f64)
                    } else {
                        -(((2 * i + 1) * (2 * j + 1)) as f64).sqrt()
                    };
                }
            }
        }
        _ => {
            // fourier / fout
            let mut d = Vec::with_capacity(n);
            for f in 0..n / 2 {
                d.push(0.0);
                d.push(f as f64);
            }
            let d: Vec<f64> = d.into_iter().skip(1).collect();
            for (k, &dk) in d.iter().enumerate() {
                if k + 1 < n {
                    a[k * n + k + 1] = -std::f64::consts::PI * dk;
                    a[(k + 1) * n + k] = std::f64::consts::PI * dk;
                }
            }
            for i in (0..n).step_by(2) {
                b[i] = 2f64.sqrt();
            }
            if n > 0 {
                b[0] = 1.0;
            }
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] -= b[i] * b[j];
                }
            }
        }
    }
    (a, b)
}

/// Low-rank correction `P (rank x N)` such that `A + P^T P` is normal.
fn rank_correction(measure: &str, n: usize, rank: usize) -> Vec<f64> {
    let mut p = vec![0.0; rank * n];
    for (i, slot) in p.iter_mut().take(n).enumerate() {
        *slot = match measure {
            "legs" => (0.5 + i as f64).sqrt(),
            _ => {
                if i == 0 {
                    1.0
                } else if i % 2 == 0 {
                    2f64.sqrt()
                } else {
                    0.0
                }
            }
        };
    }
    p
}

type Nplr = (Vec<C64>, Vec<C64>, Vec<C64>, Vec<C64>);

fn nplr_cache() -> &'static Mutex<HashMap<String, Arc<Nplr>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Nplr>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// lrnnx's `nplr(measure, N, rank, B_clip)`: `(W (N2), P (rank x N2), B (N2), V[0, :N2])`.
pub fn nplr(measure: &str, n: usize, rank: usize, b_clip: Option<f64>) -> Result<Arc<Nplr>> {
    let key = format!("{measure}/{n}/{rank}/{b_clip:?}");
    if let Some(hit) = nplr_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(hit.clone());
    }
    let (a, b) = transition(measure, n);
    let p = rank_correction(measure, n, rank);
    let mut ap = a.clone();
    for r in 0..rank {
        for i in 0..n {
            for j in 0..n {
                ap[i * n + j] += p[r * n + i] * p[r * n + j];
            }
        }
    }
    let w_re = (0..n).map(|i| ap[i * n + i]).sum::<f64>() / n as f64;
    // eigh(AP * -1j) reads the lower triangle; the diagonal's real part is 0.
    let mut herm = vec![C64::default(); n * n];
    for i in 0..n {
        for j in 0..i {
            let z = C64::new(0.0, -ap[i * n + j]);
            herm[i * n + j] = z;
            herm[j * n + i] = z.conj();
        }
    }
    let (w_im, mut v) = eigh(&herm, n)
        .map_err(|e| Error::Config(format!("HiPPO-{measure} init at d_state = {n}: {e}")))?;
    let n2 = n / 2;
    // Phase: first non-negligible component real and positive (see the module docs).
    for k in 0..n {
        if let Some(z) = (0..n)
            .map(|i| v[i * n + k])
            .find(|z| z.re.hypot(z.im) > 1e-12)
        {
            let r = z.re.hypot(z.im);
            let ph = C64::new(z.re / r, -z.im / r);
            for i in 0..n {
                v[i * n + k] *= ph;
            }
        }
    }
    let w: Vec<C64> = (0..n2).map(|k| C64::new(w_re, w_im[k])).collect();
    let mut vk: Vec<Vec<C64>> = (0..n2)
        .map(|k| (0..n).map(|i| v[i * n + k]).collect())
        .collect();
    if n2 >= 1 && w[n2 - 1].re.hypot(w[n2 - 1].im) < 1e-4 {
        let col = &mut vk[n2 - 1];
        col.iter_mut().for_each(|z| *z = C64::default());
        col[0] = C64::new(0.5f64.sqrt(), 0.0);
        if n > 1 {
            col[1] = C64::new(0.0, 0.5f64.sqrt());
        }
    }
    let vh_dot = |col: &[C64], x: &[f64]| -> C64 {
        col.iter().zip(x).fold(C64::default(), |acc, (&z, &xv)| {
            acc + C64::new(z.re * xv, -z.im * xv)
        })
    };
    let mut bb: Vec<C64> = vk.iter().map(|col| vh_dot(col, &b)).collect();
    if let Some(clip) = b_clip {
        bb.iter_mut().for_each(|z| z.im = z.im.clamp(-clip, clip));
    }
    let pp: Vec<C64> = (0..rank)
        .flat_map(|r| {
            let pr = &p[r * n..(r + 1) * n];
            vk.iter()
                .map(move |col| vh_dot(col, pr))
                .collect::<Vec<_>>()
        })
        .collect();
    let v0: Vec<C64> = vk.iter().map(|col| col[0]).collect();
    let out = Arc::new((w, pp, bb, v0));
    nplr_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, out.clone());
    Ok(out)
}

/// lrnnx's `dplr(init=sub, N, rank, H=copies)` with default arguments
/// (`P_scale = 0` for `diag-*`).
fn dplr(
    sub: &str,
    n: usize,
    rank: usize,
    copies: usize,
    diag: bool,
    rng: &mut StdRng,
) -> Result<Init> {
    let n2 = n / 2;
    let pi = std::f64::consts::PI;
    let nf = n as f64;
    let mut real = vec![0.5; copies * n2];
    let mut imag: Vec<f64> = (0..copies * n2).map(|i| (i % n2) as f64).collect();
    match sub {
        "rand" | "random" => {
            imag = random::normal(rng, copies * n2)
                .into_iter()
                .map(f64::exp)
                .collect()
        }
        "real" => {
            imag.iter_mut().for_each(|x| *x = 0.0);
            real = (0..copies * n2).map(|i| 1.0 + (i % n2) as f64).collect();
        }
        "lin" | "linear" => imag.iter_mut().for_each(|x| *x *= pi),
        "inv" | "inverse" => imag
            .iter_mut()
            .for_each(|x| *x = nf / pi * (nf / (1.0 + 2.0 * *x) - 1.0)),
        "inv2" | "inverse2" => imag
            .iter_mut()
            .for_each(|x| *x = nf / pi * (nf / (1.0 + *x) - 1.0)),
        "quad" | "quadratic" => imag
            .iter_mut()
            .for_each(|x| *x = (1.0 + 2.0 * *x).powi(2) / pi),
        _ => {
            // legs / hippo
            let (w, _, _, _) = &*nplr("legs", n, 1, Some(2.0))?;
            imag = (0..copies * n2).map(|i| -w[i % n2].im).collect();
        }
    }
    let lambda: Vec<C64> = real
        .iter()
        .zip(&imag)
        .map(|(&r, &i)| C64::new(-r, -i))
        .collect();
    // B: S4D-LegS's for the legs / hippo variants, else B_init = "constant".
    let b = match sub {
        "legs" | "hippo" => {
            let (_, _, bl, _) = &*nplr("legs", n, 1, Some(2.0))?;
            (0..copies * n2).map(|i| bl[i % n2]).collect()
        }
        _ => vec![C64::new(1.0, 0.0); copies * n2],
    };
    let scale = if diag { 0.0 } else { 1.0 };
    let z = random::normal(rng, 2 * rank * copies * n2);
    let p = z
        .chunks(2)
        .map(|c| C64::new(c[0] * 0.5f64.sqrt() * scale, c[1] * 0.5f64.sqrt() * scale))
        .collect();
    let v_row0 = (0..copies * n2)
        .map(|i| {
            if i % n2 == 0 {
                C64::new(1.0, 0.0)
            } else {
                C64::default()
            }
        })
        .collect();
    Ok(Init {
        lambda,
        p,
        b,
        v_row0,
    })
}

fn single(init: &str, spec: &SsmSpec, copies: usize, rng: &mut StdRng) -> Result<Init> {
    let (n, rank, n2) = (spec.d_state, spec.rank, spec.n2());
    for prefix in ["diag", "dplr"] {
        if let Some(rest) = init.strip_prefix(prefix) {
            let sub = rest.strip_prefix('-').unwrap_or("hippo");
            return dplr(sub, n, rank, copies, prefix == "diag", rng);
        }
    }
    let measure = if init == "legs" { "legs" } else { "fourier" };
    let (w, p, b, v0) = &*nplr(measure, n, rank, spec.b_clip)?;
    let rep = |x: &[C64]| -> Vec<C64> { (0..copies).flat_map(|_| x.iter().copied()).collect() };
    Ok(Init {
        lambda: rep(w),
        p: (0..rank)
            .flat_map(|r| rep(&p[r * n2..(r + 1) * n2]))
            .collect(),
        b: rep(b),
        v_row0: rep(v0),
    })
}

/// lrnnx's `combination(init, N, rank, n_ssm)`: each listed init on an
/// equal share of the `n_ssm` copies, concatenated.
pub fn combination(spec: &SsmSpec, rng: &mut StdRng) -> Result<Init> {
    let inits = expand(&spec.init).map_err(Error::Config)?;
    let share = spec.n_ssm / inits.len();
    let parts: Vec<Init> = inits
        .iter()
        .map(|i| single(i, spec, share, rng))
        .collect::<Result<_>>()?;
    let n2 = spec.n2();
    let mut out = Init::default();
    for part in &parts {
        out.lambda.extend_from_slice(&part.lambda);
        out.b.extend_from_slice(&part.b);
        out.v_row0.extend_from_slice(&part.v_row0);
    }
    for r in 0..spec.rank {
        for part in &parts {
            out.p
                .extend_from_slice(&part.p[r * share * n2..(r + 1) * share * n2]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_init_matches_lrnnx_up_to_signs() {
        // lrnnx (torch eigh) for N = 8: A_imag, and B, P per mode up to one sign.
        let (w, p, b, _) = &*nplr("legs", 8, 1, Some(2.0)).unwrap();
        let a_imag = [19.85741, 5.35421, 1.95779, 0.42749];
        let p_ref = [
            C64::new(-0.09176, -3.64442),
            C64::new(0.12123, 1.29816),
            C64::new(-0.20558, -0.80498),
            C64::new(-0.42967, -0.36736),
        ];
        let b_ref = [
            C64::new(-0.12978, -2.0),
            C64::new(0.17144, 1.83588),
            C64::new(-0.29074, -1.13842),
            C64::new(-0.60765, -0.51953),
        ];
        for k in 0..4 {
            assert!((w[k].re + 0.5).abs() < 1e-12);
            assert!((-w[k].im - a_imag[k]).abs() < 1e-4, "{k}: {:?}", w[k]);
            let sign = if (p[k].re - p_ref[k].re).abs() < 1e-3 {
                1.0
            } else {
                -1.0
            };
            for (ours, theirs) in [(p[k], p_ref[k]), (b[k], b_ref[k])] {
                assert!(
                    (sign * ours.re - theirs.re).abs() < 1e-4,
                    "{k}: {ours:?} {theirs:?}"
                );
                assert!(
                    (sign * ours.im - theirs.im).abs() < 1e-4,
                    "{k}: {ours:?} {theirs:?}"
                );
            }
        }
    }
}
