//! Per-unit statistics of an experiment: what a unit-level analysis reads.
//!
//! Routing is sticky by unit (a user or session id), so an experiment's arms are groups of
//! *units*, not of independent requests. A unit-level test aggregates every metric per unit
//! first (the unit's mean quality, its thumbs-up share among its feedback, ...) and then
//! compares arms across units. The store keeps, per experiment, one row of sums per unit
//! and arm ([`UnitTally`]), and answers [`ExperimentStore::unit_stats`](crate::ExperimentStore::unit_stats)
//! with the sums of per-unit values over each arm and *cohort* (the period in which the unit
//! was first seen in that arm): [`UnitCohort`]. From those sums a judge gets the per-unit
//! mean, its variance over units, the request-weighted ratio with its delta-method variance,
//! and a CUPED adjustment, without reading any unit.
//!
//! # Definitions (every backend computes exactly these)
//!
//! * A record belongs to an experiment when its model is the experiment's champion or
//!   challenger and its timestamp is at or after the experiment's start (and before its end).
//!   Its arm is the model's.
//! * Its unit is its `unit_id`; **a record without a unit id is a unit of its own**.
//! * A unit's *cohort* in an arm is the period containing its earliest record in that arm.
//!   A unit with records in both arms (it moved when the weight changed) has a row in each;
//!   the later one is *moved* and is not a new assignment for the sample-ratio check.
//! * Per unit and metric: quality y = Σ quality over its scored records, n = their count;
//!   latency likewise; positive (negative) rate: y = thumbs up (down), n = records with
//!   feedback. A unit with n = 0 does not count in that metric. With a maturity cut
//!   (`feedback_before`), only feedback on records logged before it counts.
//! * The covariate of a unit (CUPED) is its own value of the metric over its records in the
//!   look-back window before the experiment started (any model), recorded by
//!   [`ExperimentStore::record_unit_covariates`](crate::ExperimentStore::record_unit_covariates).

use std::collections::BTreeMap;
use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::experiment::Experiment;
use crate::record::{FeedbackValue, UsageRecord};

/// Sums of one unit's records: what the store keeps per unit and arm.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UnitTally {
    /// Records.
    pub n: u64,
    /// Records with a quality score.
    pub n_quality: u64,
    /// Σ quality.
    pub sum_quality: f64,
    /// Records with a latency.
    pub n_latency: u64,
    /// Σ latency, ms.
    pub sum_latency_ms: f64,
    /// Records with feedback (any value).
    pub n_feedback: u64,
    /// Thumbs up.
    pub n_positive: u64,
    /// Thumbs down.
    pub n_negative: u64,
}

impl UnitTally {
    /// Adds one record's values. `count_feedback` false leaves its feedback out (not mature).
    pub fn add(
        &mut self,
        quality: Option<f64>,
        latency_ms: Option<f64>,
        feedback: Option<FeedbackValue>,
        count_feedback: bool,
    ) {
        self.n += 1;
        if let Some(q) = quality {
            self.n_quality += 1;
            self.sum_quality += q;
        }
        if let Some(l) = latency_ms {
            self.n_latency += 1;
            self.sum_latency_ms += l;
        }
        if let (Some(f), true) = (feedback, count_feedback) {
            self.n_feedback += 1;
            match f {
                FeedbackValue::Positive => self.n_positive += 1,
                FeedbackValue::Negative => self.n_negative += 1,
                FeedbackValue::Neutral => {}
            }
        }
    }

    /// Adds a stored record.
    pub fn add_record(&mut self, record: &UsageRecord, count_feedback: bool) {
        self.add(
            record.quality_score,
            record.latency_ms,
            record.feedback,
            count_feedback,
        );
    }

    /// `(y, n)` of one metric: [`UnitMetric`] says which.
    pub fn metric(&self, metric: UnitMetric) -> (f64, u64) {
        match metric {
            UnitMetric::Quality => (self.sum_quality, self.n_quality),
            UnitMetric::Latency => (self.sum_latency_ms, self.n_latency),
            UnitMetric::Positive => (self.n_positive as f64, self.n_feedback),
            UnitMetric::Negative => (self.n_negative as f64, self.n_feedback),
        }
    }
}

/// The four per-unit metrics a [`UnitCohort`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitMetric {
    /// Quality: Σ quality over scored records.
    Quality,
    /// Latency: Σ latency over records with one.
    Latency,
    /// Thumbs up over records with feedback.
    Positive,
    /// Thumbs down over records with feedback.
    Negative,
}

impl UnitMetric {
    /// All four, in the order of the fields of [`UnitCohort`].
    pub const ALL: [UnitMetric; 4] = [
        UnitMetric::Quality,
        UnitMetric::Latency,
        UnitMetric::Positive,
        UnitMetric::Negative,
    ];
}

/// Sums over units of one metric in one arm and cohort.
///
/// For unit u with metric sum y_u over n_u observations (n_u > 0) and mean ȳ_u = y_u/n_u:
/// `units` = K, `sum_mean` = Σȳ_u, `sum_mean_sq` = Σȳ_u², and the ratio form's Σy_u, Σn_u,
/// Σy_u², Σn_u², Σy_u·n_u. The `cov_*` fields sum over the units that also have a covariate
/// x_u (their pre-experiment mean of the same metric).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UnitMoments {
    /// Units with at least one observation (K).
    pub units: u64,
    /// Σ ȳ_u.
    pub sum_mean: f64,
    /// Σ ȳ_u².
    pub sum_mean_sq: f64,
    /// Σ y_u.
    pub sum_y: f64,
    /// Σ n_u.
    pub sum_n: f64,
    /// Σ y_u².
    pub sum_y_sq: f64,
    /// Σ n_u².
    pub sum_n_sq: f64,
    /// Σ y_u·n_u.
    pub sum_yn: f64,
    /// Units (among `units`) with a covariate.
    pub cov_units: u64,
    /// Σ x_u over them.
    pub sum_x: f64,
    /// Σ x_u².
    pub sum_x_sq: f64,
    /// Σ x_u·ȳ_u.
    pub sum_x_mean: f64,
    /// Σ ȳ_u over the units with a covariate.
    pub sum_mean_cov: f64,
}

impl UnitMoments {
    /// The moments of `k` loose records (records without a unit id, each a unit of its own
    /// with n = 1) whose values sum to `sum` and whose squares sum to `sum_sq`.
    pub fn of_loose(k: u64, sum: f64, sum_sq: f64) -> UnitMoments {
        UnitMoments {
            units: k,
            sum_mean: sum,
            sum_mean_sq: sum_sq,
            sum_y: sum,
            sum_n: k as f64,
            sum_y_sq: sum_sq,
            sum_n_sq: k as f64,
            sum_yn: sum,
            ..UnitMoments::default()
        }
    }

    /// Adds one unit with sum `y` over `n` observations (ignored when `n` is 0) and an
    /// optional covariate `x`.
    pub fn add_unit(&mut self, y: f64, n: u64, x: Option<f64>) {
        if n == 0 {
            return;
        }
        let nf = n as f64;
        let mean = y / nf;
        self.units += 1;
        self.sum_mean += mean;
        self.sum_mean_sq += mean * mean;
        self.sum_y += y;
        self.sum_n += nf;
        self.sum_y_sq += y * y;
        self.sum_n_sq += nf * nf;
        self.sum_yn += y * nf;
        if let Some(x) = x {
            self.cov_units += 1;
            self.sum_x += x;
            self.sum_x_sq += x * x;
            self.sum_x_mean += x * mean;
            self.sum_mean_cov += mean;
        }
    }

    /// Adds another disjoint set of units.
    pub fn add(&mut self, other: &UnitMoments) {
        self.units += other.units;
        self.sum_mean += other.sum_mean;
        self.sum_mean_sq += other.sum_mean_sq;
        self.sum_y += other.sum_y;
        self.sum_n += other.sum_n;
        self.sum_y_sq += other.sum_y_sq;
        self.sum_n_sq += other.sum_n_sq;
        self.sum_yn += other.sum_yn;
        self.cov_units += other.cov_units;
        self.sum_x += other.sum_x;
        self.sum_x_sq += other.sum_x_sq;
        self.sum_x_mean += other.sum_x_mean;
        self.sum_mean_cov += other.sum_mean_cov;
    }

    /// Takes away a set of units that [`add`](Self::add) added before (a unit's old
    /// contribution, when its row changes); counts saturate at 0.
    pub fn subtract(&mut self, other: &UnitMoments) {
        self.units = self.units.saturating_sub(other.units);
        self.sum_mean -= other.sum_mean;
        self.sum_mean_sq -= other.sum_mean_sq;
        self.sum_y -= other.sum_y;
        self.sum_n -= other.sum_n;
        self.sum_y_sq -= other.sum_y_sq;
        self.sum_n_sq -= other.sum_n_sq;
        self.sum_yn -= other.sum_yn;
        self.cov_units = self.cov_units.saturating_sub(other.cov_units);
        self.sum_x -= other.sum_x;
        self.sum_x_sq -= other.sum_x_sq;
        self.sum_x_mean -= other.sum_x_mean;
        self.sum_mean_cov -= other.sum_mean_cov;
    }

    /// Whether `other` holds the same moments: unit counts exactly, each sum within
    /// `tolerance` of it (relative, or absolute below 1), since sums of floats added in
    /// another order (another backend, a copy) differ in their last bits.
    pub fn approx_eq(&self, other: &UnitMoments, tolerance: f64) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0);
        self.units == other.units
            && self.cov_units == other.cov_units
            && [
                (self.sum_mean, other.sum_mean),
                (self.sum_mean_sq, other.sum_mean_sq),
                (self.sum_y, other.sum_y),
                (self.sum_n, other.sum_n),
                (self.sum_y_sq, other.sum_y_sq),
                (self.sum_n_sq, other.sum_n_sq),
                (self.sum_yn, other.sum_yn),
                (self.sum_x, other.sum_x),
                (self.sum_x_sq, other.sum_x_sq),
                (self.sum_x_mean, other.sum_x_mean),
                (self.sum_mean_cov, other.sum_mean_cov),
            ]
            .iter()
            .all(|&(a, b)| close(a, b))
    }
}

/// The units of one arm first seen in one period, and their per-unit sums.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UnitCohort {
    /// The period (index into `Experiment::periods`) in which these units were first seen
    /// in this arm.
    pub period: u32,
    /// True for the challenger's units, false for the champion's.
    pub challenger: bool,
    /// Units (with any record) in this arm and cohort.
    pub units: u64,
    /// Of those, units first assigned to the experiment here: not seen in the other arm
    /// before. What the sample-ratio check counts.
    pub assigned: u64,
    /// Records of these units.
    pub records: u64,
    /// Of `units`, records without a unit id, each a unit of its own.
    pub loose_records: u64,
    /// Quality per unit.
    pub quality: UnitMoments,
    /// Latency per unit.
    pub latency: UnitMoments,
    /// Thumbs-up share per unit (among its feedback).
    pub positive: UnitMoments,
    /// Thumbs-down share per unit (among its feedback).
    pub negative: UnitMoments,
}

impl UnitCohort {
    /// The moments of `metric`.
    pub fn metric(&self, metric: UnitMetric) -> &UnitMoments {
        match metric {
            UnitMetric::Quality => &self.quality,
            UnitMetric::Latency => &self.latency,
            UnitMetric::Positive => &self.positive,
            UnitMetric::Negative => &self.negative,
        }
    }

    fn metric_mut(&mut self, metric: UnitMetric) -> &mut UnitMoments {
        match metric {
            UnitMetric::Quality => &mut self.quality,
            UnitMetric::Latency => &mut self.latency,
            UnitMetric::Positive => &mut self.positive,
            UnitMetric::Negative => &mut self.negative,
        }
    }

    /// Adds one unit: its sums, whether it was first assigned here (not moved), whether it
    /// is a loose record, and its covariate sums (pre-experiment), if any.
    pub fn add_unit(
        &mut self,
        tally: &UnitTally,
        assigned: bool,
        loose: bool,
        covariate: Option<&UnitTally>,
    ) {
        self.units += 1;
        self.assigned += u64::from(assigned);
        self.records += tally.n;
        self.loose_records += u64::from(loose);
        for metric in UnitMetric::ALL {
            let (y, n) = tally.metric(metric);
            let x = covariate.and_then(|c| {
                let (xy, xn) = c.metric(metric);
                (xn > 0).then(|| xy / xn as f64)
            });
            self.metric_mut(metric).add_unit(y, n, x);
        }
    }

    /// Whether `other` is the same cohort: period, arm and counts exactly, each metric's
    /// moments within `tolerance` ([`UnitMoments::approx_eq`]).
    pub fn approx_eq(&self, other: &UnitCohort, tolerance: f64) -> bool {
        (
            self.period,
            self.challenger,
            self.units,
            self.assigned,
            self.records,
            self.loose_records,
        ) == (
            other.period,
            other.challenger,
            other.units,
            other.assigned,
            other.records,
            other.loose_records,
        ) && UnitMetric::ALL
            .iter()
            .all(|&m| self.metric(m).approx_eq(other.metric(m), tolerance))
    }

    /// Adds another cohort's units (same period and arm, or a merge for totals).
    pub fn add(&mut self, other: &UnitCohort) {
        self.units += other.units;
        self.assigned += other.assigned;
        self.records += other.records;
        self.loose_records += other.loose_records;
        for metric in UnitMetric::ALL {
            self.metric_mut(metric).add(other.metric(metric));
        }
    }
}

/// Builds cohorts from per-unit tallies: the reference computation that backends and the
/// in-memory simulator share. Keyed by `(period, challenger)`; [`finish`](Self::finish)
/// returns them ordered by period, champion first.
#[derive(Debug, Default, Clone)]
pub struct CohortBuilder {
    cohorts: BTreeMap<(u32, bool), UnitCohort>,
}

impl CohortBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one unit (see [`UnitCohort::add_unit`]).
    pub fn add_unit(
        &mut self,
        period: u32,
        challenger: bool,
        tally: &UnitTally,
        assigned: bool,
        loose: bool,
        covariate: Option<&UnitTally>,
    ) {
        self.cohorts
            .entry((period, challenger))
            .or_insert_with(|| UnitCohort {
                period,
                challenger,
                ..UnitCohort::default()
            })
            .add_unit(tally, assigned, loose, covariate);
    }

    /// Adds a whole cohort's sums to the cohort of the same period and arm.
    pub fn add_cohort(&mut self, cohort: &UnitCohort) {
        self.cohorts
            .entry((cohort.period, cohort.challenger))
            .or_insert_with(|| UnitCohort {
                period: cohort.period,
                challenger: cohort.challenger,
                ..UnitCohort::default()
            })
            .add(cohort);
    }

    /// The cohorts, by period, champion first.
    pub fn finish(self) -> Vec<UnitCohort> {
        self.cohorts.into_values().collect()
    }
}

/// The period of `experiment` that contains `at` (the first one for times before it).
pub fn period_at(experiment: &Experiment, at: DateTime<Utc>) -> u32 {
    experiment
        .periods
        .iter()
        .rev()
        .find(|p| p.started_at <= at)
        .or(experiment.periods.first())
        .map_or(0, |p| p.index)
}

/// The unit statistics of `experiment` computed by scanning records: `records` are the
/// log's records (any models, any order), `feedback_before` the maturity cut, and
/// `covariate_since` the start of the covariate look-back window (`None`: no covariates).
/// This is the definition [`ExperimentStore::unit_stats`](crate::ExperimentStore::unit_stats)
/// must match; backends keep sums instead of scanning.
pub fn unit_cohorts_from_records<'a>(
    experiment: &Experiment,
    records: impl IntoIterator<Item = &'a UsageRecord>,
    feedback_before: Option<DateTime<Utc>>,
    covariate_since: Option<DateTime<Utc>>,
) -> Vec<UnitCohort> {
    struct Row {
        first: DateTime<Utc>,
        tally: UnitTally,
    }
    let in_experiment = |r: &UsageRecord| {
        r.timestamp >= experiment.started_at && experiment.ended_at.is_none_or(|e| r.timestamp < e)
    };
    let mut rows: HashMap<(String, bool), Row> = HashMap::new();
    let mut loose: Vec<(DateTime<Utc>, bool, UnitTally)> = Vec::new();
    let mut history: HashMap<String, UnitTally> = HashMap::new();
    for r in records {
        if let (Some(since), Some(unit)) = (covariate_since, r.unit_id.as_deref()) {
            if r.timestamp >= since && r.timestamp < experiment.started_at {
                history
                    .entry(unit.to_string())
                    .or_default()
                    .add_record(r, true);
            }
        }
        let challenger = if r.model == experiment.challenger {
            true
        } else if r.model == experiment.champion {
            false
        } else {
            continue;
        };
        if !in_experiment(r) {
            continue;
        }
        let mature = feedback_before.is_none_or(|cut| r.timestamp < cut);
        match &r.unit_id {
            Some(unit) => {
                let row = rows.entry((unit.clone(), challenger)).or_insert(Row {
                    first: r.timestamp,
                    tally: UnitTally::default(),
                });
                row.first = row.first.min(r.timestamp);
                row.tally.add_record(r, mature);
            }
            None => {
                let mut tally = UnitTally::default();
                tally.add_record(r, mature);
                loose.push((r.timestamp, challenger, tally));
            }
        }
    }
    let mut builder = CohortBuilder::new();
    for ((unit, challenger), row) in &rows {
        let moved = rows
            .get(&(unit.clone(), !challenger))
            .is_some_and(|other| other.first < row.first);
        builder.add_unit(
            period_at(experiment, row.first),
            *challenger,
            &row.tally,
            !moved,
            false,
            history.get(unit),
        );
    }
    for (at, challenger, tally) in &loose {
        builder.add_unit(
            period_at(experiment, *at),
            *challenger,
            tally,
            true,
            true,
            None,
        );
    }
    builder.finish()
}

/// The sums a backend keeps of the loose records (records without a unit id) of one
/// period and arm; each such record is a unit of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LooseTally {
    /// Records.
    pub n: u64,
    /// Records with a quality score.
    pub n_q: u64,
    /// Σ quality.
    pub sum_q: f64,
    /// Σ quality².
    pub sum_q2: f64,
    /// Records with a latency.
    pub n_lat: u64,
    /// Σ latency.
    pub sum_lat: f64,
    /// Σ latency².
    pub sum_lat2: f64,
    /// Records with feedback.
    pub n_fb: u64,
    /// Thumbs up.
    pub n_pos: u64,
    /// Thumbs down.
    pub n_neg: u64,
}

impl LooseTally {
    /// The cohort of these records in `period` and arm `challenger`.
    pub fn cohort(&self, period: u32, challenger: bool) -> UnitCohort {
        // A thumbs-up (-down) rate of one record is 0 or 1: its square is itself.
        let pos = self.n_pos as f64;
        let neg = self.n_neg as f64;
        UnitCohort {
            period,
            challenger,
            units: self.n,
            assigned: self.n,
            records: self.n,
            loose_records: self.n,
            quality: UnitMoments::of_loose(self.n_q, self.sum_q, self.sum_q2),
            latency: UnitMoments::of_loose(self.n_lat, self.sum_lat, self.sum_lat2),
            positive: UnitMoments::of_loose(self.n_fb, pos, pos),
            negative: UnitMoments::of_loose(self.n_fb, neg, neg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_of_units() {
        let mut m = UnitMoments::default();
        m.add_unit(1.5, 2, Some(0.5));
        m.add_unit(0.0, 0, Some(1.0));
        m.add_unit(0.9, 1, None);
        assert_eq!(m.units, 2);
        assert!((m.sum_mean - 1.65).abs() < 1e-12);
        assert!((m.sum_mean_sq - (0.5625 + 0.81)).abs() < 1e-12);
        assert_eq!((m.sum_n, m.sum_n_sq), (3.0, 5.0));
        assert!((m.sum_yn - (3.0 + 0.9)).abs() < 1e-12);
        assert_eq!(m.cov_units, 1);
        assert!((m.sum_x_mean - 0.375).abs() < 1e-12);
    }
}
