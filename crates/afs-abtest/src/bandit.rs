//! Thompson-sampling traffic weights: the challenger's share becomes the posterior
//! probability that it is the better arm on the primary metric, floored for both arms.

use afs_store::{Experiment, UsageStats};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::config::{AbTestConfig, BanditConfig};
use crate::judge::PeriodStats;
use crate::maths::{normal_cdf, sample_beta};
use crate::metric::{Metric, Summary};

/// A new challenger weight and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditUpdate {
    /// The challenger's new share of traffic.
    pub weight: f64,
    /// Why, in words.
    pub reason: String,
}

/// The posterior probability that the challenger is better on `metric`: the share of
/// Thompson draws it wins. Rates draw from Beta(1 + k, 1 + n − k); means have Normal(mean,
/// s²/n) posteriors, for which the share has the closed form Φ((m_B − m_A)/sqrt(v_A + v_B))
/// (what infinitely many draws would give).
fn probability_challenger_best(
    metric: Metric,
    a: &Summary,
    b: &Summary,
    draws: u32,
    rng: &mut StdRng,
) -> f64 {
    if !metric.is_feedback() {
        let spread = (a.variance / a.n as f64 + b.variance / b.n as f64).sqrt();
        let gap = metric.orientation() * (b.mean - a.mean);
        return if spread > 0.0 {
            normal_cdf(gap / spread)
        } else {
            f64::from(u8::from(gap > 0.0))
        };
    }
    let draw = |s: &Summary, rng: &mut StdRng| -> f64 {
        let k = (s.mean * s.n as f64).round();
        sample_beta(rng, 1.0 + k, 1.0 + s.n as f64 - k)
    };
    let mut wins = 0u32;
    for _ in 0..draws {
        let (xa, xb) = (draw(a, rng), draw(b, rng));
        if metric.orientation() * (xb - xa) > 0.0 {
            wins += 1;
        }
    }
    f64::from(wins) / f64::from(draws)
}

/// Applies the per-arm floor `f` (w ← f + (1 − 2f)·w) and the champion floor.
pub(crate) fn floored_weight(p_best: f64, bandit: &BanditConfig) -> f64 {
    let f = bandit.arm_floor;
    (f + (1.0 - 2.0 * f) * p_best).min(1.0 - bandit.champion_floor)
}

/// Units each arm needs before the bandit moves traffic (GrowthBook's rule): reweighting on
/// a handful of users would starve the arm that looks worse before it is judged.
pub(crate) const BANDIT_MIN_UNITS: u64 = 100;

/// The reweighting due at `now`, if any: bandits configured, the check interval elapsed
/// since the last weight change, both arms past the sample minimum on the primary metric
/// and past [`BANDIT_MIN_UNITS`] units (`units`: champion, challenger), and a change of at
/// least half a percentage point. Deterministic for a given experiment,
/// period count and time (the draws are seeded from them).
pub fn bandit_update(
    config: &AbTestConfig,
    experiment: &Experiment,
    periods: &[PeriodStats],
    units: (u64, u64),
    now: DateTime<Utc>,
) -> Option<BanditUpdate> {
    let bandit = config.bandit.as_ref()?;
    if units.0 < BANDIT_MIN_UNITS || units.1 < BANDIT_MIN_UNITS {
        return None;
    }
    let since_change =
        (now - experiment.weight_updated_at()).num_milliseconds() as f64 / 3_600_000.0;
    if since_change < config.check_interval_hours {
        return None;
    }
    let metric = config.primary_metric.metric();
    let (mut pooled_a, mut pooled_b) = (UsageStats::default(), UsageStats::default());
    for p in periods {
        pooled_a.add(&p.champion);
        pooled_b.add(&p.challenger);
    }
    let min_n = if metric.is_feedback() {
        config.min_feedback_per_version
    } else {
        config.min_samples_per_version
    };
    let enough =
        |s: &UsageStats| s.total >= config.min_samples_per_version && metric.count(s) >= min_n;
    if !enough(&pooled_a) || !enough(&pooled_b) {
        return None;
    }
    let (a, b) = (metric.summarize(&pooled_a)?, metric.summarize(&pooled_b)?);
    let seed = experiment.seed
        ^ (periods.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (now.timestamp() as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut rng = StdRng::seed_from_u64(seed);
    let p_best = probability_challenger_best(metric, &a, &b, bandit.draws, &mut rng);
    let weight = floored_weight(p_best, bandit);
    if (weight - experiment.challenger_weight).abs() < 0.005 {
        return None;
    }
    Some(BanditUpdate {
        weight,
        reason: format!(
            "thompson sampling on {}: P(challenger better) = {p_best:.3}, weight {:.3} -> {weight:.3} \
             (arm floor {}, champion floor {})",
            metric.key(),
            experiment.challenger_weight,
            bandit.arm_floor,
            bandit.champion_floor
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_bound_the_weight() {
        let bandit = BanditConfig::default();
        assert!((floored_weight(0.0, &bandit) - 0.01).abs() < 1e-12);
        assert!((floored_weight(0.3, &bandit) - (0.01 + 0.98 * 0.3)).abs() < 1e-12);
        assert_eq!(
            floored_weight(1.0, &bandit),
            0.5,
            "champion keeps its floor"
        );
    }

    #[test]
    fn thompson_prefers_the_better_arm() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = Summary {
            n: 1000,
            mean: 0.70,
            variance: 0.21,
        };
        let b = Summary {
            n: 1000,
            mean: 0.76,
            variance: 0.18,
        };
        let p = probability_challenger_best(Metric::PositiveRate, &a, &b, 4000, &mut rng);
        assert!(p > 0.99, "{p}");
        let p = probability_challenger_best(Metric::PositiveRate, &a, &a, 4000, &mut rng);
        assert!((p - 0.5).abs() < 0.05, "{p}");
        let fast = Summary {
            n: 1000,
            mean: 700.0,
            variance: 10_000.0,
        };
        let slow = Summary {
            n: 1000,
            mean: 800.0,
            variance: 10_000.0,
        };
        assert!(probability_challenger_best(Metric::Latency, &slow, &fast, 1000, &mut rng) > 0.99);
    }
}
