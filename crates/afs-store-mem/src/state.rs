//! The state behind the lock: records in time order, their indexes, the per-minute sums and
//! the per-unit statistics of the running experiment, kept together by the primitives here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use afs_store::{
    Experiment, ExperimentEvent, ModelVersion, RetrainRun, SequentialState, UsageRecord,
};
use chrono::{DateTime, Utc};

use crate::units::ExpUnits;
use crate::window::Minutes;

/// Records per microsecond before a record moves to the next one (SQLite's `ROWID_SLOTS`).
pub(crate) const SLOTS: i64 = 1024;

/// Microseconds since the epoch.
pub(crate) fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time at `us` microseconds since the epoch.
pub(crate) fn time_of_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `t` truncated to the microsecond, as the SQLite store keeps times.
pub(crate) fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    time_of_micros(micros_of(t))
}

/// The first key of microsecond `us` (saturating, so any bound maps to a bound).
pub(crate) fn first_key_at(us: i64) -> i64 {
    us.saturating_mul(SLOTS)
}

/// The microsecond of key `key`.
pub(crate) fn micros_of_key(key: i64) -> i64 {
    key.div_euclid(SLOTS)
}

/// Model versions, experiments and their logs: what the experiment rules read and write.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub(crate) versions: Vec<ModelVersion>,
    pub(crate) experiments: Vec<Experiment>,
    pub(crate) states: BTreeMap<(i64, String), SequentialState>,
}

/// Everything a [`crate::MemStore`] holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Records by key (`ts_us × SLOTS + n`): time order.
    pub(crate) records: BTreeMap<i64, UsageRecord>,
    pub(crate) by_id: HashMap<String, i64>,
    pub(crate) by_unit: HashMap<String, BTreeSet<i64>>,
    /// Keys of the records with feedback.
    pub(crate) with_feedback: BTreeSet<i64>,
    pub(crate) minutes: Minutes,
    pub(crate) runs: BTreeMap<String, RetrainRun>,
    pub(crate) kv: HashMap<String, String>,
    pub(crate) meta: Meta,
    pub(crate) events: Vec<ExperimentEvent>,
    /// Per-unit statistics of every experiment, by id.
    pub(crate) units: HashMap<i64, ExpUnits>,
    /// The running experiment, whose statistics every write keeps current.
    pub(crate) live: Option<i64>,
}

impl State {
    /// The key a record at `ts_us` gets: the first free slot of its microsecond, or of the
    /// next microsecond with room.
    fn free_key(&self, mut ts_us: i64) -> i64 {
        loop {
            let first = first_key_at(ts_us);
            match self.records.range(first..first + SLOTS).next_back() {
                None => return first,
                Some((&last, _)) if last + 1 < first + SLOTS => return last + 1,
                Some(_) => ts_us += 1,
            }
        }
    }

    /// Inserts a new record (its timestamp already truncated to the microsecond); it may
    /// move to a later microsecond when its own is full. Returns its key.
    pub(crate) fn insert(&mut self, mut record: UsageRecord) -> i64 {
        let key = self.free_key(micros_of(record.timestamp));
        record.timestamp = time_of_micros(micros_of_key(key));
        self.by_id.insert(record.id.clone(), key);
        if let Some(unit) = &record.unit_id {
            match self.by_unit.get_mut(unit) {
                Some(keys) => {
                    keys.insert(key);
                }
                None => {
                    self.by_unit.insert(unit.clone(), BTreeSet::from([key]));
                }
            }
        }
        if record.feedback.is_some() {
            self.with_feedback.insert(key);
        }
        self.minutes.add(&record, 1);
        if let Some(live) = self.live.and_then(|id| self.units.get_mut(&id)) {
            live.add_record(key, &record);
        }
        self.records.insert(key, record);
        key
    }

    /// Removes the record at `key` from the log and every index, and from the running
    /// experiment's statistics; with `sums`, also from the per-minute sums (bulk deletes
    /// recompute the minutes instead).
    pub(crate) fn remove(&mut self, key: i64, sums: bool) -> Option<UsageRecord> {
        let record = self.records.remove(&key)?;
        self.by_id.remove(&record.id);
        if let Some(unit) = &record.unit_id {
            if let Some(keys) = self.by_unit.get_mut(unit) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_unit.remove(unit);
                }
            }
        }
        self.with_feedback.remove(&key);
        if sums {
            self.minutes.add(&record, -1);
        }
        if let Some(id) = self.live {
            if let Some(live) = self.units.get_mut(&id) {
                live.remove_record(key, &record, &self.records, &self.by_unit);
            }
        }
        Some(record)
    }

    /// Replaces the values of the record at `key` with `f`'s changes (feedback, quality),
    /// keeping the sums and the running experiment's statistics.
    pub(crate) fn update(&mut self, key: i64, f: impl FnOnce(&mut UsageRecord)) {
        let Some(record) = self.records.get_mut(&key) else {
            return;
        };
        let old = record.clone();
        f(record);
        let new = record.clone();
        self.minutes.add(&old, -1);
        self.minutes.add(&new, 1);
        if new.feedback.is_some() {
            self.with_feedback.insert(key);
        } else {
            self.with_feedback.remove(&key);
        }
        if let Some(live) = self.live.and_then(|id| self.units.get_mut(&id)) {
            live.replace_record(key, &old, &new);
        }
    }

    /// Recomputes the per-minute sums of these (model, minute) buckets from the records.
    pub(crate) fn refresh_minutes(&mut self, touched: BTreeSet<(String, i64)>) {
        for (model, minute) in touched {
            self.minutes.recompute(&model, minute, &self.records);
        }
    }

    /// The newest record's microsecond, if any.
    pub(crate) fn newest_us(&self) -> Option<i64> {
        self.records.keys().next_back().map(|&k| micros_of_key(k))
    }
}
