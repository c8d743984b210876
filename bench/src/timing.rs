//! Repeated timing of a short operation: median and 95th percentile after a warm-up.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

/// The distribution of repeated timings, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Samples {
    /// Number of timed repetitions.
    pub(crate) n: usize,
    /// Median, ms.
    pub(crate) median_ms: f64,
    /// 95th percentile, ms.
    pub(crate) p95_ms: f64,
    /// Fastest, ms.
    pub(crate) min_ms: f64,
}

/// Runs `op` `warmup` times untimed, then `reps` times timed.
pub(crate) fn repeat(
    warmup: usize,
    reps: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Samples> {
    for _ in 0..warmup {
        op()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        op()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(Samples {
        n: times.len(),
        median_ms: at(0.5),
        p95_ms: at(0.95),
        min_ms: times[0],
    })
}

/// The median of `values` (the upper one of an even count); 0 when there are none.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
