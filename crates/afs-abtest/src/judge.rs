//! The `Judge` trait and the default [`SequentialJudge`]: always-valid mSPRT tests on the
//! primary metric and the guardrails, minimum samples and duration, and a sample-ratio check.

use afs_store::{Decision, Experiment, SequentialState, UnitCohort, UsageStats};
use chrono::{DateTime, Utc};

use crate::comparison::{
    Analysis, Comparison, MetricResult, MetricRole, MetricVerdict, SeedComparison, SrmCheck,
};
use crate::config::AbTestConfig;
use crate::error::Result;
use crate::maths::{chi_square_1_sf, cs_half_width, holm, msprt_p, msprt_p_greater, normal_sf};
use crate::metric::{Metric, Summary};
use crate::router::Arm;
use crate::units;

/// Both arms' statistics over one period of an experiment (one challenger weight).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeriodStats {
    /// The challenger's weight during the period.
    pub challenger_weight: f64,
    /// The champion's requests in the period.
    pub champion: UsageStats,
    /// The challenger's requests in the period.
    pub challenger: UsageStats,
}

/// Everything a judge sees at one look.
#[derive(Debug, Clone, Copy)]
pub struct JudgeInput<'a> {
    /// The running experiment.
    pub experiment: &'a Experiment,
    /// Its periods' statistics, in the order of `experiment.periods` (request level: the
    /// store's per-model rollups).
    pub periods: &'a [PeriodStats],
    /// Its per-unit statistics by cohort and arm ([`afs_store::ExperimentStore::unit_stats`]).
    /// Empty when the store has none, in which case the judge analyses requests.
    pub units: &'a [UnitCohort],
    /// The sequential states stored after the previous look (empty at the first): every
    /// entry of the experiment, whichever judge wrote it, so a judge looks for its own keys.
    pub previous: &'a [SequentialState],
    /// The time of this look.
    pub now: DateTime<Utc>,
}

/// Decides, at one look, whether a challenger should be promoted, kept under test, rolled
/// back, or held.
///
/// # Contract
///
/// * `judge` is a pure function of its input: no I/O, no clock, no randomness. The caller
///   reads the statistics, calls it, persists [`Comparison::states`] and the decision, and
///   applies the decision. Calling it again with the same input gives the same answer.
/// * It may be called at any time and any number of times (every hour, or whenever an
///   operator asks): its error guarantees must hold under continuous monitoring.
/// * An arm without data for a metric is never evidence of success: it cannot lead to
///   [`Decision::Promote`].
/// * [`Decision::Hold`] means the data itself is suspect; the caller acts on nothing.
///
/// # State between looks
///
/// What a judge must remember from one look to the next goes in [`Comparison::states`]: one
/// [`SequentialState`] per key, which the caller stores (replacing the entries of those
/// keys) and gives back in [`JudgeInput::previous`] at the next look. The default judge
/// keeps its mSPRT test in the numeric fields; a judge of another kind (Bayesian,
/// fixed-horizon, alpha-spending, ...) keeps its own state as text, conventionally JSON, in
/// [`SequentialState::state`] (built with [`SequentialState::custom`]), under keys of its
/// own (`bayes.positive_rate`), bounded by the store's field limit (1 MiB by default). The
/// store never reads that text. `examples/plugins` in the repository has such a judge.
pub trait Judge: Send + Sync {
    /// Judges one look.
    fn judge(&self, input: &JudgeInput<'_>) -> Comparison;
}

/// The default judge: mSPRT with a normal mixture on every metric.
///
/// * **Primary metric** (quality or positive-feedback rate): H0 "no difference", mixture
///   scale `τ = expected_effect × champion baseline` (frozen at the first look). Promotion
///   needs the always-valid p-value for "better" below `alpha` and a point estimate of the
///   relative lift of at least `min_lift`.
/// * **Guardrails** (latency, negative-feedback rate by default): centred on the margin
///   `M = margin × champion baseline` in the harmful direction, `τ = M`. Promotion needs
///   every guardrail shown to be no worse than its margin (p for "better than −M" below
///   `alpha`: an intersection-union test, no correction needed). A guardrail significantly
///   worse than its margin, or the primary metric significantly worse than the champion,
///   is a rollback; these tests are corrected together with Holm's procedure.
/// * **Gates**: every arm needs `min_samples_per_version` requests before any promotion or
///   rollback, a metric needs that many observations (feedback metrics:
///   `min_feedback_per_version` events) before its test starts, and a promotion needs
///   `min_duration_hours` and, when feedback is judged, `min_feedback_per_version` feedback
///   events per arm.
/// * **Sample-ratio mismatch**: Pearson's chi-square of the arms' request counts against
///   the counts the periods' weights promise; at `p < srm_p_threshold` with a share
///   deviation above `srm_min_deviation` the decision is [`Decision::Hold`].
///
/// The primary metric's test is the two-sided normal mixture; the guardrails' tests are
/// one-sided (a half-normal mixture on each side of the margin). The p-values are running
/// minima and the intervals running intersections over looks, so the error rates hold
/// however often the judge looks.
///
/// **Stored state** ([`SequentialState`], one per metric, keyed by [`Metric::key`]), in
/// *improvement* units (challenger − champion, negated for lower-is-better metrics):
/// `baseline` is the champion's value at the first look, `tau` the mixture scale, `theta0`
/// the null (0, or −margin for a guardrail), `p_better`/`p_worse` the running minimum
/// p-values for "improvement above/below `theta0`", `cs_lower`/`cs_upper` the running
/// intersection of the confidence sequence of the improvement.
#[derive(Debug, Clone)]
pub struct SequentialJudge {
    config: AbTestConfig,
}

impl SequentialJudge {
    /// A judge with `config` (validated).
    pub fn new(config: AbTestConfig) -> Result<Self> {
        config.validate()?;
        Ok(SequentialJudge { config })
    }

    /// Its settings.
    pub fn config(&self) -> &AbTestConfig {
        &self.config
    }
}

/// The difference challenger − champion of `metric`, combined over periods with effective
/// sample-size weights, and its variance; per-arm variances are pooled over the lifetime.
pub(crate) fn stratified_difference(
    metric: Metric,
    periods: &[PeriodStats],
    a: &Summary,
    b: &Summary,
) -> Option<(f64, f64)> {
    let (mut sum_h, mut sum_hd, mut sum_h2v) = (0.0, 0.0, 0.0);
    for period in periods {
        let (Some(pa), Some(pb)) = (
            metric.summarize(&period.champion),
            metric.summarize(&period.challenger),
        ) else {
            continue;
        };
        let (na, nb) = (pa.n as f64, pb.n as f64);
        let h = na * nb / (na + nb);
        sum_h += h;
        sum_hd += h * (pb.mean - pa.mean);
        sum_h2v += h * h * (a.variance / na + b.variance / nb);
    }
    (sum_h > 0.0).then(|| (sum_hd / sum_h, sum_h2v / (sum_h * sum_h)))
}

fn pooled(periods: &[PeriodStats]) -> (UsageStats, UsageStats) {
    let (mut a, mut b) = (UsageStats::default(), UsageStats::default());
    for p in periods {
        a.add(&p.champion);
        b.add(&p.challenger);
    }
    (a, b)
}

/// The sample-ratio check: on units when the store counts them (a sequential test of the
/// units first assigned to each arm, valid under hourly looks), else on requests
/// (chi-square against the periods' expected counts).
pub(crate) fn srm_check(
    experiment: &Experiment,
    periods: &[PeriodStats],
    cohorts: &[UnitCohort],
    config: &AbTestConfig,
) -> SrmCheck {
    let (mut observed_a, mut observed_b, mut expected_b, mut total) = (0u64, 0u64, 0.0, 0u64);
    for p in periods {
        let n = p.champion.total + p.challenger.total;
        observed_a += p.champion.total;
        observed_b += p.challenger.total;
        expected_b += n as f64 * p.challenger_weight;
        total += n;
    }
    let mut check = SrmCheck::untested(observed_a, observed_b);
    if !cohorts.is_empty() {
        let (log_bf, units_a, units_b, expected_units_b) =
            units::srm_log_bayes_factor(experiment, cohorts);
        check.champion_units = Some(units_a);
        check.challenger_units = Some(units_b);
        let n = units_a + units_b;
        if n == 0 {
            return check;
        }
        let n_f = n as f64;
        check.expected_challenger_share = Some(expected_units_b / n_f);
        check.observed_challenger_share = Some(units_b as f64 / n_f);
        let p = (-log_bf).exp().min(1.0);
        let deviation = (units_b as f64 - expected_units_b).abs() / n_f;
        check.p_value = Some(p);
        check.mismatch = p < config.srm_p_threshold && deviation > config.srm_min_deviation;
        return check;
    }
    if total == 0 {
        return check;
    }
    let total_f = total as f64;
    let expected_a = total_f - expected_b;
    check.expected_challenger_share = Some(expected_b / total_f);
    check.observed_challenger_share = Some(observed_b as f64 / total_f);
    // The chi-square approximation needs a handful of expected requests in each arm.
    if expected_a < 8.0 || expected_b < 8.0 {
        return check;
    }
    let chi2 = (observed_a as f64 - expected_a).powi(2) / expected_a
        + (observed_b as f64 - expected_b).powi(2) / expected_b;
    let p = chi_square_1_sf(chi2);
    let deviation = (observed_b as f64 - expected_b).abs() / total_f;
    check.chi_square = Some(chi2);
    check.p_value = Some(p);
    check.mismatch = p < config.srm_p_threshold && deviation > config.srm_min_deviation;
    check
}

/// What one look measured for one metric.
#[derive(Clone, Copy)]
struct Observation {
    /// The champion's value (the baseline when the test starts).
    baseline: f64,
    /// Challenger − champion.
    difference: f64,
    /// Variance of the difference.
    variance: f64,
}

/// Updates (or starts) the sequential state of one metric with one look.
fn look(
    previous: Option<&SequentialState>,
    metric: Metric,
    role: MetricRole,
    seen: &Observation,
    config: &AbTestConfig,
    now: DateTime<Utc>,
) -> SequentialState {
    let Observation {
        baseline,
        difference,
        variance,
    } = *seen;
    let mut state = match previous {
        Some(s) => s.clone(),
        None => {
            // Scales are relative to the champion's value when the test starts; a zero
            // baseline falls back to a tiny scale, which makes the test (rightly) unable to
            // decide anything.
            let scale = baseline.abs().max(1e-9);
            let (tau, theta0) = match role {
                MetricRole::Primary => (config.expected_effect * scale, 0.0),
                MetricRole::Guardrail { margin } => (margin * scale, -margin * scale),
            };
            SequentialState {
                metric: metric.key().to_string(),
                n_looks: 0,
                baseline,
                tau,
                theta0,
                p_better: 1.0,
                p_worse: 1.0,
                cs_lower: f64::NEG_INFINITY,
                cs_upper: f64::INFINITY,
                started_at: now,
                updated_at: now,
                state: None,
            }
        }
    };
    let improvement = metric.orientation() * difference;
    // A zero variance (constant scores) would make any difference infinitely significant.
    let variance = variance
        .max(1e-12 * state.tau * state.tau)
        .max(f64::MIN_POSITIVE);
    match role {
        // Superiority: the two-sided mixture of the notes, its p-value credited to the side
        // the estimate falls on. Either directional error is below alpha (together too).
        MetricRole::Primary => {
            let p = msprt_p(improvement, variance, state.tau, state.theta0);
            if improvement > state.theta0 {
                state.p_better = state.p_better.min(p);
            } else if improvement < state.theta0 {
                state.p_worse = state.p_worse.min(p);
            }
        }
        // Non-inferiority and violation are one-sided questions about the margin: each gets
        // a half-normal mixture on its own side, at level alpha.
        MetricRole::Guardrail { .. } => {
            let better = msprt_p_greater(improvement, variance, state.tau, state.theta0);
            let worse = msprt_p_greater(-improvement, variance, state.tau, -state.theta0);
            state.p_better = state.p_better.min(better);
            state.p_worse = state.p_worse.min(worse);
        }
    }
    let half = cs_half_width(variance, state.tau, config.alpha);
    state.cs_lower = state.cs_lower.max(improvement - half);
    state.cs_upper = state.cs_upper.min(improvement + half);
    state.n_looks += 1;
    state.updated_at = now;
    state
}

fn percent(value: f64) -> String {
    format!("{:+.1}%", value * 100.0)
}

fn p_text(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A metric's verdict before the Holm-corrected check for harm: no data until both arms
/// have a value, waiting until its test has a state, then better (primary) or within its
/// margin (guardrail) when the p-value of an improvement is below `alpha`.
fn verdict(
    seen: &units::UnitEstimate,
    state: Option<&SequentialState>,
    role: MetricRole,
    alpha: f64,
) -> MetricVerdict {
    match (seen.values.0, seen.values.1, state) {
        (None, _, _) | (_, None, _) => MetricVerdict::NoData,
        (_, _, None) => MetricVerdict::WaitingForSamples,
        (_, _, Some(s)) if s.p_better < alpha => match role {
            MetricRole::Primary => MetricVerdict::Better,
            MetricRole::Guardrail { .. } => MetricVerdict::WithinMargin,
        },
        _ => MetricVerdict::Inconclusive,
    }
}

impl SequentialJudge {
    fn evaluate(
        &self,
        metric: Metric,
        role: MetricRole,
        input: &JudgeInput<'_>,
        pooled_a: &UsageStats,
        pooled_b: &UsageStats,
    ) -> (MetricResult, Option<SequentialState>) {
        let config = &self.config;
        let aggregation = config.aggregation_of(metric);
        let seen = self.estimate(metric, input, pooled_a, pooled_b);
        let (na, nb) = seen.observations;
        let (ka, kb) = seen.units;
        let estimate = seen.difference;
        let champion_value = seen.values.0;
        let relative_lift = match (estimate, champion_value) {
            (Some((d, _)), Some(a)) if a != 0.0 => Some(d / a),
            _ => None,
        };
        let previous = input.previous.iter().find(|s| s.metric == metric.key());
        // The tests are fed even while the sample-ratio check alarms: a hold blocks promotion,
        // never the rollback of a challenger shown to be worse.
        let ready = self.enough_samples(metric, input, &seen);
        let updated = match (estimate, champion_value) {
            (Some((d, v)), Some(baseline)) if ready => {
                let seen = Observation {
                    baseline,
                    difference: d,
                    variance: v,
                };
                Some(look(previous, metric, role, &seen, config, input.now))
            }
            _ => None,
        };
        let state = updated.as_ref().or(previous);
        let orientation = metric.orientation();
        let result = MetricResult {
            metric,
            role,
            champion_n: na,
            challenger_n: nb,
            champion_units: ka,
            challenger_units: kb,
            aggregation: if input.units.is_empty() {
                None
            } else {
                Some(aggregation)
            },
            cuped_reduction: seen.cuped_reduction,
            champion_value,
            challenger_value: seen.values.1,
            difference: estimate.map(|(d, _)| d),
            relative_lift,
            interval: state.map(|s| {
                if orientation > 0.0 {
                    (s.cs_lower, s.cs_upper)
                } else {
                    (-s.cs_upper, -s.cs_lower)
                }
            }),
            null_difference: state.map(|s| orientation * s.theta0),
            p_better: state.map(|s| s.p_better),
            p_worse: state.map(|s| s.p_worse),
            verdict: verdict(&seen, state, role, config.alpha),
        };
        (result, updated)
    }

    /// Both arms' value of `metric` and their difference: from the unit statistics, or,
    /// without any, from the pooled statistics with every request a unit of its own.
    fn estimate(
        &self,
        metric: Metric,
        input: &JudgeInput<'_>,
        pooled_a: &UsageStats,
        pooled_b: &UsageStats,
    ) -> units::UnitEstimate {
        if input.units.is_empty() {
            // No unit statistics: every request is a unit of its own.
            let (sa, sb) = (metric.summarize(pooled_a), metric.summarize(pooled_b));
            let (na, nb) = (metric.count(pooled_a), metric.count(pooled_b));
            units::UnitEstimate {
                units: (na, nb),
                observations: (na, nb),
                values: (sa.map(|s| s.mean), sb.map(|s| s.mean)),
                difference: match (&sa, &sb) {
                    (Some(a), Some(b)) => stratified_difference(metric, input.periods, a, b),
                    _ => None,
                },
                cuped_reduction: None,
            }
        } else {
            units::estimate(
                metric,
                input.units,
                input.experiment.periods.len(),
                self.config.aggregation_of(metric),
                self.config.cuped,
            )
        }
    }

    /// Whether both arms have the minimum observations of `metric` and, when the input has
    /// unit ids, the minimum units to feed its test.
    fn enough_samples(
        &self,
        metric: Metric,
        input: &JudgeInput<'_>,
        seen: &units::UnitEstimate,
    ) -> bool {
        let config = &self.config;
        let (na, nb) = seen.observations;
        let (ka, kb) = seen.units;
        let min_n = if metric.is_feedback() {
            config.min_feedback_per_version
        } else {
            config.min_samples_per_version
        };
        // The unit minimum applies to units with ids; without any, requests are the units
        // and the observation minimum is the gate.
        let has_unit_ids = input.units.iter().any(|c| c.units > c.loose_records);
        let min_units = if has_unit_ids {
            config.min_units_per_arm
        } else {
            0
        };
        na >= min_n && nb >= min_n && ka >= min_units && kb >= min_units
    }

    fn seed_comparison(
        &self,
        pooled_a: &UsageStats,
        pooled_b: &UsageStats,
        elapsed_hours: f64,
    ) -> SeedComparison {
        let config = &self.config;
        let relative = |metric: Metric| -> Option<f64> {
            let (a, b) = (metric.summarize(pooled_a)?, metric.summarize(pooled_b)?);
            (a.mean != 0.0).then(|| metric.orientation() * (b.mean - a.mean) / a.mean)
        };
        let parts = [
            (0.5, relative(Metric::Quality)),
            (0.3, relative(Metric::PositiveRate)),
            (0.2, relative(Metric::Latency)),
        ];
        let weight: f64 = parts
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(w, _)| w)
            .sum();
        let weighted_improvement = (weight > 0.0).then(|| {
            parts
                .iter()
                .filter_map(|(w, v)| v.map(|v| w * v))
                .sum::<f64>()
                / weight
        });
        let winner = weighted_improvement.and_then(|s| {
            if s > config.min_improvement_threshold {
                Some(Arm::Challenger)
            } else if s < -config.min_improvement_threshold {
                Some(Arm::Champion)
            } else {
                None
            }
        });

        let primary = config.primary_metric.metric();
        let (mut fixed_p, mut fixed_rule_promotes) = (None, false);
        if let (Some(a), Some(b)) = (primary.summarize(pooled_a), primary.summarize(pooled_b)) {
            let d = primary.orientation() * (b.mean - a.mean);
            let se = (a.variance / a.n as f64 + b.variance / b.n as f64).sqrt();
            let p = if se > 0.0 {
                normal_sf(d / se)
            } else if d > 0.0 {
                0.0
            } else {
                1.0
            };
            fixed_p = Some(p);
            let lift = if a.mean != 0.0 { d / a.mean } else { 0.0 };
            let gates = pooled_a.total >= config.min_samples_per_version
                && pooled_b.total >= config.min_samples_per_version
                && elapsed_hours >= config.min_duration_hours;
            fixed_rule_promotes = gates
                && d > 0.0
                && (lift >= config.min_improvement_threshold || p < config.promotion_threshold);
        }
        SeedComparison {
            weighted_improvement,
            winner,
            fixed_p,
            fixed_rule_promotes,
        }
    }

    fn describe(&self, m: &MetricResult) -> String {
        let diff = m
            .difference
            .map_or("n/a".to_string(), |d| m.metric.format_difference(d));
        let lift = m
            .relative_lift
            .map_or(String::new(), |l| format!("{}, ", percent(l)));
        let value = |v: Option<f64>| v.map_or("n/a".to_string(), |v| m.metric.format_value(v));
        format!(
            "{} {diff} ({lift}{} -> {})",
            m.metric.key(),
            value(m.champion_value),
            value(m.challenger_value)
        )
    }

    fn promotion_blockers(&self, c: &Comparison) -> Vec<String> {
        let config = &self.config;
        let mut blockers = Vec::new();
        if c.elapsed_hours < config.min_duration_hours {
            blockers.push(format!(
                "ran {:.1} h of the minimum {} h",
                c.elapsed_hours, config.min_duration_hours
            ));
        }
        let min_feedback = config.min_feedback_per_version;
        if config.needs_feedback()
            && (c.champion_feedback < min_feedback || c.challenger_feedback < min_feedback)
        {
            blockers.push(format!(
                "feedback events: champion {}, challenger {} of the {min_feedback} each arm needs",
                c.champion_feedback, c.challenger_feedback
            ));
        }
        for m in &c.metrics {
            let key = m.metric.key();
            let min_n = if m.metric.is_feedback() {
                min_feedback
            } else {
                config.min_samples_per_version
            };
            let text = match (m.role, m.verdict) {
                (_, MetricVerdict::NoData) => {
                    let arm = if m.champion_n == 0 {
                        &c.champion
                    } else {
                        &c.challenger
                    };
                    Some(format!(
                        "no {key} data for {arm}; no data never counts as passing"
                    ))
                }
                (_, MetricVerdict::WaitingForSamples) => Some(format!(
                    "waiting for {min_n} {key} observations from {} units per arm (champion {} \
                     from {} units, challenger {} from {} units)",
                    config.min_units_per_arm,
                    m.champion_n,
                    m.champion_units,
                    m.challenger_n,
                    m.challenger_units
                )),
                (MetricRole::Primary, MetricVerdict::Inconclusive) => Some(format!(
                    "{} not significantly better yet (always-valid p = {})",
                    self.describe(m),
                    p_text(m.p_better.unwrap_or(1.0))
                )),
                (MetricRole::Primary, MetricVerdict::Better) => match m.relative_lift {
                    Some(lift) if lift * m.metric.orientation() >= config.min_lift => None,
                    _ => Some(format!(
                        "{} is significantly better but below the minimum lift of {}",
                        self.describe(m),
                        percent(config.min_lift)
                    )),
                },
                (MetricRole::Guardrail { margin }, MetricVerdict::Inconclusive) => Some(format!(
                    "{} not yet shown within its {:.0}% margin (always-valid p = {})",
                    self.describe(m),
                    margin * 100.0,
                    p_text(m.p_better.unwrap_or(1.0))
                )),
                _ => None,
            };
            blockers.extend(text);
        }
        blockers
    }
}

impl Judge for SequentialJudge {
    fn judge(&self, input: &JudgeInput<'_>) -> Comparison {
        let config = &self.config;
        let experiment = input.experiment;
        let (pooled_a, pooled_b) = pooled(input.periods);
        let elapsed_hours =
            (input.now - experiment.started_at).num_milliseconds() as f64 / 3_600_000.0;

        let mut roles = vec![(config.primary_metric.metric(), MetricRole::Primary)];
        roles.extend(
            config
                .guardrails
                .iter()
                .map(|g| (g.metric, MetricRole::Guardrail { margin: g.margin })),
        );
        let srm = srm_check(experiment, input.periods, input.units, config);
        let mut metrics = Vec::new();
        let mut states = Vec::new();
        for (metric, role) in roles {
            let (result, state) = self.evaluate(metric, role, input, &pooled_a, &pooled_b);
            metrics.push(result);
            states.extend(state);
        }

        // Rollback tests: the primary "worse than the champion" and each guardrail "worse than
        // its margin", corrected together with Holm's step-down procedure.
        let family: Vec<(usize, f64)> = metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.p_worse.map(|p| (i, p)))
            .collect();
        let p_values: Vec<f64> = family.iter().map(|(_, p)| *p).collect();
        for ((i, _), rejected) in family.iter().zip(holm(&p_values, config.alpha)) {
            if rejected {
                metrics[*i].verdict = match metrics[*i].role {
                    MetricRole::Primary => MetricVerdict::Worse,
                    MetricRole::Guardrail { .. } => MetricVerdict::Violated,
                };
            }
        }

        let seed = self.seed_comparison(&pooled_a, &pooled_b, elapsed_hours);
        let arm_units = |challenger: bool| -> (u64, u64) {
            input
                .units
                .iter()
                .filter(|c| c.challenger == challenger)
                .fold((0, 0), |(u, l), c| (u + c.units, l + c.loose_records))
        };
        let ((units_a, loose_a), (units_b, loose_b)) = (arm_units(false), arm_units(true));
        let analysis = if input.units.is_empty() {
            Analysis::Requests
        } else if units_a + units_b > loose_a + loose_b {
            Analysis::Units
        } else {
            Analysis::NoUnitIds
        };
        let mut comparison = Comparison {
            experiment_id: experiment.id,
            champion: experiment.champion.clone(),
            challenger: experiment.challenger.clone(),
            evaluated_at: input.now,
            elapsed_hours,
            champion_requests: pooled_a.total,
            challenger_requests: pooled_b.total,
            champion_feedback: pooled_a.with_feedback,
            challenger_feedback: pooled_b.with_feedback,
            champion_units: units_a,
            challenger_units: units_b,
            analysis,
            metrics,
            srm,
            seed,
            decision: Decision::KeepTesting,
            reason: String::new(),
            states,
        };
        let (decision, reason) = self.decide(&comparison);
        comparison.decision = decision;
        comparison.reason = format!("{reason}; {}", comparison.sample_sizes());
        comparison
    }
}

impl SequentialJudge {
    fn srm_text(c: &Comparison) -> String {
        let what = if c.analysis == Analysis::Units {
            "of newly assigned units"
        } else {
            "of requests"
        };
        let test = match c.srm.chi_square {
            Some(chi2) => format!(
                "chi-square {chi2:.1}, p = {}",
                p_text(c.srm.p_value.unwrap_or(1.0))
            ),
            None => format!("always-valid p = {}", p_text(c.srm.p_value.unwrap_or(1.0))),
        };
        format!(
            "sample ratio mismatch: challenger got {:.2}% {what}, expected {:.2}% ({test})",
            c.srm.observed_challenger_share.unwrap_or(0.0) * 100.0,
            c.srm.expected_challenger_share.unwrap_or(0.0) * 100.0,
        )
    }

    fn decide(&self, c: &Comparison) -> (Decision, String) {
        let config = &self.config;
        let min = config.min_samples_per_version;
        let min_units = config.min_units_per_arm;
        let requests_ok = c.champion_requests >= min && c.challenger_requests >= min;
        let units_ok = c.analysis != Analysis::Units
            || (c.champion_units >= min_units && c.challenger_units >= min_units);
        let harmed = self.harmed(c);
        // Harm is acted on even when the split looks wrong: rolling back is the safe side.
        if requests_ok && units_ok && !harmed.is_empty() {
            return self.rollback(c, &harmed);
        }
        if c.srm.mismatch {
            return (
                Decision::Hold,
                format!(
                    "{}; routing or logging is broken, so nothing is promoted until it is fixed \
                     (a significantly worse challenger is still rolled back)",
                    Self::srm_text(c)
                ),
            );
        }
        if !requests_ok {
            return (
                Decision::KeepTesting,
                format!(
                    "waiting for samples: champion has {} and challenger {} of the {min} requests each arm needs",
                    c.champion_requests, c.challenger_requests
                ),
            );
        }
        if !units_ok {
            return (
                Decision::KeepTesting,
                format!(
                    "waiting for units: champion has {} and challenger {} of the {min_units} units each arm needs",
                    c.champion_units, c.challenger_units
                ),
            );
        }
        let blockers = self.promotion_blockers(c);
        if !blockers.is_empty() {
            return (
                Decision::KeepTesting,
                format!("keep testing: {}", blockers.join("; ")),
            );
        }
        self.promote(c)
    }

    /// A description of each metric found worse than the champion (primary) or than its
    /// margin (guardrail), with its always-valid p-value.
    fn harmed(&self, c: &Comparison) -> Vec<String> {
        c.metrics
            .iter()
            .filter(|m| matches!(m.verdict, MetricVerdict::Worse | MetricVerdict::Violated))
            .map(|m| {
                let what = match m.role {
                    MetricRole::Primary => "worse than the champion".to_string(),
                    MetricRole::Guardrail { margin } => {
                        format!("worse than its {:.0}% margin", margin * 100.0)
                    }
                };
                format!(
                    "{} {what} (always-valid p = {})",
                    self.describe(m),
                    p_text(m.p_worse.unwrap_or(1.0))
                )
            })
            .collect()
    }

    /// The rollback of a challenger with the `harmed` metrics, noting a sample ratio
    /// mismatch if there is one.
    fn rollback(&self, c: &Comparison, harmed: &[String]) -> (Decision, String) {
        let srm = if c.srm.mismatch {
            format!(" (also {})", Self::srm_text(c))
        } else {
            String::new()
        };
        (
            Decision::Rollback,
            format!(
                "challenger {} is significantly worse: {} (Holm-corrected at alpha {}){srm}",
                c.challenger,
                harmed.join("; "),
                self.config.alpha
            ),
        )
    }

    /// The promotion of a challenger whose primary metric is better and guardrails hold,
    /// with the primary's confidence sequence and the guardrails' values.
    fn promote(&self, c: &Comparison) -> (Decision, String) {
        let config = &self.config;
        let primary = &c.metrics[0];
        let interval = primary.interval.map_or(String::new(), |(lo, hi)| {
            format!(
                ", {:.0}% confidence sequence [{}, {}]",
                (1.0 - config.alpha) * 100.0,
                primary.metric.format_difference(lo),
                primary.metric.format_difference(hi)
            )
        });
        let guardrails: Vec<String> = c.metrics[1..].iter().map(|m| self.describe(m)).collect();
        let guardrails = if guardrails.is_empty() {
            String::from("no guardrails configured")
        } else {
            format!("guardrails within their margins: {}", guardrails.join(", "))
        };
        (
            Decision::Promote,
            format!(
                "challenger {} is better: {} (always-valid p = {} < {}){interval}; {guardrails}; \
                 after {:.1} h",
                c.challenger,
                self.describe(primary),
                p_text(primary.p_better.unwrap_or(1.0)),
                config.alpha,
                c.elapsed_hours
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afs_store::{ExperimentPeriod, ExperimentStatus, WeightSource};
    use chrono::{Duration, TimeZone};

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn experiment(weights: &[f64]) -> Experiment {
        Experiment {
            id: 1,
            champion: "v1".into(),
            challenger: "v2".into(),
            status: ExperimentStatus::Running,
            seed: 5,
            challenger_weight: *weights.last().unwrap(),
            started_at: start(),
            ended_at: None,
            periods: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| ExperimentPeriod {
                    index: i as u32,
                    started_at: start() + Duration::hours(i as i64),
                    ended_at: None,
                    challenger_weight: w,
                    source: WeightSource::Manual,
                })
                .collect(),
        }
    }

    /// Statistics of `n` requests with mean quality `q` (sd 0.1), `n/5` feedback events with
    /// positive share `pos`, latency mean `lat` (sd 100 ms).
    fn arm(n: u64, q: f64, pos: f64, lat: f64) -> UsageStats {
        let nf = n as f64;
        let fb = n / 5;
        let positive = (fb as f64 * pos).round() as u64;
        UsageStats {
            total: n,
            with_feedback: fb,
            positive_feedback: positive,
            negative_feedback: fb - positive,
            n_quality: n,
            sum_quality: q * nf,
            sum_quality_sq: nf * (q * q + 0.01),
            n_latency: n,
            sum_latency_ms: lat * nf,
            sum_latency_ms_sq: nf * (lat * lat + 10_000.0),
            ..UsageStats::default()
        }
    }

    fn judge_once(
        config: AbTestConfig,
        hours: i64,
        champion: UsageStats,
        challenger: UsageStats,
    ) -> Comparison {
        let experiment = experiment(&[0.5]);
        let periods = [PeriodStats {
            challenger_weight: 0.5,
            champion,
            challenger,
        }];
        let judge = SequentialJudge::new(config).unwrap();
        judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            units: &[],
            previous: &[],
            now: start() + Duration::hours(hours),
        })
    }

    fn check(
        hours: i64,
        champion: UsageStats,
        challenger: UsageStats,
        expected: Decision,
        reason_has: &str,
    ) {
        let c = judge_once(AbTestConfig::default(), hours, champion, challenger);
        assert_eq!(c.decision, expected, "{}", c.reason);
        assert!(
            c.reason.contains(reason_has),
            "{:?} lacks {reason_has:?}",
            c.reason
        );
    }

    #[test]
    fn decisions_follow_the_rules() {
        let base = arm(5000, 0.70, 0.70, 800.0);
        // Clear win after the minimum duration.
        check(
            72,
            base,
            arm(5000, 0.75, 0.75, 800.0),
            Decision::Promote,
            "is better: quality +0.050",
        );
        // Same win before 48 h: keep testing and say why.
        check(
            24,
            base,
            arm(5000, 0.75, 0.75, 800.0),
            Decision::KeepTesting,
            "ran 24.0 h of the minimum 48 h",
        );
        // Identical arms: keep testing.
        check(
            72,
            base,
            base,
            Decision::KeepTesting,
            "quality +0.000 (+0.0%, 0.700 -> 0.700) not significantly better yet",
        );
        // Much worse quality: rollback, no minimum duration.
        check(
            3,
            base,
            arm(5000, 0.60, 0.70, 800.0),
            Decision::Rollback,
            "quality -0.100 (-14.3%, 0.700 -> 0.600) worse than the champion",
        );
        // Latency 30% worse: guardrail violated.
        check(
            3,
            base,
            arm(5000, 0.70, 0.70, 1040.0),
            Decision::Rollback,
            "latency_ms +240 ms (+30.0%, 800 ms -> 1040 ms) worse than its 10% margin",
        );
        // Better quality but the negative rate not yet shown within its margin keeps testing.
        check(
            72,
            arm(200, 0.70, 0.70, 800.0),
            arm(200, 0.80, 0.70, 800.0),
            Decision::KeepTesting,
            "negative_rate +0.0 pp (+0.0%, 30.0% -> 30.0%) not yet shown within its 15% margin",
        );
        // Too few requests.
        check(
            72,
            arm(99, 0.7, 0.7, 800.0),
            arm(120, 0.7, 0.7, 800.0),
            Decision::KeepTesting,
            "waiting for samples: champion has 99",
        );
    }

    #[test]
    fn no_data_is_never_success() {
        let base = arm(5000, 0.70, 0.70, 800.0);
        let mut no_latency = arm(5000, 0.80, 0.80, 800.0);
        no_latency.n_latency = 0;
        no_latency.sum_latency_ms = 0.0;
        no_latency.sum_latency_ms_sq = 0.0;
        check(
            72,
            base,
            no_latency,
            Decision::KeepTesting,
            "no latency_ms data for v2; no data never counts as passing",
        );
        let mut no_quality = base;
        no_quality.n_quality = 0;
        check(
            72,
            base,
            no_quality,
            Decision::KeepTesting,
            "no quality data for v2",
        );
        let empty = UsageStats::default();
        check(
            72,
            empty,
            empty,
            Decision::KeepTesting,
            "waiting for samples",
        );
    }

    #[test]
    fn min_lift_blocks_negligible_wins() {
        let base = arm(200_000, 0.70, 0.70, 800.0);
        let c = judge_once(
            AbTestConfig::default(),
            72,
            base,
            arm(200_000, 0.703, 0.70, 800.0),
        );
        assert_eq!(c.metrics[0].verdict, MetricVerdict::Better);
        assert_eq!(c.decision, Decision::KeepTesting);
        assert!(
            c.reason.contains("below the minimum lift of +1.0%"),
            "{}",
            c.reason
        );
        let c = judge_once(
            AbTestConfig {
                min_lift: 0.0,
                ..AbTestConfig::default()
            },
            72,
            base,
            arm(200_000, 0.703, 0.70, 800.0),
        );
        assert_eq!(c.decision, Decision::Promote, "{}", c.reason);
    }

    #[test]
    fn sample_ratio_mismatch_holds() {
        let experiment = experiment(&[0.1]);
        // 10% promised, 8% delivered over 20,000 requests.
        let periods = [PeriodStats {
            challenger_weight: 0.1,
            champion: arm(18_400, 0.7, 0.7, 800.0),
            challenger: arm(1_600, 0.9, 0.9, 800.0),
        }];
        let judge = SequentialJudge::new(AbTestConfig::default()).unwrap();
        let c = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            units: &[],
            previous: &[],
            now: start() + Duration::hours(100),
        });
        assert_eq!(c.decision, Decision::Hold);
        assert!(
            c.reason
                .contains("challenger got 8.00% of requests, expected 10.00%"),
            "{}",
            c.reason
        );
        assert!(c.srm.mismatch && c.srm.p_value.unwrap() < 1e-10);
        assert!(
            !c.states.is_empty(),
            "the tests are fed during a hold, so harm can still be acted on"
        );
    }

    /// Cohorts of `units` champion and challenger units (or loose records), each with
    /// `per_unit` requests of quality `q` ± 0.1 and one thumb up out of two feedbacks.
    fn cohorts(units: (u64, u64), per_unit: u64, q: (f64, f64), loose: bool) -> Vec<UnitCohort> {
        let mut b = afs_store::CohortBuilder::new();
        for (challenger, n, q) in [(false, units.0, q.0), (true, units.1, q.1)] {
            for i in 0..n {
                let wobble = if i % 2 == 0 { 0.1 } else { -0.1 };
                let tally = afs_store::UnitTally {
                    n: per_unit,
                    n_quality: per_unit,
                    sum_quality: (q + wobble) * per_unit as f64,
                    n_latency: per_unit,
                    sum_latency_ms: 800.0 * per_unit as f64 + if i % 2 == 0 { 50.0 } else { -50.0 },
                    n_feedback: 2,
                    n_positive: 1,
                    n_negative: 1,
                };
                b.add_unit(0, challenger, &tally, true, loose, None);
            }
        }
        b.finish()
    }

    fn judge_units(units: &[UnitCohort], requests: (u64, u64), hours: i64) -> Comparison {
        let experiment = experiment(&[0.1]);
        let periods = [PeriodStats {
            challenger_weight: 0.1,
            champion: arm(requests.0, 0.7, 0.5, 800.0),
            challenger: arm(requests.1, 0.7, 0.5, 800.0),
        }];
        SequentialJudge::new(AbTestConfig::default())
            .unwrap()
            .judge(&JudgeInput {
                experiment: &experiment,
                periods: &periods,
                units,
                previous: &[],
                now: start() + Duration::hours(hours),
            })
    }

    #[test]
    fn units_are_the_sample_and_every_reason_counts_them() {
        // 1,800 vs 200 users of 10 requests each: the challenger's users score 0.05 lower.
        let units = cohorts((1800, 200), 10, (0.70, 0.60), false);
        let c = judge_units(&units, (18_000, 2_000), 5);
        assert_eq!(c.analysis, Analysis::Units);
        assert_eq!((c.champion_units, c.challenger_units), (1800, 200));
        assert_eq!(c.decision, Decision::Rollback, "{}", c.reason);
        assert!(
            c.reason.ends_with(
                "champion 1800 units (18000 requests), challenger 200 units (2000 requests)"
            ),
            "{}",
            c.reason
        );
        let q = c.metric(Metric::Quality).unwrap();
        assert_eq!((q.champion_units, q.challenger_units), (1800, 200));
        assert_eq!((q.champion_n, q.challenger_n), (18_000, 2_000));
        // The per-unit sd is 0.1 over 200 units, not 0.1/sqrt(10) over 2,000 requests: the
        // variance is that of units, so the interval is about as wide as 200 draws allow.
        let (lo, hi) = q.interval.unwrap();
        assert!(
            hi - lo > 0.02,
            "interval [{lo}, {hi}] too narrow for 200 units"
        );
    }

    #[test]
    fn too_few_units_wait_however_many_requests_they_send() {
        // 30 heavy users on the challenger send 3,000 requests: below 50 units, no decision.
        let units = cohorts((270, 30), 100, (0.70, 0.50), false);
        let c = judge_units(&units, (27_000, 3_000), 5);
        assert_eq!(c.decision, Decision::KeepTesting, "{}", c.reason);
        assert!(
            c.reason
                .contains("waiting for units: champion has 270 and challenger 30 of the 50"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn without_unit_ids_the_judge_decides_per_request_and_says_so() {
        let units = cohorts((1800, 200), 1, (0.70, 0.60), true);
        let c = judge_units(&units, (1_800, 200), 5);
        assert_eq!(c.analysis, Analysis::NoUnitIds);
        assert_eq!(c.decision, Decision::Rollback, "{}", c.reason);
        assert!(
            c.reason
                .contains("analysed per request (no record carries a unit id)"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn a_hold_never_blocks_rolling_back_a_worse_challenger() {
        let experiment = experiment(&[0.1]);
        // The split is off (8% for 10%) and the challenger is much worse.
        let periods = [PeriodStats {
            challenger_weight: 0.1,
            champion: arm(18_400, 0.7, 0.7, 800.0),
            challenger: arm(1_600, 0.5, 0.7, 800.0),
        }];
        let judge = SequentialJudge::new(AbTestConfig::default()).unwrap();
        let c = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            units: &[],
            previous: &[],
            now: start() + Duration::hours(10),
        });
        assert_eq!(c.decision, Decision::Rollback, "{}", c.reason);
        assert!(
            c.reason.contains("also sample ratio mismatch"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn srm_uses_per_period_expected_counts_and_a_materiality_threshold() {
        let config = AbTestConfig::default();
        // 10% for 10,000 requests, then 50% for 10,000: expected 6,000 of 20,000.
        let periods = [
            PeriodStats {
                challenger_weight: 0.1,
                champion: arm(9_000, 0.7, 0.7, 1.0),
                challenger: arm(1_000, 0.7, 0.7, 1.0),
            },
            PeriodStats {
                challenger_weight: 0.5,
                champion: arm(5_000, 0.7, 0.7, 1.0),
                challenger: arm(5_000, 0.7, 0.7, 1.0),
            },
        ];
        let srm = srm_check(&experiment(&[0.1, 0.5]), &periods, &[], &config);
        assert_eq!(srm.expected_challenger_share, Some(0.3));
        assert!(!srm.mismatch && srm.chi_square.unwrap() < 1e-9);
        // A deviation that is significant at huge n but below 0.1 pp is not material.
        let big = [PeriodStats {
            challenger_weight: 0.1,
            champion: arm(89_950_000, 0.7, 0.7, 1.0),
            challenger: arm(10_050_000, 0.7, 0.7, 1.0),
        }];
        let srm = srm_check(&experiment(&[0.1]), &big, &[], &config);
        assert!(srm.p_value.unwrap() < 0.001);
        assert!(!srm.mismatch, "0.05 pp deviation is not material");
    }

    #[test]
    fn periods_are_combined_so_a_mix_shift_is_not_an_effect() {
        // Quality rose for everyone in period 2, when the challenger had more traffic; per
        // period the arms are identical, pooled they are not.
        let periods = [
            PeriodStats {
                challenger_weight: 0.1,
                champion: arm(9_000, 0.60, 0.7, 800.0),
                challenger: arm(1_000, 0.60, 0.7, 800.0),
            },
            PeriodStats {
                challenger_weight: 0.5,
                champion: arm(5_000, 0.80, 0.7, 800.0),
                challenger: arm(5_000, 0.80, 0.7, 800.0),
            },
        ];
        let (a, b) = pooled(&periods);
        let (sa, sb) = (
            Metric::Quality.summarize(&a).unwrap(),
            Metric::Quality.summarize(&b).unwrap(),
        );
        assert!(sb.mean - sa.mean > 0.05, "pooled means differ");
        let (d, v) = stratified_difference(Metric::Quality, &periods, &sa, &sb).unwrap();
        assert!(d.abs() < 1e-12, "stratified difference is zero, got {d}");
        assert!(v > 0.0);
    }

    #[test]
    fn sequential_state_carries_over_looks() {
        let config = AbTestConfig::default();
        let judge = SequentialJudge::new(config).unwrap();
        let experiment = experiment(&[0.5]);
        let periods = [PeriodStats {
            challenger_weight: 0.5,
            champion: arm(5000, 0.70, 0.7, 800.0),
            challenger: arm(5000, 0.75, 0.7, 800.0),
        }];
        let first = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            units: &[],
            previous: &[],
            now: start() + Duration::hours(10),
        });
        let q = first.states.iter().find(|s| s.metric == "quality").unwrap();
        assert_eq!(q.n_looks, 1);
        assert!((q.baseline - 0.70).abs() < 1e-12);
        assert!((q.tau - 0.035).abs() < 1e-12, "tau = 5% of the baseline");
        // The next look sees no difference: the running minimum and the intersection keep
        // what the first look learned.
        let flat = [PeriodStats {
            challenger_weight: 0.5,
            champion: arm(6000, 0.70, 0.7, 800.0),
            challenger: arm(6000, 0.70, 0.7, 800.0),
        }];
        let second = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &flat,
            units: &[],
            previous: &first.states,
            now: start() + Duration::hours(11),
        });
        let q2 = second
            .states
            .iter()
            .find(|s| s.metric == "quality")
            .unwrap();
        assert_eq!(q2.n_looks, 2);
        assert_eq!(q2.p_better, q.p_better);
        assert!(q2.cs_lower >= q.cs_lower && q2.cs_upper <= q.cs_upper);
        assert_eq!(q2.started_at, q.started_at);
    }

    #[test]
    fn seed_score_and_fixed_rule_are_reported() {
        let c = judge_once(
            AbTestConfig::default(),
            72,
            arm(50_000, 0.70, 0.70, 800.0),
            arm(50_000, 0.77, 0.70, 800.0),
        );
        // 0.5 × 10% quality + 0.3 × 0% + 0.2 × 0% = 5%... plus rounding of the feedback.
        let score = c.seed.weighted_improvement.unwrap();
        assert!((score - 0.05).abs() < 1e-9, "{score}");
        assert!(c.seed.fixed_rule_promotes);
        let json = c.to_json();
        assert_eq!(json["decision"], "promote");
        assert_eq!(json["metrics"][0]["metric"], "quality");
        assert!(json["metrics"][0]["interval"][0].as_f64().unwrap() > 0.0);
    }
}
