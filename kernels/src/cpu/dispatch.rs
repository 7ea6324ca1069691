//! Run-time selection of AVX2 + FMA builds of generic kernels.

/// Defines `$name`, which runs `$imp` compiled for AVX2 + FMA when the CPU
/// has them (8-wide vectors for the elementwise loops) and the baseline
/// build otherwise.
#[macro_export]
macro_rules! with_avx2 {
    ($(#[$m:meta])* fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) = $imp:ident;) => {
        $(#[$m])*
        fn $name<T: Float>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Float>($($arg: $ty),*) {
                    $imp::<T>($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2::<T>($($arg),*) };
                }
            }
            $imp::<T>($($arg),*)
        }
    };
}
