//! Which vector instruction set the CPU kernels use: the one run-time choice
//! every kernel of the workspace follows.
//!
//! The choice is the widest of AVX-512 (F, VL, DQ, with AVX2 + FMA), AVX2 +
//! FMA, and the portable baseline that the CPU supports, made once per
//! process. Two environment variables narrow it:
//!
//! - `LRNNX_NO_SIMD` (any value): the portable baseline only;
//! - `LRNNX_NO_AVX512` (any value): AVX2 + FMA at most.
//!
//! [`crate::with_simd`] builds a function from a generic kernel so that it
//! runs compiled for the chosen level; [`crate::cpu::exec`] and
//! [`crate::cpu::simd`] do the same for task-based kernels and the explicit
//! vector backends.

use std::sync::OnceLock;

/// A vector instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable code, no target features beyond the build's.
    Baseline,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 F/VL/DQ with AVX2 + FMA (x86-64).
    Avx512,
}

/// What the CPU supports, ignoring the environment switches.
fn detected() -> SimdLevel {
    static L: OnceLock<SimdLevel> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512vl") && has!("avx512dq") {
                    return SimdLevel::Avx512;
                }
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    })
}

/// Whether the CPU supports `level`, whatever the environment says. This
/// is what makes running code compiled for `level` sound; tests use it to
/// run every level the machine has.
pub fn cpu_supports(level: SimdLevel) -> bool {
    level <= detected()
}

/// The level the kernels run at: the CPU's widest, narrowed by
/// `LRNNX_NO_SIMD` / `LRNNX_NO_AVX512` (read once).
pub fn simd_level() -> SimdLevel {
    static L: OnceLock<SimdLevel> = OnceLock::new();
    *L.get_or_init(|| {
        let cap = if std::env::var_os("LRNNX_NO_SIMD").is_some() {
            SimdLevel::Baseline
        } else if std::env::var_os("LRNNX_NO_AVX512").is_some() {
            SimdLevel::Avx2
        } else {
            SimdLevel::Avx512
        };
        detected().min(cap)
    })
}

/// Whether the AVX-512 kernels run (see [`simd_level`]).
pub fn has_avx512() -> bool {
    simd_level() >= SimdLevel::Avx512
}

/// Whether the AVX2 + FMA kernels run (see [`simd_level`]).
pub fn has_avx2() -> bool {
    simd_level() >= SimdLevel::Avx2
}

/// Defines `$name`, which runs `$imp` compiled for the [`simd_level`] in
/// force (AVX-512 or AVX2 + FMA, so that its loops vectorize wide), or the
/// baseline build. With `at $at` it also defines `$at`, which takes the
/// level as its first argument (for tests that run every level the CPU
/// has; it panics on a level the CPU lacks).
#[macro_export]
macro_rules! with_simd {
    ($(#[$m:meta])* fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) = $imp:ident;) => {
        $(#[$m])*
        fn $name<T: Float>($($arg: $ty),*) {
            $crate::__simd_run!($crate::cpu::simd_level(), $imp, ($($arg: $ty),*))
        }
    };
    ($(#[$m:meta])* fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) = $imp:ident; at $at:ident;) => {
        $crate::with_simd! { $(#[$m])* fn $name<T: Float>($($arg: $ty),*) = $imp; }

        /// `$name` compiled for `level`; panics if the CPU lacks it.
        #[allow(dead_code, clippy::too_many_arguments)]
        fn $at<T: Float>(level: $crate::cpu::SimdLevel, $($arg: $ty),*) {
            $crate::__simd_run!(level, $imp, ($($arg: $ty),*))
        }
    };
}

/// The body of a [`crate::with_simd`] function: runs `$imp` compiled for `$level`.
#[doc(hidden)]
#[macro_export]
macro_rules! __simd_run {
    ($level:expr, $imp:ident, ($($arg:ident: $ty:ty),*)) => {{
        let level: $crate::cpu::SimdLevel = $level;
        assert!(
            $crate::cpu::cpu_supports(level),
            "{level:?} kernel on a CPU without it"
        );
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512<T: Float>($($arg: $ty),*) {
                $imp::<T>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T: Float>($($arg: $ty),*) {
                $imp::<T>($($arg),*)
            }
            match level {
                // SAFETY: `cpu_supports` checked that the CPU has the features.
                $crate::cpu::SimdLevel::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                // SAFETY: as above.
                $crate::cpu::SimdLevel::Avx2 => return unsafe { avx2::<T>($($arg),*) },
                $crate::cpu::SimdLevel::Baseline => {}
            }
        }
        $imp::<T>($($arg),*)
    }};
}
