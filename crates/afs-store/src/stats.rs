//! Usage statistics: the seed's figures plus the sums a statistical comparison needs.

use crate::record::{FeedbackValue, UsageRecord};

/// Sufficient statistics of a set of usage records.
///
/// The counts and sums add up across disjoint sets (hours, models), so the store keeps
/// them per model per hour and adds buckets instead of scanning the log. Means, variances
/// and rates are derived by the methods below.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageStats {
    /// Number of records (the seed's `total`).
    pub total: u64,
    /// Records with any feedback (the seed's `with_feedback`).
    pub with_feedback: u64,
    /// Records with feedback 1 (the seed's `positive_feedback`).
    pub positive_feedback: u64,
    /// Records with feedback -1 (the seed's `negative_feedback`).
    pub negative_feedback: u64,
    /// Records with feedback 0.
    pub neutral_feedback: u64,
    /// Records with a quality score.
    pub n_quality: u64,
    /// Sum of quality scores.
    pub sum_quality: f64,
    /// Sum of squared quality scores.
    pub sum_quality_sq: f64,
    /// Records with a latency.
    pub n_latency: u64,
    /// Sum of latencies, ms.
    pub sum_latency_ms: f64,
    /// Sum of squared latencies, ms².
    pub sum_latency_ms_sq: f64,
    /// Sum of token counts (the seed's `total_tokens`).
    pub total_tokens: i64,
}

impl UsageStats {
    /// Mean quality over records with a score (the seed's `avg_quality_score`); `None` when
    /// no record has one.
    pub fn avg_quality_score(&self) -> Option<f64> {
        (self.n_quality > 0).then(|| self.sum_quality / self.n_quality as f64)
    }

    /// Sample variance of quality (n − 1 denominator); `None` below two samples.
    pub fn quality_variance(&self) -> Option<f64> {
        sample_variance(self.n_quality, self.sum_quality, self.sum_quality_sq)
    }

    /// Mean latency over records with one (the seed's `avg_latency_ms`).
    pub fn avg_latency_ms(&self) -> Option<f64> {
        (self.n_latency > 0).then(|| self.sum_latency_ms / self.n_latency as f64)
    }

    /// Sample variance of latency; `None` below two samples.
    pub fn latency_variance(&self) -> Option<f64> {
        sample_variance(self.n_latency, self.sum_latency_ms, self.sum_latency_ms_sq)
    }

    /// Share of records with feedback (the seed's `feedback_rate`); 0 for an empty set.
    pub fn feedback_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.with_feedback as f64 / self.total as f64
        }
    }

    /// Share of positive feedback among records *with* feedback; `None` without feedback.
    pub fn positive_rate(&self) -> Option<f64> {
        (self.with_feedback > 0).then(|| self.positive_feedback as f64 / self.with_feedback as f64)
    }

    /// Share of negative feedback among records *with* feedback; `None` without feedback.
    pub fn negative_rate(&self) -> Option<f64> {
        (self.with_feedback > 0).then(|| self.negative_feedback as f64 / self.with_feedback as f64)
    }

    /// Whether `other` holds the same statistics: counts exactly, each float sum within
    /// `tolerance` of it (relative, or absolute below 1), since sums added in another order
    /// (rollups against a scan, another backend) differ in their last bits.
    pub fn approx_eq(&self, other: &UsageStats, tolerance: f64) -> bool {
        let counts = |s: &UsageStats| {
            (
                s.total,
                s.with_feedback,
                s.positive_feedback,
                s.negative_feedback,
                s.neutral_feedback,
                s.n_quality,
                s.n_latency,
                s.total_tokens,
            )
        };
        let close = |a: f64, b: f64| (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0);
        counts(self) == counts(other)
            && close(self.sum_quality, other.sum_quality)
            && close(self.sum_quality_sq, other.sum_quality_sq)
            && close(self.sum_latency_ms, other.sum_latency_ms)
            && close(self.sum_latency_ms_sq, other.sum_latency_ms_sq)
    }

    /// The statistics of `records` by definition: one pass over them. What the store's
    /// rollups must always equal (its tests compare the two), and a reference for other
    /// implementations.
    pub fn of_records<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> UsageStats {
        let mut s = UsageStats::default();
        for r in records {
            s.add_record(r);
        }
        s
    }

    /// Adds one record to these statistics.
    pub fn add_record(&mut self, r: &UsageRecord) {
        self.total += 1;
        if let Some(feedback) = r.feedback {
            self.with_feedback += 1;
            match feedback {
                FeedbackValue::Positive => self.positive_feedback += 1,
                FeedbackValue::Negative => self.negative_feedback += 1,
                FeedbackValue::Neutral => self.neutral_feedback += 1,
            }
        }
        if let Some(q) = r.quality_score {
            self.n_quality += 1;
            self.sum_quality += q;
            self.sum_quality_sq += q * q;
        }
        if let Some(l) = r.latency_ms {
            self.n_latency += 1;
            self.sum_latency_ms += l;
            self.sum_latency_ms_sq += l * l;
        }
        self.total_tokens += r.token_count.unwrap_or(0);
    }

    /// Adds another disjoint set's statistics to this one.
    pub fn add(&mut self, other: &UsageStats) {
        self.total += other.total;
        self.with_feedback += other.with_feedback;
        self.positive_feedback += other.positive_feedback;
        self.negative_feedback += other.negative_feedback;
        self.neutral_feedback += other.neutral_feedback;
        self.n_quality += other.n_quality;
        self.sum_quality += other.sum_quality;
        self.sum_quality_sq += other.sum_quality_sq;
        self.n_latency += other.n_latency;
        self.sum_latency_ms += other.sum_latency_ms;
        self.sum_latency_ms_sq += other.sum_latency_ms_sq;
        self.total_tokens += other.total_tokens;
    }
}

fn sample_variance(n: u64, sum: f64, sum_sq: f64) -> Option<f64> {
    if n < 2 {
        return None;
    }
    let n = n as f64;
    // Clamp: rounding can make the difference slightly negative for constant data.
    Some(((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_eq_takes_counts_exactly_and_sums_to_rounding() {
        let a = UsageStats {
            total: 3,
            n_quality: 3,
            sum_quality: 1.9,
            sum_quality_sq: 1.25,
            ..UsageStats::default()
        };
        let mut b = a;
        b.sum_quality = 0.7 + 0.6 + 0.6;
        assert!(a.approx_eq(&b, 1e-9));
        b.sum_quality = 1.91;
        assert!(!a.approx_eq(&b, 1e-9));
        assert!(a.approx_eq(&b, 1e-2));
        let mut c = a;
        c.total = 4;
        assert!(!a.approx_eq(&c, 1.0));
    }

    #[test]
    fn derived_figures() {
        let s = UsageStats {
            total: 4,
            with_feedback: 2,
            positive_feedback: 1,
            negative_feedback: 1,
            n_quality: 3,
            sum_quality: 0.2 + 0.4 + 0.6,
            sum_quality_sq: 0.04 + 0.16 + 0.36,
            ..UsageStats::default()
        };
        assert!((s.avg_quality_score().unwrap() - 0.4).abs() < 1e-12);
        assert!((s.quality_variance().unwrap() - 0.04).abs() < 1e-12);
        assert_eq!(s.feedback_rate(), 0.5);
        assert_eq!(s.positive_rate(), Some(0.5));
        assert_eq!(UsageStats::default().avg_quality_score(), None);
        assert_eq!(UsageStats::default().feedback_rate(), 0.0);
    }
}
