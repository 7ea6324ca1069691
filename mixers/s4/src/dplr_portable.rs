//! S4's DPLR system from candle tensor ops only: the portable path (CUDA,
//! bf16, and CPU under `lrnnx_kernels::portable::with_portable`), with
//! gradients from candle's autograd.
//!
//! The one-step map of [`crate::dplr`] (Woodbury form, see its module docs)
//! runs on a batch of states with candle ops ([`StepMap`]). Applied to the
//! identity basis it gives the dense real transition `Ā (H, N, N)` of the
//! real state `[Re s, Im s]` (`N = 2 * N/2`), applied to a zero state with a
//! unit input the dense `B̄ (H, N, 1)` ([`Dense`]). Powers come by doubling
//! ([`orbit`]): `ceil(log2 L)` batched matmuls give `Ā^l X` for `l < L`, so
//! the kernel `K_l = C Ā^l B̄`, the prefill's final state and the decay of a
//! start state are all matmuls.
//!
//! Everything runs in the dtype of the packed parameters handed in; callers
//! pass them in the accumulation dtype (f32, f64 for f64).

use candle_core::Tensor;
use lrnnx_framework::{Complex, Result};

use crate::dplr::FIXED;

/// Column `j` of the packed parameters `(H, N/2, K)` as `(H, 1, N/2)`.
fn col(packed: &Tensor, j: usize) -> Result<Tensor> {
    Ok(packed.narrow(2, j, 1)?.squeeze(2)?.unsqueeze(1)?)
}

/// `1 / z`, elementwise.
fn recip(z: &Complex) -> Result<Complex> {
    let den = (z.re.sqr()? + z.im.sqr()?)?;
    Ok(Complex::new(
        z.re.broadcast_div(&den)?,
        z.im.neg()?.broadcast_div(&den)?,
    ))
}

/// The per-feature constants of one step, each `(H, 1, N/2)` (`beta` `(H, 1, 1)`).
#[derive(Debug, Clone)]
pub struct StepMap {
    e: Complex,
    f: Complex,
    w: Complex,
    bd: Complex,
    g: Complex,
    p: Complex,
    beta: Tensor,
    /// The readout `[2 Re C_c, -2 Im C_c]` per channel, `(H, channels, N)`.
    c: Tensor,
}

impl StepMap {
    /// From the packed parameters `(H, N/2, 7 + 2*channels)` (see [`crate::dplr`]).
    pub fn new(packed: &Tensor, channels: usize) -> Result<Self> {
        let (h, n2, k) = packed.dims3()?;
        if k != FIXED + 2 * channels {
            return Err(lrnnx_framework::Error::shape(
                "S4 packed parameters",
                format!("(H, N/2, {})", FIXED + 2 * channels),
                packed.dims(),
            ));
        }
        let lam = Complex::new(col(packed, 0)?, col(packed, 1)?);
        let p = Complex::new(col(packed, 2)?, col(packed, 3)?);
        let b = Complex::new(col(packed, 4)?, col(packed, 5)?);
        let dt = col(packed, 6)?;
        let half = lam.mul_real(&dt)?.scale(0.5)?;
        let e = recip(&half.scale(-1.0)?.add_scalar(1.0)?)?;
        let f = half.add_scalar(1.0)?;
        let w = p.mul_real(&dt)?;
        let bd = b.mul_real(&dt)?;
        let g = p.conj()?.mul(&e)?;
        let p2 = (p.re.sqr()? + p.im.sqr()?)?;
        let alpha = (p2 * &dt)?.mul(&e.re)?.sum_keepdim(2)?;
        let beta = (alpha + 1.0)?.recip()?;
        // (H, N/2, C, 2) -> (H, C, 2, N/2), scaled by (2, -2) on the pair axis.
        let cs = packed
            .narrow(2, FIXED, 2 * channels)?
            .reshape((h, n2, channels, 2))?
            .permute((0, 2, 3, 1))?;
        let sign = Tensor::new(&[2f32, -2.0], packed.device())?
            .to_dtype(packed.dtype())?
            .reshape((1, 1, 2, 1))?;
        let c = cs.broadcast_mul(&sign)?.reshape((h, channels, 2 * n2))?;
        Ok(Self {
            e,
            f,
            w,
            bd,
            g,
            p,
            beta,
            c,
        })
    }

    /// One step of states `s (H, K, N/2)` with inputs `x (H, K, 1)` (none: zero).
    pub fn step(&self, s: &Complex, x: Option<&Tensor>) -> Result<Complex> {
        let sigma =
            (s.re.broadcast_mul(&self.p.re)? + s.im.broadcast_mul(&self.p.im)?)?.sum_keepdim(2)?;
        let mut r = self.f.mul(s)?.sub(&self.w.mul_real(&sigma)?)?;
        if let Some(x) = x {
            r = r.add(&self.bd.mul_real(x)?)?;
        }
        let t =
            (r.re.broadcast_mul(&self.g.re)? - r.im.broadcast_mul(&self.g.im)?)?.sum_keepdim(2)?;
        let rho = t.broadcast_mul(&self.beta)?;
        self.e.mul(&r.sub(&self.w.mul_real(&rho)?)?)
    }

    /// The readout `(H, channels, N)`: `y_c = c_c · [Re s, Im s]` is `2 Re(C_c s)`.
    pub fn readout(&self) -> &Tensor {
        &self.c
    }
}

/// The dense real system of every feature: `a (H, N, N)`, `b (H, N, 1)`,
/// `c (H, channels, N)`, acting on `[Re s, Im s]`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `Ā`.
    pub a: Tensor,
    /// `B̄`.
    pub b: Tensor,
    /// The readout.
    pub c: Tensor,
}

impl Dense {
    /// `Ā` as the step map applied to the identity basis, `B̄` as the step
    /// from a zero state with a unit input.
    pub fn new(map: &StepMap) -> Result<Self> {
        let (h, _, n2) = map.e.re.dims3()?;
        let (dtype, dev) = (map.e.re.dtype(), map.e.re.device());
        let eye = Tensor::eye(n2, dtype, dev)?;
        let zero = Tensor::zeros((n2, n2), dtype, dev)?;
        let basis = |top: &Tensor, bottom: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[top, bottom], 0)?
                .unsqueeze(0)?
                .broadcast_as((h, 2 * n2, n2))?)
        };
        let s = Complex::new(basis(&eye, &zero)?, basis(&zero, &eye)?);
        let next = map.step(&s, None)?;
        // Row k holds the image of basis vector k: that is the transpose of Ā.
        let a = Tensor::cat(&[&next.re, &next.im], 2)?
            .transpose(1, 2)?
            .contiguous()?;
        let s0 = Tensor::zeros((h, 1, n2), dtype, dev)?;
        let one = Tensor::ones((h, 1, 1), dtype, dev)?;
        let b1 = map.step(&Complex::new(s0.clone(), s0), Some(&one))?;
        let b = Tensor::cat(&[&b1.re, &b1.im], 2)?.transpose(1, 2)?;
        Ok(Self {
            a,
            b,
            c: map.readout().clone(),
        })
    }

    /// The kernel `(channels*H, len)`, row `c*H + h`: `K_l = c Ā^l B̄`.
    pub fn kernel(&self, len: usize) -> Result<Tensor> {
        let (h, ch, _) = self.c.dims3()?;
        let v = orbit(&self.a, &self.b, len)?; // (H, N, len)
        Ok(self.c.matmul(&v)?.transpose(0, 1)?.reshape((ch * h, len))?)
    }
}

/// `[a^0 x, a^1 x, ..., a^(len-1) x]` for `a (H, N, N)`, `x (H, N, K)`, as
/// `(H, N, len*K)` (column `l*K + k` is `a^l x_k`), by doubling: `ceil(log2
/// len)` batched matmuls with `a^(2^j)`.
pub fn orbit(a: &Tensor, x: &Tensor, len: usize) -> Result<Tensor> {
    let k = x.dim(2)?;
    let mut v = x.clone();
    let mut p = a.clone();
    let mut have = 1;
    while have < len {
        let take = have.min(len - have);
        let next = p.matmul(&v.narrow(2, 0, take * k)?.contiguous()?)?;
        v = Tensor::cat(&[&v, &next], 2)?;
        have += take;
        if have < len {
            p = p.matmul(&p)?;
        }
    }
    Ok(v)
}

/// A state `(B, H, N/2, 2)` as the real form `(H, N, B)`.
pub fn state_to_real(s: &Tensor) -> Result<Tensor> {
    let (b, h, n2, _) = s.dims4()?;
    Ok(s.permute((1, 3, 2, 0))?.reshape((h, 2 * n2, b))?)
}

/// The real form `(H, N, B)` as a state `(B, H, N/2, 2)`.
pub fn real_to_state(v: &Tensor) -> Result<Tensor> {
    let (h, n, b) = v.dims3()?;
    Ok(v.reshape((h, 2, n / 2, b))?
        .permute((3, 0, 2, 1))?
        .contiguous()?)
}
