//! The x86-64 backends: AVX-512F (one `__m512`) and AVX2 + FMA (two `__m256`), f32.

use super::*;
use std::arch::x86_64::*;

/// AVX-512F, one `__m512` of f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512;

// SAFETY (every `unsafe` block below): these functions only run inside
// `Avx512::enter`, i.e. on a CPU with AVX-512F/VL/DQ, AVX2 and FMA
// (checked by `dispatch`); loads and stores go through slices of at
// least LANES elements (slicing panics otherwise).
impl Simd for Avx512 {
    type E = f32;
    type V = __m512;
    #[inline(always)]
    fn enter<K: Kernel>(k: &K, task: usize) {
        crate::cpu::exec::run_on_avx512(k, task)
    }
    #[inline(always)]
    fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(s: &[f32]) -> __m512 {
        let s = &s[..LANES];
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(v: __m512, s: &mut [f32]) {
        let s = &mut s[..LANES];
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn sel_gt(a: __m512, b: __m512, x: __m512, y: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b), y, x) }
    }
    #[inline(always)]
    fn sel_lt(a: __m512, b: __m512, x: __m512, y: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b), y, x) }
    }
    #[inline(always)]
    fn max(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(a: __m512) -> __m512 {
        unsafe {
            _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(a),
                _mm512_set1_epi32(0x7fff_ffff),
            ))
        }
    }
    #[inline(always)]
    fn hsum(a: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(a) }
    }
    #[inline(always)]
    fn exp(x: __m512) -> __m512 {
        let (s, m) = exp_parts::<Self>(x, pow2i_512);
        Self::fma(s, m, s)
    }
    #[inline(always)]
    fn expm1_exp(x: __m512) -> (__m512, __m512) {
        let (s, m) = exp_parts::<Self>(x, pow2i_512);
        (
            Self::fma(s, m, Self::sub(s, Self::splat(1.0))),
            Self::fma(s, m, s),
        )
    }
    #[inline(always)]
    fn ln1p_unit(w: __m512) -> __m512 {
        ln1p_unit_f32::<Self>(w)
    }
    #[inline(always)]
    fn phi2(x: __m512) -> __m512 {
        phi2_f32::<Self>(x)
    }
}

/// `2^kf` for integral `kf` in `[-126, 127]`, exactly.
#[inline(always)]
fn pow2i_512(kf: __m512) -> __m512 {
    unsafe { _mm512_scalef_ps(_mm512_set1_ps(1.0), kf) }
}

/// AVX2 + FMA, two `__m256` of f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2;

type P = [__m256; 2];

#[inline(always)]
fn map2(a: P, b: P, f: impl Fn(__m256, __m256) -> __m256) -> P {
    [f(a[0], b[0]), f(a[1], b[1])]
}

// SAFETY (every `unsafe` block below): only run inside `Avx2::enter`,
// on a CPU with AVX2 and FMA (checked by `dispatch`); loads and stores
// go through slices of at least LANES elements.
impl Simd for Avx2 {
    type E = f32;
    type V = P;
    #[inline(always)]
    fn enter<K: Kernel>(k: &K, task: usize) {
        crate::cpu::exec::run_on_avx2(k, task)
    }
    #[inline(always)]
    fn splat(x: f32) -> P {
        unsafe { [_mm256_set1_ps(x); 2] }
    }
    #[inline(always)]
    fn load(s: &[f32]) -> P {
        let s = &s[..LANES];
        unsafe {
            [
                _mm256_loadu_ps(s.as_ptr()),
                _mm256_loadu_ps(s.as_ptr().add(8)),
            ]
        }
    }
    #[inline(always)]
    fn store(v: P, s: &mut [f32]) {
        let s = &mut s[..LANES];
        unsafe {
            _mm256_storeu_ps(s.as_mut_ptr(), v[0]);
            _mm256_storeu_ps(s.as_mut_ptr().add(8), v[1]);
        }
    }
    #[inline(always)]
    fn add(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_add_ps(x, y) })
    }
    #[inline(always)]
    fn sub(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_sub_ps(x, y) })
    }
    #[inline(always)]
    fn mul(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_mul_ps(x, y) })
    }
    #[inline(always)]
    fn div(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_div_ps(x, y) })
    }
    #[inline(always)]
    fn fma(a: P, b: P, c: P) -> P {
        unsafe {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    fn sel_gt(a: P, b: P, x: P, y: P) -> P {
        unsafe {
            let m0 = _mm256_cmp_ps::<_CMP_GT_OQ>(a[0], b[0]);
            let m1 = _mm256_cmp_ps::<_CMP_GT_OQ>(a[1], b[1]);
            [
                _mm256_blendv_ps(y[0], x[0], m0),
                _mm256_blendv_ps(y[1], x[1], m1),
            ]
        }
    }
    #[inline(always)]
    fn sel_lt(a: P, b: P, x: P, y: P) -> P {
        unsafe {
            let m0 = _mm256_cmp_ps::<_CMP_LT_OQ>(a[0], b[0]);
            let m1 = _mm256_cmp_ps::<_CMP_LT_OQ>(a[1], b[1]);
            [
                _mm256_blendv_ps(y[0], x[0], m0),
                _mm256_blendv_ps(y[1], x[1], m1),
            ]
        }
    }
    #[inline(always)]
    fn max(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_max_ps(x, y) })
    }
    #[inline(always)]
    fn min(a: P, b: P) -> P {
        map2(a, b, |x, y| unsafe { _mm256_min_ps(x, y) })
    }
    #[inline(always)]
    fn abs(a: P) -> P {
        unsafe {
            let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            [_mm256_and_ps(a[0], m), _mm256_and_ps(a[1], m)]
        }
    }
    #[inline(always)]
    fn hsum(a: P) -> f32 {
        unsafe {
            let s = _mm256_add_ps(a[0], a[1]);
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps::<0b01>(h, h));
            _mm_cvtss_f32(h)
        }
    }
    #[inline(always)]
    fn exp(x: P) -> P {
        let (s, m) = exp_parts::<Self>(x, pow2i_256);
        Self::fma(s, m, s)
    }
    #[inline(always)]
    fn expm1_exp(x: P) -> (P, P) {
        let (s, m) = exp_parts::<Self>(x, pow2i_256);
        (
            Self::fma(s, m, Self::sub(s, Self::splat(1.0))),
            Self::fma(s, m, s),
        )
    }
    #[inline(always)]
    fn ln1p_unit(w: P) -> P {
        ln1p_unit_f32::<Self>(w)
    }
    #[inline(always)]
    fn phi2(x: P) -> P {
        phi2_f32::<Self>(x)
    }
}

#[inline(always)]
fn pow2i_256(kf: P) -> P {
    unsafe {
        let one = |v: __m256| {
            let k = _mm256_cvtps_epi32(v);
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                k,
                _mm256_set1_epi32(127),
            )))
        };
        [one(kf[0]), one(kf[1])]
    }
}
