//! Per-unit statistics of an experiment, kept on every write while it runs.
//!
//! Definitions are afs-store's ([`afs_store::units`]); the reference is
//! [`afs_store::unit_cohorts_from_records`], and cohorts are built with
//! [`afs_store::CohortBuilder`]. Per unit and arm a row holds the unit's sums
//! ([`UnitTally`]) and its first record's time; records without a unit id (each a unit of its
//! own) are summed per period and arm as a [`UnitCohort`] directly. A look builds the cohorts
//! from the rows (one pass over the units, none over the records), takes out the feedback
//! after a maturity cut (the records with feedback after it), and adds the loose sums.
//!
//! As in SQLite, an ended experiment's statistics stay as they stood when it ended, except
//! that forgetting a unit removes it everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use afs_store::{CohortBuilder, UnitCohort, UnitTally, UsageRecord};

use crate::state::{first_key_at, micros_of, micros_of_key};

/// A unit's row in one arm.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UnitRow {
    first_us: i64,
    tally: UnitTally,
}

/// The per-unit statistics of one experiment.
#[derive(Debug, Clone)]
pub(crate) struct ExpUnits {
    champion: String,
    challenger: String,
    started_us: i64,
    /// Start of each period, by index.
    period_starts: Vec<i64>,
    /// Per unit, its row in the champion's arm and in the challenger's.
    units: HashMap<String, [Option<UnitRow>; 2]>,
    /// Records without a unit id, per period and arm.
    loose: BTreeMap<(u32, bool), UnitCohort>,
    /// Covariate sums per unit (look-back window before the start).
    pub(crate) pre: HashMap<String, UnitTally>,
}

fn tally_of(r: &UsageRecord, count_feedback: bool) -> UnitTally {
    let mut t = UnitTally::default();
    t.add_record(r, count_feedback);
    t
}

fn sub_tally(a: &mut UnitTally, b: &UnitTally) {
    a.n = a.n.saturating_sub(b.n);
    a.n_quality = a.n_quality.saturating_sub(b.n_quality);
    a.sum_quality -= b.sum_quality;
    a.n_latency = a.n_latency.saturating_sub(b.n_latency);
    a.sum_latency_ms -= b.sum_latency_ms;
    a.n_feedback = a.n_feedback.saturating_sub(b.n_feedback);
    a.n_positive = a.n_positive.saturating_sub(b.n_positive);
    a.n_negative = a.n_negative.saturating_sub(b.n_negative);
}

fn sub_cohort(a: &mut UnitCohort, b: &UnitCohort) {
    a.units = a.units.saturating_sub(b.units);
    a.assigned = a.assigned.saturating_sub(b.assigned);
    a.records = a.records.saturating_sub(b.records);
    a.loose_records = a.loose_records.saturating_sub(b.loose_records);
    a.quality.subtract(&b.quality);
    a.latency.subtract(&b.latency);
    a.positive.subtract(&b.positive);
    a.negative.subtract(&b.negative);
}

/// One record without a unit id as a cohort of one unit.
fn loose_cohort(
    r: &UsageRecord,
    period: u32,
    challenger: bool,
    count_feedback: bool,
) -> UnitCohort {
    let mut c = UnitCohort {
        period,
        challenger,
        ..UnitCohort::default()
    };
    c.add_unit(&tally_of(r, count_feedback), true, true, None);
    c
}

impl ExpUnits {
    /// Statistics of an experiment starting at `started_us`, with the records already in
    /// the log at or after its start (normally none).
    pub(crate) fn start(
        champion: &str,
        challenger: &str,
        started_us: i64,
        records: &BTreeMap<i64, UsageRecord>,
    ) -> Self {
        let mut units = ExpUnits {
            champion: champion.to_string(),
            challenger: challenger.to_string(),
            started_us,
            period_starts: vec![started_us],
            units: HashMap::new(),
            loose: BTreeMap::new(),
            pre: HashMap::new(),
        };
        for (&key, r) in records.range(first_key_at(started_us)..) {
            units.add_record(key, r);
        }
        units
    }

    /// Period `index` started at `started_us`: records without a unit id logged since move
    /// to it (normally none; a unit's cohort follows from its first record when read).
    pub(crate) fn start_period(
        &mut self,
        index: u32,
        started_us: i64,
        records: &BTreeMap<i64, UsageRecord>,
    ) {
        let moving: Vec<(i64, &UsageRecord)> = records
            .range(first_key_at(started_us)..)
            .filter(|(_, r)| r.unit_id.is_none() && self.arm(r).is_some())
            .map(|(&k, r)| (k, r))
            .collect();
        for &(key, r) in &moving {
            self.remove_loose(key, r);
        }
        self.period_starts.truncate(index as usize);
        self.period_starts.push(started_us);
        for (key, r) in moving {
            self.add_loose(key, r);
        }
    }

    /// The arm of record `r` (true: challenger) when it belongs to the experiment.
    fn arm(&self, r: &UsageRecord) -> Option<bool> {
        if micros_of(r.timestamp) < self.started_us {
            return None;
        }
        if r.model == self.challenger {
            Some(true)
        } else if r.model == self.champion {
            Some(false)
        } else {
            None
        }
    }

    /// The period containing microsecond `us` (the first for times before it).
    fn period_of(&self, us: i64) -> u32 {
        self.period_starts
            .iter()
            .rposition(|&s| s <= us)
            .unwrap_or(0) as u32
    }

    fn add_loose(&mut self, key: i64, r: &UsageRecord) {
        let Some(arm) = self.arm(r) else { return };
        let period = self.period_of(micros_of_key(key));
        self.loose
            .entry((period, arm))
            .or_insert_with(|| UnitCohort {
                period,
                challenger: arm,
                ..UnitCohort::default()
            })
            .add(&loose_cohort(r, period, arm, true));
    }

    fn remove_loose(&mut self, key: i64, r: &UsageRecord) {
        let Some(arm) = self.arm(r) else { return };
        let period = self.period_of(micros_of_key(key));
        if let Some(c) = self.loose.get_mut(&(period, arm)) {
            sub_cohort(c, &loose_cohort(r, period, arm, true));
            if c.units == 0 {
                self.loose.remove(&(period, arm));
            }
        }
    }

    /// Adds a record of the log (at `key`).
    pub(crate) fn add_record(&mut self, key: i64, r: &UsageRecord) {
        let Some(arm) = self.arm(r) else { return };
        let Some(unit) = &r.unit_id else {
            return self.add_loose(key, r);
        };
        let us = micros_of_key(key);
        if !self.units.contains_key(unit) {
            self.units.insert(unit.clone(), [None, None]);
        }
        let Some(rows) = self.units.get_mut(unit) else {
            return;
        };
        let row = rows[usize::from(arm)].get_or_insert(UnitRow {
            first_us: us,
            tally: UnitTally::default(),
        });
        row.first_us = row.first_us.min(us);
        row.tally.add_record(r, true);
    }

    /// Removes a record that was at `key` (already out of `records` and `by_unit`): a unit
    /// whose first record it was starts at its next one.
    pub(crate) fn remove_record(
        &mut self,
        key: i64,
        r: &UsageRecord,
        records: &BTreeMap<i64, UsageRecord>,
        by_unit: &HashMap<String, BTreeSet<i64>>,
    ) {
        let Some(arm) = self.arm(r) else { return };
        let Some(unit) = &r.unit_id else {
            return self.remove_loose(key, r);
        };
        let Some(rows) = self.units.get_mut(unit) else {
            return;
        };
        let slot = &mut rows[usize::from(arm)];
        let Some(row) = slot.as_mut() else { return };
        sub_tally(&mut row.tally, &tally_of(r, true));
        if row.tally.n == 0 {
            *slot = None;
        } else if row.first_us == micros_of_key(key) {
            let next = by_unit.get(unit).and_then(|keys| {
                keys.range(first_key_at(row.first_us)..)
                    .find(|k| records.get(k).is_some_and(|o| o.model == r.model))
            });
            if let Some(&next) = next {
                row.first_us = micros_of_key(next);
            }
        }
        if rows.iter().all(Option::is_none) {
            self.units.remove(unit);
        }
    }

    /// A record's values changed from `old` to `new` (feedback, quality).
    pub(crate) fn replace_record(&mut self, key: i64, old: &UsageRecord, new: &UsageRecord) {
        let Some(arm) = self.arm(new) else { return };
        let Some(unit) = &new.unit_id else {
            self.remove_loose(key, old);
            return self.add_loose(key, new);
        };
        if let Some(Some(row)) = self
            .units
            .get_mut(unit)
            .map(|rows| &mut rows[usize::from(arm)])
        {
            sub_tally(&mut row.tally, &tally_of(old, true));
            row.tally.add_record(new, true);
        }
    }

    /// Removes every trace of `unit` (its rows and covariates).
    pub(crate) fn forget_unit(&mut self, unit: &str) {
        self.units.remove(unit);
        self.pre.remove(unit);
    }

    /// Replaces the covariates with each unit's sums over the records with a unit id in
    /// `[since_us, start)`; returns how many units have some.
    pub(crate) fn record_covariates(
        &mut self,
        since_us: i64,
        records: &BTreeMap<i64, UsageRecord>,
    ) -> u64 {
        self.pre.clear();
        if since_us < self.started_us {
            for r in records
                .range(first_key_at(since_us)..first_key_at(self.started_us))
                .map(|(_, r)| r)
            {
                if let Some(unit) = &r.unit_id {
                    self.pre
                        .entry(unit.clone())
                        .or_default()
                        .add_record(r, true);
                }
            }
        }
        self.pre.len() as u64
    }

    /// The cohorts (see [`afs_store::ExperimentStore::unit_stats`]). With `cut`, feedback on
    /// records logged at or after it is taken out: the records with feedback in
    /// `[max(cut, start), end)` are read from `with_feedback`.
    pub(crate) fn cohorts(
        &self,
        cut_and_end: Option<(i64, Option<i64>)>,
        records: &BTreeMap<i64, UsageRecord>,
        with_feedback: &BTreeSet<i64>,
    ) -> Vec<UnitCohort> {
        let mut immature: HashMap<(&str, bool), UnitTally> = HashMap::new();
        let mut loose = self.loose.clone();
        if let Some((cut, end)) = cut_and_end {
            let lo = cut.max(self.started_us);
            let hi = end.unwrap_or(i64::MAX);
            if lo < hi {
                for key in with_feedback.range(first_key_at(lo)..first_key_at(hi)) {
                    let Some(r) = records.get(key) else { continue };
                    let Some(arm) = self.arm(r) else { continue };
                    let mut feedback_only = tally_of(r, true);
                    sub_tally(&mut feedback_only, &tally_of(r, false));
                    match &r.unit_id {
                        Some(unit) => {
                            let t = immature.entry((unit.as_str(), arm)).or_default();
                            t.n_feedback += feedback_only.n_feedback;
                            t.n_positive += feedback_only.n_positive;
                            t.n_negative += feedback_only.n_negative;
                        }
                        None => {
                            let period = self.period_of(micros_of_key(*key));
                            if let Some(c) = loose.get_mut(&(period, arm)) {
                                sub_cohort(c, &loose_cohort(r, period, arm, true));
                                c.add(&loose_cohort(r, period, arm, false));
                            }
                        }
                    }
                }
            }
        }
        let mut builder = CohortBuilder::new();
        for (unit, rows) in &self.units {
            for arm in [false, true] {
                let Some(row) = &rows[usize::from(arm)] else {
                    continue;
                };
                let moved = rows[usize::from(!arm)]
                    .as_ref()
                    .is_some_and(|other| other.first_us < row.first_us);
                let mut tally = row.tally;
                if let Some(out) = immature.get(&(unit.as_str(), arm)) {
                    sub_tally(&mut tally, out);
                }
                builder.add_unit(
                    self.period_of(row.first_us),
                    arm,
                    &tally,
                    !moved,
                    false,
                    self.pre.get(unit),
                );
            }
        }
        for cohort in loose.values().filter(|c| c.units > 0) {
            builder.add_cohort(cohort);
        }
        builder
            .finish()
            .into_iter()
            .filter(|c| c.units > 0)
            .collect()
    }
}
