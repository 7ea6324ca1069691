//! A minimal explicit-SIMD layer for the scan kernels: vectors of
//! [`LANES`] elements with the arithmetic, comparisons and transcendental
//! functions the kernels need.
//!
//! Backends: [`Avx512`] (one `__m512`), [`Avx2`] (two `__m256`), both f32,
//! and [`Lanes`] (a plain `[T; LANES]` array, any [`Float`]; f64 and CPUs
//! without AVX2). Values are SSA vectors, so loop-carried accumulators stay
//! in registers (arrays indexed in loops would live on the stack).
//!
//! The f32 backends compute exactly the operations of [`Float`]'s f32
//! methods (same polynomials, same fused multiply-adds, same order), so a
//! vectorized and a scalar evaluation agree to the bit.
//!
//! Soundness: the intrinsic backends may only run on CPUs with their
//! features. Their types are private to this crate, so code outside it
//! only reaches them through [`dispatch`], which hands a backend out after
//! checking the CPU (and [`Simd::enter`] checks again).

use super::exec::Kernel;
use super::float::Float;

/// Elements per vector (also the channel-group width of the kernels).
pub const LANES: usize = 16;

/// A vector backend.
pub trait Simd: Copy + Send + Sync + 'static {
    /// Element type.
    type E: Float;
    /// Vector of `LANES` elements.
    type V: Copy;
    /// Runs task `task` of `k` compiled for this backend's features.
    fn enter<K: Kernel>(k: &K, task: usize);
    /// All lanes `x`.
    fn splat(x: Self::E) -> Self::V;
    /// The first `LANES` elements of `s`.
    fn load(s: &[Self::E]) -> Self::V;
    /// Writes the first `LANES` elements of `s`.
    fn store(v: Self::V, s: &mut [Self::E]);
    /// `a + b`.
    fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the element type's `fma` is.
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Per lane: `if a > b { x } else { y }`.
    fn sel_gt(a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V;
    /// Per lane: `if a < b { x } else { y }`.
    fn sel_lt(a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V;
    /// `if a < b { b } else { a }` (a clamp from below).
    fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `if a > b { b } else { a }` (a clamp from above).
    fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `|a|`.
    fn abs(a: Self::V) -> Self::V;
    /// Sum of the lanes.
    fn hsum(a: Self::V) -> Self::E;
    /// `e^x`.
    fn exp(x: Self::V) -> Self::V;
    /// `(e^x - 1, e^x)`.
    fn expm1_exp(x: Self::V) -> (Self::V, Self::V);
    /// `ln(1 + w)`, `w` in `[0, 1]`.
    fn ln1p_unit(w: Self::V) -> Self::V;
    /// [`Float::phi2`].
    fn phi2(x: Self::V) -> Self::V;

    /// All lanes 0.
    #[inline(always)]
    fn zero() -> Self::V {
        Self::splat(Self::E::ZERO)
    }
    /// A constant in all lanes.
    #[inline(always)]
    fn c(x: f64) -> Self::V {
        Self::splat(Self::E::c(x))
    }
    /// `-a`.
    #[inline(always)]
    fn neg(a: Self::V) -> Self::V {
        Self::sub(Self::zero(), a)
    }
    /// `1 / (1 + e^-x)`.
    #[inline(always)]
    fn sigmoid(x: Self::V) -> Self::V {
        let one = Self::splat(Self::E::ONE);
        Self::div(one, Self::add(one, Self::exp(Self::neg(x))))
    }
    /// PyTorch's softplus (threshold 20), as [`Float::softplus`].
    #[inline(always)]
    fn softplus(x: Self::V) -> Self::V {
        let w = Self::exp(Self::neg(Self::abs(x)));
        let z = Self::zero();
        let relu = Self::sel_gt(x, z, x, z);
        let v = Self::add(relu, Self::ln1p_unit(w));
        Self::sel_gt(x, Self::c(20.0), x, v)
    }
    /// The derivative of softplus, as [`Float::softplus_grad`].
    #[inline(always)]
    fn softplus_grad(x: Self::V) -> Self::V {
        Self::sel_gt(
            x,
            Self::c(20.0),
            Self::splat(Self::E::ONE),
            Self::sigmoid(x),
        )
    }
    /// `w` elements of `s`, the other lanes zero.
    #[inline(always)]
    fn load_part(s: &[Self::E], w: usize) -> Self::V {
        if w >= LANES {
            Self::load(s)
        } else {
            let mut tmp = [Self::E::ZERO; LANES];
            tmp[..w].copy_from_slice(&s[..w]);
            Self::load(&tmp)
        }
    }
    /// Writes `w` lanes to `s`.
    #[inline(always)]
    fn store_part(v: Self::V, s: &mut [Self::E], w: usize) {
        if w >= LANES {
            Self::store(v, s)
        } else {
            let mut tmp = [Self::E::ZERO; LANES];
            Self::store(v, &mut tmp);
            s[..w].copy_from_slice(&tmp[..w]);
        }
    }
}

/// Code generic over a backend, run by [`dispatch`].
pub trait SimdFn<T: Float> {
    /// The result.
    type Out;
    /// Runs with backend `S`.
    fn call<S: Simd<E = T>>(self) -> Self::Out;
}

/// Element types that pick their best backend.
pub trait Dispatch: Float {
    /// Calls `f` with the fastest backend this CPU supports for `Self`.
    fn dispatch<F: SimdFn<Self>>(f: F) -> F::Out;
}

impl Dispatch for f64 {
    fn dispatch<F: SimdFn<Self>>(f: F) -> F::Out {
        f.call::<Lanes<f64>>()
    }
}

impl Dispatch for f32 {
    fn dispatch<F: SimdFn<Self>>(f: F) -> F::Out {
        #[cfg(target_arch = "x86_64")]
        {
            if super::dispatch::has_avx512() {
                return f.call::<Avx512>();
            }
            if super::dispatch::has_avx2() {
                return f.call::<Avx2>();
            }
        }
        f.call::<Lanes<f32>>()
    }
}

/// Calls `f` with the best backend for `T`.
pub fn dispatch<T: Dispatch, F: SimdFn<T>>(f: F) -> F::Out {
    T::dispatch(f)
}

/// The portable backend: arrays, one lane at a time (auto-vectorized where LLVM can).
#[derive(Debug, Clone, Copy)]
pub struct Lanes<T>(std::marker::PhantomData<T>);

macro_rules! lanewise {
    ($a:expr, |$x:ident| $body:expr) => {{
        let a = $a;
        let mut o = a;
        for (o, &$x) in o.iter_mut().zip(a.iter()) {
            *o = $body;
        }
        o
    }};
}

impl<T: Float + 'static> Simd for Lanes<T> {
    type E = T;
    type V = [T; LANES];
    #[inline(always)]
    fn enter<K: Kernel>(k: &K, task: usize) {
        super::exec::run_best(k, task)
    }
    #[inline(always)]
    fn splat(x: T) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    fn load(s: &[T]) -> Self::V {
        let mut v = [T::ZERO; LANES];
        v.copy_from_slice(&s[..LANES]);
        v
    }
    #[inline(always)]
    fn store(v: Self::V, s: &mut [T]) {
        s[..LANES].copy_from_slice(&v);
    }
    #[inline(always)]
    fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn div(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].fma(b[i], c[i]))
    }
    #[inline(always)]
    fn sel_gt(a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V {
        std::array::from_fn(|i| T::sel(a[i] > b[i], x[i], y[i]))
    }
    #[inline(always)]
    fn sel_lt(a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V {
        std::array::from_fn(|i| T::sel(a[i] < b[i], x[i], y[i]))
    }
    #[inline(always)]
    fn max(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| T::sel(a[i] < b[i], b[i], a[i]))
    }
    #[inline(always)]
    fn min(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| T::sel(a[i] > b[i], b[i], a[i]))
    }
    #[inline(always)]
    fn abs(a: Self::V) -> Self::V {
        lanewise!(a, |x| x.abs_())
    }
    #[inline(always)]
    fn hsum(a: Self::V) -> T {
        a.iter().fold(T::ZERO, |s, &x| s + x)
    }
    #[inline(always)]
    fn exp(x: Self::V) -> Self::V {
        lanewise!(x, |v| v.exp_())
    }
    #[inline(always)]
    fn expm1_exp(x: Self::V) -> (Self::V, Self::V) {
        let mut a = x;
        let mut b = x;
        for i in 0..LANES {
            (a[i], b[i]) = x[i].expm1_exp();
        }
        (a, b)
    }
    #[inline(always)]
    fn ln1p_unit(w: Self::V) -> Self::V {
        lanewise!(w, |v| v.ln1p_unit())
    }
    #[inline(always)]
    fn phi2(x: Self::V) -> Self::V {
        lanewise!(x, |v| v.phi2())
    }
    #[inline(always)]
    fn softplus(x: Self::V) -> Self::V {
        lanewise!(x, |v| v.softplus())
    }
    #[inline(always)]
    fn softplus_grad(x: Self::V) -> Self::V {
        lanewise!(x, |v| v.softplus_grad())
    }
    #[inline(always)]
    fn sigmoid(x: Self::V) -> Self::V {
        lanewise!(x, |v| v.sigmoid())
    }
}

/// f32 `exp` pieces on any f32 backend, as `float::exp_parts`: `(2^k, expm1(r))`.
#[inline(always)]
fn exp_parts<S: Simd<E = f32>>(x: S::V, pow2i: impl Fn(S::V) -> S::V) -> (S::V, S::V) {
    use super::float::consts::*;
    let x = S::min(S::max(x, S::splat(EXP_MIN)), S::splat(EXP_MAX));
    let magic = S::splat(MAGIC);
    let t = S::fma(x, S::splat(LOG2E), magic);
    let kf = S::sub(t, magic);
    let r = S::fma(kf, S::splat(-LN2_LO), S::fma(kf, S::splat(-LN2_HI), x));
    let mut p = S::splat(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = S::fma(p, r, S::splat(c));
    }
    let em1r = S::fma(S::mul(r, r), p, r);
    (pow2i(kf), em1r)
}

#[inline(always)]
fn ln1p_unit_f32<S: Simd<E = f32>>(w: S::V) -> S::V {
    use super::float::consts::LN1P_P;
    let s = S::div(w, S::add(S::splat(2.0), w));
    let s2 = S::mul(s, s);
    let mut p = S::splat(LN1P_P[0]);
    for &c in &LN1P_P[1..] {
        p = S::fma(s2, p, S::splat(c));
    }
    S::mul(S::mul(S::splat(2.0), s), p)
}

#[inline(always)]
fn phi2_f32<S: Simd<E = f32>>(x: S::V) -> S::V {
    use super::float::consts::PHI2_P;
    let mut s = S::c(PHI2_P[0]);
    for &c in &PHI2_P[1..] {
        s = S::fma(x, s, S::c(c));
    }
    let (em1, e) = S::expm1_exp(x);
    let direct = S::div(S::sub(S::mul(x, e), em1), S::mul(x, x));
    S::sel_lt(S::abs(x), S::splat(0.1), s, direct)
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
pub(crate) mod tests;
