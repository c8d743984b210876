//! What a judge reports at one look: per-metric results, the sample-ratio check, the seed's
//! score for comparison, and the decision with its reason. Serialized to JSON for the event
//! log and the CLI.

use afs_store::{Decision, SequentialState};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::metric::Metric;
use crate::router::Arm;
use crate::units::Aggregation;

/// The part a metric plays in the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricRole {
    /// The metric the challenger must improve.
    Primary,
    /// A metric the challenger must not make worse by more than `margin` (relative).
    Guardrail {
        /// Tolerated relative harm.
        margin: f64,
    },
}

/// What the evidence says about one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricVerdict {
    /// An arm has no observation of the metric. Never counts as passing.
    NoData,
    /// Fewer observations than the minimum per arm; the sequential test has not started.
    WaitingForSamples,
    /// Not significant either way yet.
    Inconclusive,
    /// Primary: the challenger is significantly better.
    Better,
    /// Primary: the challenger is significantly worse (Holm-adjusted with the guardrails).
    Worse,
    /// Guardrail: shown to be no worse than its margin.
    WithinMargin,
    /// Guardrail: significantly worse than its margin (Holm-adjusted).
    Violated,
}

impl MetricVerdict {
    /// Lowercase name for reports: `no_data`, `waiting_for_samples`, `inconclusive`,
    /// `better`, `worse`, `within_margin`, `violated`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricVerdict::NoData => "no_data",
            MetricVerdict::WaitingForSamples => "waiting_for_samples",
            MetricVerdict::Inconclusive => "inconclusive",
            MetricVerdict::Better => "better",
            MetricVerdict::Worse => "worse",
            MetricVerdict::WithinMargin => "within_margin",
            MetricVerdict::Violated => "violated",
        }
    }
}

/// One metric at one look.
///
/// Differences are challenger − champion in the metric's own units. With several periods
/// (weight changes) the difference is the average of the per-period differences weighted by
/// each period's effective sample size `n_A·n_B/(n_A + n_B)`, so a shift in the traffic mix
/// between periods cannot masquerade as an effect; arm values are pooled over the lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    /// The metric.
    pub metric: Metric,
    /// Its role.
    pub role: MetricRole,
    /// Champion observations.
    pub champion_n: u64,
    /// Challenger observations.
    pub challenger_n: u64,
    /// Champion units with an observation (equal to `champion_n` when requests are the
    /// units).
    pub champion_units: u64,
    /// Challenger units with an observation.
    pub challenger_units: u64,
    /// How per-unit values were combined; `None` when requests were analysed directly.
    pub aggregation: Option<Aggregation>,
    /// The share of the per-unit variance that CUPED removed, when it was applied.
    pub cuped_reduction: Option<f64>,
    /// Champion's value over the experiment (per-unit mean or ratio, not CUPED-adjusted).
    pub champion_value: Option<f64>,
    /// Challenger's value over the experiment.
    pub challenger_value: Option<f64>,
    /// Challenger − champion, combined over cohorts (CUPED-adjusted when applied).
    pub difference: Option<f64>,
    /// Difference relative to the champion's value.
    pub relative_lift: Option<f64>,
    /// Always-valid confidence sequence for the difference at level `alpha` (running
    /// intersection over all looks), once the sequential test has started.
    pub interval: Option<(f64, f64)>,
    /// The null value of the difference the sequential test is centred on: 0 for the
    /// primary metric, the margin (in the harmful direction) for a guardrail.
    pub null_difference: Option<f64>,
    /// Always-valid p-value for "the challenger is better than the null" (running minimum).
    pub p_better: Option<f64>,
    /// Always-valid p-value for "the challenger is worse than the null" (running minimum).
    pub p_worse: Option<f64>,
    /// What the evidence says.
    pub verdict: MetricVerdict,
}

/// The sample-ratio-mismatch check: did the arms get the traffic their weights promise?
///
/// With unit statistics it counts the units first assigned to each arm (a unit is routed
/// once, so requests are not independent draws) and tests them sequentially (always-valid
/// p-value, safe under hourly looks); without, it counts requests with a chi-square test.
#[derive(Debug, Clone, PartialEq)]
pub struct SrmCheck {
    /// Champion requests over the experiment.
    pub champion_requests: u64,
    /// Challenger requests over the experiment.
    pub challenger_requests: u64,
    /// Units first assigned to the champion (`None` without unit statistics).
    pub champion_units: Option<u64>,
    /// Units first assigned to the challenger.
    pub challenger_units: Option<u64>,
    /// Expected challenger share: Σ per period (units or requests) × period weight / all.
    pub expected_challenger_share: Option<f64>,
    /// Observed challenger share.
    pub observed_challenger_share: Option<f64>,
    /// Pearson's chi-square statistic (1 degree of freedom) of the request-level test;
    /// `None` for the unit test or when an arm expects fewer than 8 requests.
    pub chi_square: Option<f64>,
    /// Its p-value (always-valid for the unit test).
    pub p_value: Option<f64>,
    /// True when p < the alarm level *and* the share deviates by more than the minimum.
    pub mismatch: bool,
}

impl SrmCheck {
    /// The request counts alone, nothing tested yet (no units, shares or p-value; no
    /// mismatch): where the built-in judge starts, and what a judge that leaves the check to
    /// others reports.
    pub fn untested(champion_requests: u64, challenger_requests: u64) -> Self {
        SrmCheck {
            champion_requests,
            challenger_requests,
            champion_units: None,
            challenger_units: None,
            expected_challenger_share: None,
            observed_challenger_share: None,
            chi_square: None,
            p_value: None,
            mismatch: false,
        }
    }
}

/// The seed's view, reported beside every decision for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedComparison {
    /// The weighted-improvement score: 0.5 × relative quality gain + 0.3 × relative
    /// positive-feedback gain + 0.2 × relative latency reduction, over the components with
    /// data (weights renormalized).
    pub weighted_improvement: Option<f64>,
    /// The score's winner: the challenger above `min_improvement_threshold`, the champion
    /// below its negative, `None` in between.
    pub winner: Option<Arm>,
    /// One-sided fixed-sample p-value of the primary metric (z-test, pooled arms).
    pub fixed_p: Option<f64>,
    /// Whether the seed's fixed rule would promote now: minimum samples and duration met,
    /// and the primary metric is at least `min_improvement_threshold` better or `fixed_p`
    /// is below `promotion_threshold`. Checked hourly this rule promotes identical models
    /// far too often; it is here to show that, not to decide.
    pub fixed_rule_promotes: bool,
}

/// What a look analysed as its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Analysis {
    /// Units (user or session ids) from the store's per-unit statistics; records without a
    /// unit id count as units of their own.
    Units,
    /// No record carries a unit id: every request is a unit of its own, so the analysis is
    /// per request (valid when routing is per request, as it is without unit ids).
    NoUnitIds,
    /// The store gave no unit statistics: requests from the rollups.
    Requests,
}

impl Analysis {
    /// `units`, `no_unit_ids` or `requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Analysis::Units => "units",
            Analysis::NoUnitIds => "no_unit_ids",
            Analysis::Requests => "requests",
        }
    }
}

/// A judge's report at one look.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The experiment judged.
    pub experiment_id: i64,
    /// Champion name.
    pub champion: String,
    /// Challenger name.
    pub challenger: String,
    /// When the look was taken.
    pub evaluated_at: DateTime<Utc>,
    /// Hours since the challenger was deployed.
    pub elapsed_hours: f64,
    /// Champion requests.
    pub champion_requests: u64,
    /// Challenger requests.
    pub challenger_requests: u64,
    /// Champion feedback events.
    pub champion_feedback: u64,
    /// Challenger feedback events.
    pub challenger_feedback: u64,
    /// Champion units (equal to its requests when requests are the units).
    pub champion_units: u64,
    /// Challenger units.
    pub challenger_units: u64,
    /// What was analysed as units.
    pub analysis: Analysis,
    /// The primary metric first, then each guardrail.
    pub metrics: Vec<MetricResult>,
    /// The sample-ratio check.
    pub srm: SrmCheck,
    /// The seed's score and fixed rule.
    pub seed: SeedComparison,
    /// The decision.
    pub decision: Decision,
    /// Why, for humans.
    pub reason: String,
    /// The sequential state after this look, for the metrics whose test has started; the
    /// caller persists it so the next look continues from it.
    pub states: Vec<SequentialState>,
}

fn opt(value: Option<f64>) -> Value {
    value
        .filter(|v| v.is_finite())
        .map_or(Value::Null, Value::from)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl MetricResult {
    /// The result as a JSON object.
    pub fn to_json(&self) -> Value {
        let (role, margin) = match self.role {
            MetricRole::Primary => ("primary", None),
            MetricRole::Guardrail { margin } => ("guardrail", Some(margin)),
        };
        json!({
            "metric": self.metric.key(),
            "role": role,
            "aggregation": self.aggregation.map(Aggregation::as_str),
            "cuped_variance_reduction": opt(self.cuped_reduction),
            "margin": opt(margin),
            "champion": { "n": self.champion_n, "units": self.champion_units, "value": opt(self.champion_value) },
            "challenger": { "n": self.challenger_n, "units": self.challenger_units, "value": opt(self.challenger_value) },
            "difference": opt(self.difference),
            "relative_lift": opt(self.relative_lift),
            "interval": self.interval.map_or(Value::Null, |(lo, hi)| json!([opt(Some(lo)), opt(Some(hi))])),
            "null_difference": opt(self.null_difference),
            "p_better": opt(self.p_better),
            "p_worse": opt(self.p_worse),
            "verdict": self.verdict.as_str(),
        })
    }
}

impl Comparison {
    /// The report as JSON: what the event log stores and `afs ab compare --json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "experiment_id": self.experiment_id,
            "champion": self.champion,
            "challenger": self.challenger,
            "evaluated_at": time(self.evaluated_at),
            "elapsed_hours": self.elapsed_hours,
            "analysis": self.analysis.as_str(),
            "requests": { "champion": self.champion_requests, "challenger": self.challenger_requests },
            "units": { "champion": self.champion_units, "challenger": self.challenger_units },
            "feedback": { "champion": self.champion_feedback, "challenger": self.challenger_feedback },
            "metrics": self.metrics.iter().map(MetricResult::to_json).collect::<Vec<_>>(),
            "srm": {
                "champion_units": self.srm.champion_units,
                "challenger_units": self.srm.challenger_units,
                "expected_challenger_share": opt(self.srm.expected_challenger_share),
                "observed_challenger_share": opt(self.srm.observed_challenger_share),
                "chi_square": opt(self.srm.chi_square),
                "p_value": opt(self.srm.p_value),
                "mismatch": self.srm.mismatch,
            },
            "seed": {
                "weighted_improvement": opt(self.seed.weighted_improvement),
                "winner": self.seed.winner.map(Arm::as_str),
                "fixed_p": opt(self.seed.fixed_p),
                "fixed_rule_promotes": self.seed.fixed_rule_promotes,
            },
            "decision": self.decision.as_str(),
            "reason": self.reason,
        })
    }

    /// How many units and requests each arm had, for the end of every decision message.
    pub fn sample_sizes(&self) -> String {
        match self.analysis {
            Analysis::Units => format!(
                "champion {} units ({} requests), challenger {} units ({} requests)",
                self.champion_units,
                self.champion_requests,
                self.challenger_units,
                self.challenger_requests
            ),
            Analysis::NoUnitIds | Analysis::Requests => format!(
                "analysed per request ({}): champion {} requests, challenger {}",
                if self.analysis == Analysis::NoUnitIds {
                    "no record carries a unit id"
                } else {
                    "no unit statistics"
                },
                self.champion_requests,
                self.challenger_requests
            ),
        }
    }

    /// The result of `metric`, if it was judged.
    pub fn metric(&self, metric: Metric) -> Option<&MetricResult> {
        self.metrics.iter().find(|m| m.metric == metric)
    }
}
