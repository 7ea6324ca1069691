//! The float trait of the CPU kernels ([`Float`], f32 and f64), with
//! branch-free f32 `exp`, `expm1`, `ln(1 + w)` and `erf` so that loops over
//! them vectorize, and the activations built on them.
//!
//! The f32 `exp` is Cephes' `expf` (Cody-Waite reduction, degree-5
//! polynomial; about 1 ulp); `expm1` shares its reduction so that it keeps
//! full relative precision near 0, which `exp(x) - 1` would not.

/// The element types of the CPU kernels (f32 and f64) with the math they
/// need. In f32 the transcendental functions are branch-free polynomials
/// (so loops over them vectorize) whose operations the vector backends of
/// [`super::simd`] repeat exactly; in f64 they are the standard library's.
///
/// `exp_` is not called `exp` so that it is never confused with the
/// inherent `f32::exp` / `f64::exp` on concrete types.
pub trait Float:
    crate::Real + std::ops::Div<Output = Self> + std::ops::AddAssign + PartialOrd + 'static
{
    /// `0`.
    const ZERO: Self;
    /// `1`.
    const ONE: Self;
    /// Converts a constant.
    fn c(x: f64) -> Self;
    /// `self * a + b`.
    fn fma(self, a: Self, b: Self) -> Self;
    /// `e^self`.
    fn exp_(self) -> Self;
    /// `(e^self - 1, e^self)`, the first with full relative precision near 0.
    fn expm1_exp(self) -> (Self, Self);
    /// `ln(1 + self)` for `self` in `[0, 1]`.
    fn ln1p_unit(self) -> Self;
    /// `|self|`.
    fn abs_(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// `ln(1 + x)`, any `x > -1`.
    fn ln_1p(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// A fast kernel for `yt[o, r] = x[r] . w[o]` (rows of length `k`), if
    /// this type and CPU have one: returns whether it ran.
    fn block_dot(_x: &[Self], _k: usize, _w: &[Self], _yt: &mut [Self]) -> bool {
        false
    }
    /// Branch-free `if c { a } else { b }`.
    #[inline(always)]
    fn sel(c: bool, a: Self, b: Self) -> Self {
        if c {
            a
        } else {
            b
        }
    }
    /// `max(self, 0)`.
    #[inline(always)]
    fn relu(self) -> Self {
        Self::sel(self > Self::ZERO, self, Self::ZERO)
    }
    /// PyTorch's `softplus` (threshold 20): `x` above 20, `ln(1 + e^x)` below.
    #[inline(always)]
    fn softplus(self) -> Self {
        let w = (-self.abs_()).exp_();
        let v = self.relu() + w.ln1p_unit();
        Self::sel(self > Self::c(20.0), self, v)
    }
    /// The derivative of [`Float::softplus`]: `sigmoid(x)`, 1 above the threshold.
    #[inline(always)]
    fn softplus_grad(self) -> Self {
        Self::sel(self > Self::c(20.0), Self::ONE, self.sigmoid())
    }
    /// `1 / (1 + e^-x)`.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Self::ONE / (Self::ONE + (-self).exp_())
    }
    /// `(e^x (x - 1) + 1) / x^2`, the `A`-derivative factor of the zoh input
    /// gain, with a series near 0 where the closed form cancels.
    #[inline(always)]
    fn phi2(self) -> Self {
        let x = self;
        // sum_k (k+1) x^k / (k+2)!, Horner from the highest power.
        let mut s = Self::c(consts::PHI2_P[0]);
        for &c in &consts::PHI2_P[1..] {
            s = x.fma(s, Self::c(c));
        }
        let (em1, e) = x.expm1_exp();
        let direct = (x * e - em1) / (x * x);
        Self::sel(x.abs_() < Self::c(0.1), s, direct)
    }
}

/// Constants shared by the scalar and the vector code (same values, same order of use).
pub mod consts {
    /// Below this `exp` saturates (at about the smallest normal f32, `e^-87.34`).
    pub const EXP_MIN: f32 = -87.336_54;
    /// Above this `exp` saturates.
    pub const EXP_MAX: f32 = 88.0;
    /// 1.5 * 2^23: adding it rounds an f32 to an integer.
    pub const MAGIC: f32 = 12_582_912.0;
    /// log2(e).
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2, high part (exact in few bits).
    pub const LN2_HI: f32 = 0.693_359_4;
    /// ln 2, low part.
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Cephes `expf` polynomial, highest power first.
    pub const EXP_P: [f32; 6] = [
        1.987_569_2e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    /// `ln(1+w) = 2 s P(s^2)`, `s = w / (2 + w)`: `P` highest power first.
    pub const LN1P_P: [f32; 8] = [
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ];
    /// `sum_k (k+1) x^k / (k+2)!` for k = 7 down to 0.
    pub const PHI2_P: [f64; 8] = [
        8.0 / 362_880.0,
        7.0 / 40_320.0,
        6.0 / 5_040.0,
        5.0 / 720.0,
        4.0 / 120.0,
        3.0 / 24.0,
        2.0 / 6.0,
        1.0 / 2.0,
    ];
}

/// `(2^k, expm1(r))` with `x = k ln2 + r`, `|r| <= ln2 / 2`.
#[inline(always)]
fn exp_parts(x: f32) -> (f32, f32) {
    use consts::*;
    let x = if x < EXP_MIN { EXP_MIN } else { x };
    let x = if x > EXP_MAX { EXP_MAX } else { x };
    let t = x.mul_add(LOG2E, MAGIC);
    let kf = t - MAGIC;
    let r = kf.mul_add(-LN2_LO, kf.mul_add(-LN2_HI, x));
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p.mul_add(r, c);
    }
    let em1r = (r * r).mul_add(p, r);
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    (scale, em1r)
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn c(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn fma(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        let (s, m) = exp_parts(self);
        s.mul_add(m, s)
    }
    #[inline(always)]
    fn expm1_exp(self) -> (Self, Self) {
        let (s, m) = exp_parts(self);
        (s.mul_add(m, s - 1.0), s.mul_add(m, s))
    }
    #[inline(always)]
    fn ln1p_unit(self) -> Self {
        // ln(1+w) = 2 atanh(s), s = w / (2 + w) <= 1/3.
        let s = self / (2.0 + self);
        let s2 = s * s;
        let mut p = consts::LN1P_P[0];
        for &c in &consts::LN1P_P[1..] {
            p = s2.mul_add(p, c);
        }
        2.0 * s * p
    }
    #[inline(always)]
    fn abs_(self) -> Self {
        f32::from_bits(self.to_bits() & 0x7fff_ffff)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn ln_1p(self) -> Self {
        f32::ln_1p(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
    fn block_dot(x: &[Self], k: usize, w: &[Self], yt: &mut [Self]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::dispatch::has_avx2() {
            // SAFETY: the CPU has the features the kernel was compiled for.
            unsafe { super::small_matmul::block_f32_avx2(x, k, w, yt) };
            return true;
        }
        let _ = (x, k, w, yt);
        false
    }
}

/// `e^x` in f32 without branches or calls, so that loops over it
/// vectorize ([`Float::exp_`] of f32). Saturates below `e^-87.34` (to the
/// smallest normal number) and above `e^88`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    x.exp_()
}

/// `erf(x)` in f32 without branches or calls, so loops over it vectorize.
/// For `|x| < 0.84375`, `x P(x^2)` with `P` a degree-6 least-squares fit
/// (error 1.3e-10 before rounding); above, Numerical Recipes' `erfcc`
/// (Chebyshev fit of `log(erfc)`, fractional error below 1.2e-7) through
/// [`exp_f32`]. Both are computed and one is selected. Max error ~1.3e-7.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let z = x.abs();
    // Small |x|.
    let z2 = x * x;
    let mut q = 8.895_09e-5_f32;
    for c in [
        -8.257_471e-4,
        5.210_418e-3,
        -2.686_292_7e-2,
        1.128_375_5e-1,
        -3.761_263_7e-1,
        std::f32::consts::FRAC_2_SQRT_PI, // the fit gives 1.12837916704, 2/sqrt(pi) to 5e-11
    ] {
        q = q * z2 + c;
    }
    let small = q * x;
    // Large |x|: 1 - erfc.
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        p = p * t + c;
    }
    let large = (1.0 - t * exp_f32(p - z * z)).copysign(x);
    // A bitwise select, so that both sides are computed and the loop stays branch-free.
    let keep_small = 0u32.wrapping_sub((z < 0.843_75) as u32);
    f32::from_bits((small.to_bits() & keep_small) | (large.to_bits() & !keep_small))
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn c(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn fma(self, a: Self, b: Self) -> Self {
        self * a + b
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn expm1_exp(self) -> (Self, Self) {
        (self.exp_m1(), self.exp())
    }
    #[inline(always)]
    fn ln1p_unit(self) -> Self {
        self.ln_1p()
    }
    #[inline(always)]
    fn abs_(self) -> Self {
        self.abs()
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn ln_1p(self) -> Self {
        f64::ln_1p(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    x.sigmoid()
}

/// `log(sigmoid(x))`, stable for large `|x|`.
#[inline]
pub fn log_sigmoid<T: Float>(x: T) -> T {
    if x >= T::default() {
        -(-x).exp_().ln_1p()
    } else {
        x - x.exp_().ln_1p()
    }
}

/// The exact (erf) GELU, `x Phi(x)`.
#[inline(always)]
pub fn gelu<T: Float>(x: T) -> T {
    T::c(0.5) * x * (T::c(1.0) + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// The exact (erf) GELU and its derivative `Phi(x) + x phi(x)`.
#[inline(always)]
pub fn gelu_and_grad<T: Float>(x: T) -> (T, T) {
    let cdf = T::c(0.5) * (T::c(1.0) + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::c(0.398_942_280_401_432_7) * (T::c(-0.5) * x * x).exp_();
    (x * cdf, cdf + x * pdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_f32_exp_and_erf_are_accurate() {
        let mut worst_exp = 0.0f64;
        let mut worst_erf = 0.0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f64 / 400_000.0;
            let want = x.exp();
            let got = exp_f32(x as f32) as f64;
            // Against exp of the f32 input, relative.
            let want32 = (x as f32 as f64).exp();
            worst_exp = worst_exp.max(((got - want32) / want32).abs());
            assert!(want.is_finite());
            let x = -6.0 + 12.0 * i as f64 / 400_000.0;
            let xf = x as f32;
            let e = (erf_f32(xf) as f64 - candle_core::cpu::erf::erf_f64(xf as f64)).abs();
            worst_erf = worst_erf.max(e);
        }
        assert!(worst_exp < 3e-7, "exp: {worst_exp:e}");
        assert!(worst_erf < 2e-7, "erf: {worst_erf:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1.2e-38 && exp_f32(1000.0) > 1e38);
        assert_eq!(erf_f32(0.0), 0.0);
    }

    #[test]
    fn f32_functions_match_f64() {
        let mut worst = [0f64; 5];
        for i in 0..=20000 {
            let x = -40.0 + 80.0 * i as f64 / 20000.0;
            let xf = x as f32;
            let xd = xf as f64;
            let rel = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1e-300)).abs();
            worst[0] = worst[0].max(rel(xf.exp_(), xd.exp()));
            worst[1] = worst[1].max(rel(xf.expm1_exp().0, xd.exp_m1()));
            worst[2] = worst[2].max(rel(xf.softplus(), xd.softplus()));
            worst[3] = worst[3].max(rel(xf.sigmoid(), xd.sigmoid()));
            let small = xf * 1e-3;
            worst[4] = worst[4].max(rel(small.expm1_exp().0, (small as f64).exp_m1()));
        }
        for (i, w) in worst.iter().enumerate() {
            assert!(*w < 5e-7, "function {i}: relative error {w}");
        }
        for x in [-3.0f64, -0.5, -0.09, -1e-4, 0.0, 1e-3, 0.05, 0.2, 2.0] {
            let want = if x == 0.0 {
                0.5
            } else {
                (x.exp() * (x - 1.0) + 1.0) / (x * x)
            };
            assert!((x.phi2() - want).abs() < 1e-9 * want.abs().max(1.0), "{x}");
            assert!(((x as f32).phi2() as f64 - want).abs() < 1e-5, "{x}");
        }
    }
}
