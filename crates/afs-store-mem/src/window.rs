//! Per-minute sums per model, and statistics over a window from them: whole minutes are
//! read from the sums, the partial minutes at a window's edges are scanned from the log.
//!
//! The resolution is SQLite's (docs/ARCHITECTURE.md, consumer table): a window whose start is
//! on a minute boundary and whose end is after the newest record reads sums only, however
//! many records arrived in the current minute; an edge inside a minute that holds records
//! scans that minute. A window costs the minutes with records in it (per model), not the
//! records.

use std::collections::{BTreeMap, HashMap};

use afs_store::{FeedbackValue, StatsWindow, UsageRecord, UsageStats};

use crate::state::{first_key_at, micros_of, micros_of_key, State};

/// One minute in microseconds.
pub(crate) const MINUTE_US: i64 = 60_000_000;
/// Minutes in an hour.
const MINUTES_PER_HOUR: i64 = 60;

/// The sums of a set of records. Counts are signed so a removal can be applied to them, as
/// sums of floats are.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sums {
    total: i64,
    with_feedback: i64,
    positive: i64,
    negative: i64,
    neutral: i64,
    n_quality: i64,
    sum_quality: f64,
    sum_quality_sq: f64,
    n_latency: i64,
    sum_latency: f64,
    sum_latency_sq: f64,
    tokens: i64,
}

impl Sums {
    /// Adds `sign` (1 or -1) times record `r`.
    fn add_record(&mut self, r: &UsageRecord, sign: i64) {
        let s = sign as f64;
        self.total += sign;
        if let Some(f) = r.feedback {
            self.with_feedback += sign;
            match f {
                FeedbackValue::Positive => self.positive += sign,
                FeedbackValue::Negative => self.negative += sign,
                FeedbackValue::Neutral => self.neutral += sign,
            }
        }
        if let Some(q) = r.quality_score {
            self.n_quality += sign;
            self.sum_quality += s * q;
            self.sum_quality_sq += s * q * q;
        }
        if let Some(l) = r.latency_ms {
            self.n_latency += sign;
            self.sum_latency += s * l;
            self.sum_latency_sq += s * l * l;
        }
        self.tokens += sign * r.token_count.unwrap_or(0);
    }

    fn add(&mut self, o: &Sums) {
        self.total += o.total;
        self.with_feedback += o.with_feedback;
        self.positive += o.positive;
        self.negative += o.negative;
        self.neutral += o.neutral;
        self.n_quality += o.n_quality;
        self.sum_quality += o.sum_quality;
        self.sum_quality_sq += o.sum_quality_sq;
        self.n_latency += o.n_latency;
        self.sum_latency += o.sum_latency;
        self.sum_latency_sq += o.sum_latency_sq;
        self.tokens += o.tokens;
    }

    fn stats(&self) -> UsageStats {
        let count = |n: i64| n.max(0) as u64;
        UsageStats {
            total: count(self.total),
            with_feedback: count(self.with_feedback),
            positive_feedback: count(self.positive),
            negative_feedback: count(self.negative),
            neutral_feedback: count(self.neutral),
            n_quality: count(self.n_quality),
            sum_quality: self.sum_quality,
            sum_quality_sq: self.sum_quality_sq,
            n_latency: count(self.n_latency),
            sum_latency_ms: self.sum_latency,
            sum_latency_ms_sq: self.sum_latency_sq,
            total_tokens: self.tokens,
        }
    }
}

/// Per model, the sums of each minute (minutes since the epoch) that has records.
#[derive(Debug, Default)]
pub(crate) struct Minutes {
    by_model: HashMap<String, BTreeMap<i64, Sums>>,
}

/// The minute of a record.
pub(crate) fn minute_of(r: &UsageRecord) -> i64 {
    micros_of(r.timestamp).div_euclid(MINUTE_US)
}

impl Minutes {
    /// Adds (`sign` 1) or removes (-1) record `r`; a minute left without records goes.
    pub(crate) fn add(&mut self, r: &UsageRecord, sign: i64) {
        if !self.by_model.contains_key(&r.model) {
            self.by_model.insert(r.model.clone(), BTreeMap::new());
        }
        let Some(minutes) = self.by_model.get_mut(&r.model) else {
            return;
        };
        let minute = minute_of(r);
        let sums = minutes.entry(minute).or_default();
        sums.add_record(r, sign);
        if sums.total <= 0 {
            minutes.remove(&minute);
            if minutes.is_empty() {
                self.by_model.remove(&r.model);
            }
        }
    }

    /// Sets the sums of `model`'s `minute` to those of its records in `records`.
    pub(crate) fn recompute(
        &mut self,
        model: &str,
        minute: i64,
        records: &BTreeMap<i64, UsageRecord>,
    ) {
        let mut sums = Sums::default();
        let range = first_key_at(minute * MINUTE_US)..first_key_at((minute + 1) * MINUTE_US);
        for r in records.range(range).map(|(_, r)| r) {
            if r.model == model {
                sums.add_record(r, 1);
            }
        }
        let minutes = self.by_model.entry(model.to_string()).or_default();
        if sums.total > 0 {
            minutes.insert(minute, sums);
        } else {
            minutes.remove(&minute);
            if minutes.is_empty() {
                self.by_model.remove(model);
            }
        }
    }

    /// Forgets every sum (before they are rebuilt).
    pub(crate) fn clear(&mut self) {
        self.by_model.clear();
    }
}

/// How statistics of a window are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouping {
    Model,
    Hour,
}

/// A group: a model, or an hour (hours since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Group {
    Model(String),
    Hour(i64),
}

/// Statistics of `window`, grouped; groups without records are left out.
pub(crate) fn stats_grouped(
    state: &State,
    window: &StatsWindow,
    grouping: Grouping,
) -> BTreeMap<Group, UsageStats> {
    let since = window.since.map(micros_of);
    let mut until = window.until.map(micros_of);
    // An end after the newest record is open: its last minutes are read whole.
    if until.is_some_and(|u| state.newest_us().is_none_or(|newest| newest < u)) {
        until = None;
    }
    let mut out: BTreeMap<Group, Sums> = BTreeMap::new();
    let group_of = |model: &str, minute: i64| match grouping {
        Grouping::Model => Group::Model(model.to_string()),
        Grouping::Hour => Group::Hour(minute.div_euclid(MINUTES_PER_HOUR)),
    };
    // Whole minutes [first, last) from the sums; the rest is scanned.
    let first = since.map(|s| s.div_euclid(MINUTE_US) + i64::from(s.rem_euclid(MINUTE_US) != 0));
    let last = until.map(|u| u.div_euclid(MINUTE_US));
    let mut scans: Vec<(Option<i64>, Option<i64>)> = Vec::new();
    match (first, last) {
        (Some(f), Some(l)) if f >= l => scans.push((since, until)),
        _ => {
            let lo = first.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
            let hi = last.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let models: Vec<(&String, &BTreeMap<i64, Sums>)> = match &window.model {
                Some(m) => state
                    .minutes
                    .by_model
                    .get_key_value(m)
                    .into_iter()
                    .collect(),
                None => state.minutes.by_model.iter().collect(),
            };
            for (model, minutes) in models {
                for (&minute, sums) in minutes.range((lo, hi)) {
                    out.entry(group_of(model, minute)).or_default().add(sums);
                }
            }
            if let (Some(s), Some(f)) = (since, first) {
                if s < f * MINUTE_US {
                    scans.push((Some(s), Some(f * MINUTE_US)));
                }
            }
            if let (Some(u), Some(l)) = (until, last) {
                if l * MINUTE_US < u {
                    scans.push((Some(l * MINUTE_US), Some(u)));
                }
            }
        }
    }
    for (from, to) in scans {
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                continue;
            }
        }
        let lo = from.map_or(std::ops::Bound::Unbounded, |f| {
            std::ops::Bound::Included(first_key_at(f))
        });
        let hi = to.map_or(std::ops::Bound::Unbounded, |t| {
            std::ops::Bound::Excluded(first_key_at(t))
        });
        for (&key, r) in state.records.range((lo, hi)) {
            if window.model.as_ref().is_some_and(|m| *m != r.model) {
                continue;
            }
            let minute = micros_of_key(key).div_euclid(MINUTE_US);
            out.entry(group_of(&r.model, minute))
                .or_default()
                .add_record(r, 1);
        }
    }
    out.into_iter()
        .map(|(group, sums)| (group, sums.stats()))
        .filter(|(_, stats)| stats.total > 0)
        .collect()
}
