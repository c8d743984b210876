//! The Page-Hinkley change detector, fed hour by hour from the store's rollups.

use serde::{Deserialize, Serialize};

use crate::config::PageHinkleyConfig;

/// Persisted detector state. It consumes `1 − quality` so that a quality drop is an upward
/// change, one hourly bucket at a time: for a bucket of `n` records with mean `x`, the
/// running mean moves to include them and the cumulative sum grows by `n·(x − mean − δ)`,
/// which equals the sum of the per-record terms for that mean.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    /// Records consumed.
    pub n: u64,
    /// Running mean of `1 − quality`.
    pub mean: f64,
    /// Cumulative deviation.
    pub cumsum: f64,
    /// Minimum of the cumulative deviation so far.
    pub min_cumsum: f64,
}

impl PageHinkley {
    /// Consumes `n` records whose mean quality is `mean_quality`.
    pub fn update(&mut self, config: &PageHinkleyConfig, n: u64, mean_quality: f64) {
        if n == 0 {
            return;
        }
        let x = 1.0 - mean_quality;
        let total = self.n + n;
        self.mean += (x - self.mean) * n as f64 / total as f64;
        self.n = total;
        let decay = config.alpha.powf(n as f64);
        self.cumsum = decay * self.cumsum + n as f64 * (x - self.mean - config.delta);
        self.min_cumsum = self.min_cumsum.min(self.cumsum);
    }

    /// The test statistic: how far the cumulative deviation rose above its minimum.
    pub fn statistic(&self) -> f64 {
        self.cumsum - self.min_cumsum
    }

    /// Whether a drop has been detected.
    pub fn alarm(&self, config: &PageHinkleyConfig) -> bool {
        self.n >= config.min_instances && self.statistic() > config.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for noisy hourly means.
    fn noise(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % 10_000) as f64 / 10_000.0 - 0.5
    }

    /// Feeds `hours` buckets of `per_hour` records with true mean `quality` (hourly means
    /// carry the sampling noise of a 0.15 spread) and returns the hour of the first alarm.
    fn run(
        ph: &mut PageHinkley,
        config: &PageHinkleyConfig,
        hours: u64,
        per_hour: u64,
        quality: f64,
        seed: &mut u64,
    ) -> Option<u64> {
        let spread = 0.15 / (per_hour as f64).sqrt() * 3.4; // uniform(-.5,.5)·3.4 ≈ sd 1
        for h in 0..hours {
            ph.update(
                config,
                per_hour,
                (quality + noise(seed) * spread).clamp(0.0, 1.0),
            );
            if ph.alarm(config) {
                return Some(h);
            }
        }
        None
    }

    #[test]
    fn stable_quality_raises_no_alarm_and_a_drop_is_caught() {
        let config = PageHinkleyConfig::default();
        for (seed, per_hour) in [(1u64, 20u64), (2, 100), (3, 500)] {
            let mut state = seed * 7919 + 1;
            let mut ph = PageHinkley::default();
            assert_eq!(
                run(&mut ph, &config, 24 * 30, per_hour, 0.8, &mut state),
                None,
                "false alarm at {per_hour}/h"
            );
            let hours = run(&mut ph, &config, 48, per_hour, 0.7, &mut state)
                .expect("a 0.1 drop must be detected");
            // About 110 records of a 0.1 drop (less delta) are needed; allow some slack.
            assert!(
                hours * per_hour <= 250,
                "detected after {hours} h at {per_hour}/h"
            );
        }
    }

    #[test]
    fn a_rise_in_quality_is_not_an_alarm() {
        let config = PageHinkleyConfig::default();
        let mut state = 42;
        let mut ph = PageHinkley::default();
        assert_eq!(run(&mut ph, &config, 24 * 7, 100, 0.6, &mut state), None);
        assert_eq!(run(&mut ph, &config, 24 * 7, 100, 0.9, &mut state), None);
    }
}
