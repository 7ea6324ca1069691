//! The benchmark timer.

use std::time::Instant;

use candle_core::Device;

/// Seconds per call of `f`: `reps` calls queued back to back, one device
/// synchronization at the end (so that launch and sync latency do not count
/// per call), repeated five times, median taken. Two warm-up calls first.
pub fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let reps = reps.max(1);
    let mut ts = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        dev.synchronize()?;
        ts.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}
