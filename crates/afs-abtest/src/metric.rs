//! The metrics an experiment compares, read from the store's per-model sufficient statistics.

use afs_store::UsageStats;

/// A per-arm metric derived from [`UsageStats`].
///
/// Written (serde) by its report key, [`Metric::key`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean quality score over scored requests (higher is better).
    Quality,
    /// Thumbs-up share among requests with feedback (higher is better). A request without
    /// feedback is not a negative: it is not counted.
    PositiveRate,
    /// Thumbs-down share among requests with feedback (lower is better).
    NegativeRate,
    /// Mean latency in milliseconds over requests with a latency (lower is better).
    #[serde(rename = "latency_ms")]
    Latency,
}

/// A metric's per-arm sample: its size, mean and the variance of one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub(crate) n: u64,
    pub(crate) mean: f64,
    pub(crate) variance: f64,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 4] = [
        Metric::Quality,
        Metric::PositiveRate,
        Metric::NegativeRate,
        Metric::Latency,
    ];

    /// The key used in reports, JSON and the stored sequential state: `quality`,
    /// `positive_rate`, `negative_rate`, `latency_ms`.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Quality => "quality",
            Metric::PositiveRate => "positive_rate",
            Metric::NegativeRate => "negative_rate",
            Metric::Latency => "latency_ms",
        }
    }

    /// Parses a key written by [`key`](Self::key).
    pub fn parse(key: &str) -> Option<Self> {
        Metric::ALL.into_iter().find(|m| m.key() == key)
    }

    /// Whether a larger value is an improvement.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Quality | Metric::PositiveRate)
    }

    /// Whether the metric is measured on feedback events.
    pub fn is_feedback(self) -> bool {
        matches!(self, Metric::PositiveRate | Metric::NegativeRate)
    }

    /// +1 when higher is better, −1 otherwise: multiplies a difference into an improvement.
    pub(crate) fn orientation(self) -> f64 {
        if self.higher_is_better() {
            1.0
        } else {
            -1.0
        }
    }

    /// The metric's sample in `stats`; `None` when it has no observation.
    ///
    /// Proportions use `p(1 − p)` as the variance of one observation, with `p` shrunk
    /// towards ½ by one pseudo-count each way so that a small arm with all thumbs up does
    /// not claim zero variance.
    pub(crate) fn summarize(self, stats: &UsageStats) -> Option<Summary> {
        let mean_of = |n: u64, sum: f64, sum_sq: f64| {
            let mean = sum / n as f64;
            let variance = if n >= 2 {
                ((sum_sq - sum * sum / n as f64) / (n - 1) as f64).max(0.0)
            } else {
                0.0
            };
            Summary { n, mean, variance }
        };
        let rate_of = |k: u64, n: u64| {
            let shrunk = (k as f64 + 1.0) / (n as f64 + 2.0);
            Summary {
                n,
                mean: k as f64 / n as f64,
                variance: shrunk * (1.0 - shrunk),
            }
        };
        match self {
            Metric::Quality if stats.n_quality > 0 => Some(mean_of(
                stats.n_quality,
                stats.sum_quality,
                stats.sum_quality_sq,
            )),
            Metric::Latency if stats.n_latency > 0 => Some(mean_of(
                stats.n_latency,
                stats.sum_latency_ms,
                stats.sum_latency_ms_sq,
            )),
            Metric::PositiveRate if stats.with_feedback > 0 => {
                Some(rate_of(stats.positive_feedback, stats.with_feedback))
            }
            Metric::NegativeRate if stats.with_feedback > 0 => {
                Some(rate_of(stats.negative_feedback, stats.with_feedback))
            }
            _ => None,
        }
    }

    /// The number of observations of this metric in `stats`.
    pub(crate) fn count(self, stats: &UsageStats) -> u64 {
        match self {
            Metric::Quality => stats.n_quality,
            Metric::Latency => stats.n_latency,
            Metric::PositiveRate | Metric::NegativeRate => stats.with_feedback,
        }
    }

    /// A value formatted for reasons: rates as percentages, latency in ms, quality plain.
    pub(crate) fn format_value(self, value: f64) -> String {
        match self {
            Metric::Quality => format!("{value:.3}"),
            Metric::PositiveRate | Metric::NegativeRate => format!("{:.1}%", value * 100.0),
            Metric::Latency => format!("{value:.0} ms"),
        }
    }

    /// A difference formatted for reasons, with its sign.
    pub(crate) fn format_difference(self, value: f64) -> String {
        match self {
            Metric::Quality => format!("{value:+.3}"),
            Metric::PositiveRate | Metric::NegativeRate => format!("{:+.1} pp", value * 100.0),
            Metric::Latency => format!("{value:+.0} ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_from_sufficient_statistics() {
        let stats = UsageStats {
            total: 10,
            with_feedback: 4,
            positive_feedback: 3,
            negative_feedback: 1,
            n_quality: 3,
            sum_quality: 0.2 + 0.4 + 0.6,
            sum_quality_sq: 0.04 + 0.16 + 0.36,
            ..UsageStats::default()
        };
        let q = Metric::Quality.summarize(&stats).unwrap();
        assert_eq!(q.n, 3);
        assert!((q.mean - 0.4).abs() < 1e-12 && (q.variance - 0.04).abs() < 1e-12);
        let pos = Metric::PositiveRate.summarize(&stats).unwrap();
        assert_eq!((pos.n, pos.mean), (4, 0.75));
        assert!((pos.variance - (4.0 / 6.0) * (2.0 / 6.0)).abs() < 1e-12);
        assert_eq!(Metric::NegativeRate.summarize(&stats).unwrap().mean, 0.25);
        assert_eq!(
            Metric::Latency.summarize(&stats),
            None,
            "no latency logged is no data, not zero"
        );
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.key()), Some(m));
        }
    }
}
