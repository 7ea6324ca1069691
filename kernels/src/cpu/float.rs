//! The float trait of the CPU kernels, with branch-free f32 `exp`/`erf` so
//! that loops over them vectorize, and the activations built on them.

/// f32 / f64 with the transcendental functions the kernels need.
pub trait Float: crate::Real + std::ops::Div<Output = Self> + PartialOrd {
    /// `e^x`.
    fn exp(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// `ln(1 + x)`.
    fn ln_1p(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// Converts a constant.
    fn of(x: f64) -> Self;
    /// `max(x, 0)`.
    fn max0(self) -> Self;
    /// A fast kernel for `yt[o, r] = x[r] . w[o]` (rows of length `k`), if
    /// this type and CPU have one: returns whether it ran.
    fn block_dot(_x: &[Self], _k: usize, _w: &[Self], _yt: &mut [Self]) -> bool {
        false
    }
}

impl Float for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
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
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn max0(self) -> Self {
        self.max(0.0)
    }
    fn block_dot(x: &[Self], k: usize, w: &[Self], yt: &mut [Self]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the kernel was compiled for.
            unsafe { super::small_matmul::block_f32_avx2(x, k, w, yt) };
            return true;
        }
        let _ = (x, k, w, yt);
        false
    }
}

/// `e^x` in f32 without branches or calls, so loops over it vectorize:
/// Cephes' `expf` (range reduction by `ln 2`, degree-6 polynomial, ~1 ulp)
/// with the rounding done by the `1.5 * 2^23` trick. Saturates below
/// `e^-87.3` (to the smallest normal number) and above `e^88`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.336_54, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    // x - n ln 2, with ln 2 split in two for precision.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    y * f32::from_bits(((ni + 127) as u32) << 23)
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
    fn exp(self) -> Self {
        f64::exp(self)
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
    fn of(x: f64) -> Self {
        x
    }
    fn max0(self) -> Self {
        self.max(0.0)
    }
}

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    T::of(1.0) / (T::of(1.0) + (-x).exp())
}

/// `log(sigmoid(x))`, stable for large `|x|`.
#[inline]
pub fn log_sigmoid<T: Float>(x: T) -> T {
    if x >= T::default() {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// The exact (erf) GELU, `x Phi(x)`.
#[inline(always)]
pub fn gelu<T: Float>(x: T) -> T {
    T::of(0.5) * x * (T::of(1.0) + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// The exact (erf) GELU and its derivative `Phi(x) + x phi(x)`.
#[inline(always)]
pub fn gelu_and_grad<T: Float>(x: T) -> (T, T) {
    let cdf = T::of(0.5) * (T::of(1.0) + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::of(0.398_942_280_401_432_7) * (T::of(-0.5) * x * x).exp();
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
}
