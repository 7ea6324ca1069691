//! Seeded uniform draws as plain `f64` vectors, for tests that build their
//! inputs by hand (a 64-bit linear congruential generator: the same seed gives
//! the same numbers on every platform).

/// `n` values uniform in `[lo, hi)`, reproducible from `seed`.
///
/// ```
/// let a = lrnnx_testing::uniform_vec(5, 3, -2.0, 2.0);
/// assert_eq!(a, lrnnx_testing::uniform_vec(5, 3, -2.0, 2.0));
/// assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
/// ```
pub fn uniform_vec(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}
