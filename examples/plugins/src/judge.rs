//! [`BetaBinomialJudge`]: an experiment judge of another kind than afs's default, written
//! against `afs_abtest::Judge` only, that keeps what it remembers between looks in the
//! store's opaque judge state ([`SequentialState::state`]).
//!
//! # The rule
//!
//! Each arm's positive-feedback rate (thumbs-up among requests with feedback) gets a
//! Beta(1, 1) prior and a binomial likelihood, so its posterior is Beta(1 + up, 1 + others).
//! At each look the judge computes P(challenger's rate > champion's | data) and counts the
//! consecutive looks it has been above `threshold` (or below `1 − threshold`). Once both arms
//! have `min_feedback_per_arm` feedback events, `confirm_looks` looks in a row above the
//! threshold promote the challenger and as many below `1 − threshold` roll it back;
//! otherwise it keeps testing. The streaks cannot be recomputed from the counts of one look:
//! that is why the judge needs a state of its own, stored as JSON under the key
//! [`BetaBinomialJudge::KEY`] (its posterior parameters, P(better), the streaks and the
//! number of looks).
//!
//! # What it guarantees, and what it does not
//!
//! * **It gives** a posterior probability that is coherent at every look *under its model*
//!   (independent feedback events, rates that do not move during the experiment, the
//!   uniform prior): a Bayesian posterior does not depend on when one chose to look.
//! * **It is not an always-valid test.** Its error rates are not bounded under continuous
//!   monitoring: if both models are identical, P(better) wanders around like a normalised
//!   random walk, and a rule "act when it exceeds 0.95" checked every hour will cross it at
//!   some look with a probability that grows with the number of looks (towards 1 given
//!   enough of them). `min_feedback_per_arm` and `confirm_looks` make early flukes rarer but
//!   bound nothing. A team that needs a false-promotion rate it can state should keep afs's
//!   default `SequentialJudge` (mSPRT: always-valid p-values and confidence sequences), or
//!   calibrate `threshold` for its own look schedule and traffic by simulation (`afs-sim`).
//! * **It is overconfident under sticky routing.** A user's feedback events are correlated
//!   (some users like everything), but the binomial model counts every event as an
//!   independent draw; the default judge analyses per-unit values for this reason.
//! * **It judges one metric.** No guardrails (latency, negative feedback), no sample-ratio
//!   check, no minimum duration: it never answers [`Decision::Hold`].

use afs_abtest::{
    Analysis, Comparison, Judge, JudgeInput, Metric, MetricResult, MetricRole, MetricVerdict,
    SeedComparison, SrmCheck,
};
use afs_store::{Decision, SequentialState, UsageStats};
use serde_json::json;

/// A Bayesian beta-binomial judge of the positive-feedback rate (see the module docs for its
/// rule and, above all, for the guarantees it does *not* give).
#[derive(Debug, Clone, Copy)]
pub struct BetaBinomialJudge {
    /// P(challenger better) above which a look counts towards promotion; below
    /// `1 − threshold` it counts towards rollback. In (0.5, 1).
    pub threshold: f64,
    /// Feedback events each arm needs before any look counts.
    pub min_feedback_per_arm: u64,
    /// Consecutive counting looks beyond the threshold that make a decision (at least 1).
    pub confirm_looks: u64,
}

impl Default for BetaBinomialJudge {
    fn default() -> Self {
        BetaBinomialJudge {
            threshold: 0.95,
            min_feedback_per_arm: 200,
            confirm_looks: 2,
        }
    }
}

/// What the judge remembers between looks: the JSON text of its
/// [`SequentialState::state`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BetaState {
    /// Looks taken so far.
    pub looks: u64,
    /// The champion's posterior Beta(alpha, beta) at the last look.
    pub champion: (f64, f64),
    /// The challenger's posterior at the last look.
    pub challenger: (f64, f64),
    /// P(challenger's rate > champion's) at the last look.
    pub p_better: f64,
    /// Consecutive counting looks with `p_better > threshold`.
    pub above: u64,
    /// Consecutive counting looks with `p_better < 1 − threshold`.
    pub below: u64,
}

impl BetaState {
    /// The state as the JSON text stored.
    pub fn to_json(&self) -> String {
        json!({
            "looks": self.looks,
            "champion": { "alpha": self.champion.0, "beta": self.champion.1 },
            "challenger": { "alpha": self.challenger.0, "beta": self.challenger.1 },
            "p_better": self.p_better,
            "above": self.above,
            "below": self.below,
        })
        .to_string()
    }

    /// Reads the JSON text [`to_json`](Self::to_json) wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let pair = |arm: &str| Some((v[arm]["alpha"].as_f64()?, v[arm]["beta"].as_f64()?));
        Some(BetaState {
            looks: v["looks"].as_u64()?,
            champion: pair("champion")?,
            challenger: pair("challenger")?,
            p_better: v["p_better"].as_f64()?,
            above: v["above"].as_u64()?,
            below: v["below"].as_u64()?,
        })
    }
}

/// P(X_b > X_a) for X_a ~ Beta(a.0, a.1) and X_b ~ Beta(b.0, b.1), independent: the
/// integral of f_b · F_a on a midpoint grid of [0, 1], each density normalised on the grid
/// (no gamma function needed). Parameters must be at least 1.
pub fn prob_greater(a: (f64, f64), b: (f64, f64)) -> f64 {
    const N: usize = 20_000;
    let log_density =
        |(alpha, beta): (f64, f64), x: f64| (alpha - 1.0) * x.ln() + (beta - 1.0) * (1.0 - x).ln();
    let grid: Vec<f64> = (0..N).map(|i| (i as f64 + 0.5) / N as f64).collect();
    let weights = |params: (f64, f64)| -> Vec<f64> {
        let logs: Vec<f64> = grid.iter().map(|&x| log_density(params, x)).collect();
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = w.iter().sum();
        w.into_iter().map(|x| x / total).collect()
    };
    let (wa, wb) = (weights(a), weights(b));
    let (mut below_a, mut p) = (0.0, 0.0);
    for (pa, pb) in wa.iter().zip(&wb) {
        // X_a below this cell, or in it and (on average) below X_b half of the time.
        p += pb * (below_a + pa / 2.0);
        below_a += pa;
    }
    p.clamp(0.0, 1.0)
}

impl BetaBinomialJudge {
    /// The key of its stored state: prefixed, so no other judge mistakes it for its own.
    pub const KEY: &'static str = "bayes.positive_rate";

    /// Posterior parameters of one arm's positive-feedback rate.
    fn posterior(stats: &UsageStats) -> (f64, f64) {
        let up = stats.positive_feedback as f64;
        let others = stats.with_feedback.saturating_sub(stats.positive_feedback) as f64;
        (1.0 + up, 1.0 + others)
    }

    /// This look's state: the posteriors, and the run of looks beyond the threshold on
    /// either side, continued from the previous look's (`previous`) while it lasts.
    fn next_state(
        &self,
        a: &UsageStats,
        b: &UsageStats,
        previous: Option<&BetaState>,
    ) -> BetaState {
        let (champion, challenger) = (Self::posterior(a), Self::posterior(b));
        let p_better = prob_greater(champion, challenger);
        let counts = self.has_counts(a, b);
        let (above, below) = previous.map_or((0, 0), |s| (s.above, s.below));
        let (above, below) = if counts && p_better > self.threshold {
            (above + 1, 0)
        } else if counts && p_better < 1.0 - self.threshold {
            (0, below + 1)
        } else {
            (0, 0)
        };
        BetaState {
            looks: previous.map_or(0, |s| s.looks) + 1,
            champion,
            challenger,
            p_better,
            above,
            below,
        }
    }

    /// Whether both arms have the feedback a decision needs.
    fn has_counts(&self, a: &UsageStats, b: &UsageStats) -> bool {
        a.with_feedback >= self.min_feedback_per_arm && b.with_feedback >= self.min_feedback_per_arm
    }

    /// The decision of this look, the metric's verdict, and why.
    fn decide(
        &self,
        a: &UsageStats,
        b: &UsageStats,
        state: &BetaState,
    ) -> (Decision, MetricVerdict, String) {
        let confirm = self.confirm_looks.max(1);
        let (above, below) = (state.above, state.below);
        if !self.has_counts(a, b) {
            (
                Decision::KeepTesting,
                MetricVerdict::WaitingForSamples,
                format!(
                    "waiting for feedback: champion {}, challenger {} of the {} each arm needs",
                    a.with_feedback, b.with_feedback, self.min_feedback_per_arm
                ),
            )
        } else if below >= confirm {
            (
                Decision::Rollback,
                MetricVerdict::Worse,
                format!(
                    "P(challenger better) below {:.3} for {below} looks",
                    1.0 - self.threshold
                ),
            )
        } else if above >= confirm {
            (
                Decision::Promote,
                MetricVerdict::Better,
                format!(
                    "P(challenger better) above {:.3} for {above} looks",
                    self.threshold
                ),
            )
        } else {
            (
                Decision::KeepTesting,
                MetricVerdict::Inconclusive,
                format!(
                    "P(challenger better) beyond the threshold for {} of the {confirm} looks needed",
                    above.max(below)
                ),
            )
        }
    }
}

/// Each arm's positive-feedback rate, when it has feedback.
fn rate(s: &UsageStats) -> Option<f64> {
    (s.with_feedback > 0).then(|| s.positive_feedback as f64 / s.with_feedback as f64)
}

/// The one metric this judge reports: the positive-feedback rate of champion `a` and
/// challenger `b`.
fn positive_rate(a: &UsageStats, b: &UsageStats, verdict: MetricVerdict) -> MetricResult {
    let (champion_rate, challenger_rate) = (rate(a), rate(b));
    let difference = champion_rate.zip(challenger_rate).map(|(x, y)| y - x);
    MetricResult {
        metric: Metric::PositiveRate,
        role: MetricRole::Primary,
        champion_n: a.with_feedback,
        challenger_n: b.with_feedback,
        champion_units: a.with_feedback,
        challenger_units: b.with_feedback,
        aggregation: None,
        cuped_reduction: None,
        champion_value: champion_rate,
        challenger_value: challenger_rate,
        difference,
        relative_lift: difference
            .zip(champion_rate)
            .and_then(|(d, r)| (r > 0.0).then(|| d / r)),
        // A credible interval is not a confidence sequence, and a posterior probability is
        // not a p-value: these fields stay empty.
        interval: None,
        null_difference: None,
        p_better: None,
        p_worse: None,
        verdict,
    }
}

impl Judge for BetaBinomialJudge {
    fn judge(&self, input: &JudgeInput<'_>) -> Comparison {
        let experiment = input.experiment;
        let (mut a, mut b) = (UsageStats::default(), UsageStats::default());
        for period in input.periods {
            a.add(&period.champion);
            b.add(&period.challenger);
        }
        let previous = input
            .previous
            .iter()
            .find(|s| s.metric == Self::KEY)
            .and_then(|s| Some((s, BetaState::parse(s.state.as_deref()?)?)));
        let state = self.next_state(&a, &b, previous.as_ref().map(|(_, s)| s));
        let (decision, verdict, why) = self.decide(&a, &b, &state);
        let units = |challenger: bool| -> u64 {
            input
                .units
                .iter()
                .filter(|c| c.challenger == challenger)
                .map(|c| c.units)
                .sum()
        };
        let reason = format!(
            "{why}; P(challenger better) = {:.4}, positive rate {} -> {} \
             (Bayesian beta-binomial on {} and {} feedback events; not an always-valid test)",
            state.p_better,
            rate(&a).map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0)),
            rate(&b).map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0)),
            a.with_feedback,
            b.with_feedback,
        );
        let started_at = previous.map_or(input.now, |(s, _)| s.started_at);
        Comparison {
            experiment_id: experiment.id,
            champion: experiment.champion.clone(),
            challenger: experiment.challenger.clone(),
            evaluated_at: input.now,
            elapsed_hours: (input.now - experiment.started_at).num_milliseconds() as f64
                / 3_600_000.0,
            champion_requests: a.total,
            challenger_requests: b.total,
            champion_feedback: a.with_feedback,
            challenger_feedback: b.with_feedback,
            champion_units: units(false),
            challenger_units: units(true),
            // Feedback events, each counted as an independent draw.
            analysis: Analysis::Requests,
            metrics: vec![positive_rate(&a, &b, verdict)],
            // The sample-ratio check is left to others: the request counts alone.
            srm: SrmCheck::untested(a.total, b.total),
            seed: SeedComparison {
                weighted_improvement: None,
                winner: None,
                fixed_p: None,
                fixed_rule_promotes: false,
            },
            decision,
            reason,
            states: vec![SequentialState::custom(
                Self::KEY,
                state.looks,
                state.to_json(),
                started_at,
                input.now,
            )],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prob_greater_matches_known_values() {
        // Equal posteriors: one half.
        assert!((prob_greater((30.0, 70.0), (30.0, 70.0)) - 0.5).abs() < 1e-6);
        // Beta(2, 1) vs Beta(1, 1): P(X_b > X_a) = ∫ x² dx... = 1/3.
        assert!((prob_greater((2.0, 1.0), (1.0, 1.0)) - 1.0 / 3.0).abs() < 1e-4);
        // Far apart: nearly certain, and symmetric.
        let p = prob_greater((101.0, 301.0), (301.0, 101.0));
        assert!(p > 1.0 - 1e-9, "{p}");
        let q = prob_greater((301.0, 101.0), (101.0, 301.0));
        assert!(q < 1e-9, "{q}");
    }

    #[test]
    fn its_state_reads_back() {
        let state = BetaState {
            looks: 3,
            champion: (71.0, 31.0),
            challenger: (81.0, 21.0),
            p_better: 0.93,
            above: 0,
            below: 0,
        };
        assert_eq!(BetaState::parse(&state.to_json()), Some(state));
        assert_eq!(BetaState::parse("{}"), None);
    }
}
