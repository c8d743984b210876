//! [`MemStore`] and its [`UsageStore`] implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use afs_store::{
    new_id, validate_qualities, validate_quality, validate_time, Clock, DedupeReport,
    FeedbackFilter, FeedbackValue, NewUsage, Order, PruneReport, RecordFields, RecordFilter,
    RecordStream, Result, StatsWindow, StoreError, UsageRecord, UsageStats, UsageStore,
    DEFAULT_MAX_FIELD_BYTES,
};
use chrono::{DateTime, Utc};

use crate::state::{first_key_at, micros_of, to_micros, State};
use crate::window::{minute_of, stats_grouped, Group, Grouping, MINUTE_US};

/// A store in memory: the usage log, retrain runs and state, model versions and
/// experiments, behind one lock. `Send + Sync`; share it in an `Arc`. See the crate
/// documentation for what it keeps of the SQLite store's contracts.
pub struct MemStore {
    clock: Arc<dyn Clock>,
    max_field_bytes: usize,
    state: RwLock<State>,
    /// Names of the leases held (`lease.rs`).
    pub(crate) leases: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("records", &self.lock_read().records.len())
            .field("max_field_bytes", &self.max_field_bytes)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidInput {
        field,
        reason: reason.into(),
    }
}

impl MemStore {
    /// An empty store stamping records with `clock`, with afs-store's default field limit
    /// ([`DEFAULT_MAX_FIELD_BYTES`]).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_max_field_bytes(clock, DEFAULT_MAX_FIELD_BYTES)
    }

    /// An empty store whose text fields may hold at most `max_field_bytes` bytes.
    pub fn with_max_field_bytes(clock: Arc<dyn Clock>, max_field_bytes: usize) -> Self {
        MemStore {
            clock,
            max_field_bytes,
            state: RwLock::new(State::default()),
            leases: Arc::default(),
        }
    }

    /// The most bytes a text field may hold.
    pub fn max_field_bytes(&self) -> usize {
        self.max_field_bytes
    }

    /// Number of records in the log.
    pub fn len(&self) -> usize {
        self.lock_read().records.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while the lock was held leaves no half-applied change behind (every write
    // checks before it changes anything), so a poisoned lock is still usable.
    pub(crate) fn lock_read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock's time to the microsecond.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        to_micros(self.clock.now())
    }

    /// A record without a timestamp (or feedback without a time) takes the clock's time,
    /// which must then lie in the range a record may carry.
    fn check(&self, record: &NewUsage) -> Result<()> {
        record.validate(self.max_field_bytes)?;
        let needs_clock =
            record.timestamp.is_none() || matches!(&record.feedback, Some(f) if f.at.is_none());
        if needs_clock {
            validate_time("timestamp", self.clock.now()).map_err(|e| StoreError::bad_clock(&e))?;
        }
        Ok(())
    }

    /// The stored form of a checked record.
    fn prepare(&self, record: NewUsage) -> UsageRecord {
        let now = self.clock.now();
        let feedback_at = record
            .feedback
            .as_ref()
            .map(|f| to_micros(f.at.unwrap_or(now)));
        let dedupe_hash = record.dedupe_hash();
        let pair_key = record.pair_key();
        let (feedback, feedback_text) = match record.feedback {
            Some(f) => (Some(f.value), f.text),
            None => (None, None),
        };
        UsageRecord {
            id: new_id(now),
            timestamp: to_micros(record.timestamp.unwrap_or(now)),
            dedupe_hash: Some(dedupe_hash),
            pair_key: Some(pair_key),
            query: record.query,
            response: record.response,
            model: record.model,
            expert: record.expert,
            latency_ms: record.latency_ms,
            token_count: record.token_count,
            quality_score: record.quality_score,
            feedback,
            feedback_text,
            feedback_at,
            unit_id: record.unit_id,
            context_hash: record.context_hash,
            created_at: Some(to_micros(now)),
            messages: record.messages,
        }
    }

    fn key_of(state: &State, id: &str) -> Result<i64> {
        state
            .by_id
            .get(id)
            .copied()
            .ok_or_else(|| StoreError::record_not_found(id))
    }

    /// Deletes the records at `keys` and recomputes the minutes they were in.
    fn delete_all(state: &mut State, keys: &[i64]) -> u64 {
        let mut touched = BTreeSet::new();
        let mut removed = 0;
        for &key in keys {
            if let Some(r) = state.remove(key, false) {
                touched.insert((r.model.clone(), minute_of(&r)));
                removed += 1;
            }
        }
        state.refresh_minutes(touched);
        removed
    }
}

/// Whether `r` passes the filter's conditions other than time.
fn matches(f: &RecordFilter, r: &UsageRecord) -> bool {
    if f.model.as_ref().is_some_and(|m| *m != r.model) {
        return false;
    }
    if f.expert
        .as_ref()
        .is_some_and(|e| Some(e) != r.expert.as_ref())
    {
        return false;
    }
    if f.unit_id
        .as_ref()
        .is_some_and(|u| Some(u) != r.unit_id.as_ref())
    {
        return false;
    }
    if let Some(min) = f.min_quality {
        match r.quality_score {
            Some(q) if q >= min => {}
            None if f.keep_unscored => {}
            _ => return false,
        }
    }
    match f.feedback {
        FeedbackFilter::Any => true,
        FeedbackFilter::Present => r.feedback.is_some(),
        FeedbackFilter::Absent => r.feedback.is_none(),
        FeedbackFilter::AtLeast(v) => r.feedback.is_some_and(|f| f.as_i64() >= v),
    }
}

/// The fields [`RecordFields::Training`] keeps.
fn training(r: &UsageRecord) -> UsageRecord {
    UsageRecord {
        id: r.id.clone(),
        timestamp: r.timestamp,
        query: r.query.clone(),
        response: r.response.clone(),
        model: r.model.clone(),
        expert: None,
        latency_ms: None,
        token_count: None,
        quality_score: r.quality_score,
        feedback: r.feedback,
        feedback_text: None,
        feedback_at: None,
        unit_id: None,
        context_hash: None,
        dedupe_hash: None,
        created_at: None,
        pair_key: r.pair_key,
        messages: r.messages.clone(),
    }
}

/// Records read per lock: a stream never holds the lock between pages.
const PAGE: usize = 512;

/// A stream of records read in keyset pages, each under the read lock.
struct Pages<'a> {
    store: &'a MemStore,
    filter: RecordFilter,
    /// Key of the last record returned.
    after: Option<i64>,
    buffer: VecDeque<UsageRecord>,
    remaining: Option<u64>,
    exhausted: bool,
}

impl Pages<'_> {
    fn fetch(&mut self) {
        let state = self.store.lock_read();
        let f = &self.filter;
        let lo = f.since.map(|t| first_key_at(micros_of(t)));
        let hi = f.until.map(|t| first_key_at(micros_of(t)));
        let (lo, hi) = match (self.after, f.order) {
            (Some(a), Order::OldestFirst) => (Some(lo.map_or(a + 1, |l| l.max(a + 1))), hi),
            (Some(a), Order::NewestFirst) => (lo, Some(hi.map_or(a, |h| h.min(a)))),
            (None, _) => (lo, hi),
        };
        if let (Some(l), Some(h)) = (lo, hi) {
            if l >= h {
                self.exhausted = true;
                return;
            }
        }
        let range = (
            lo.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
            hi.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        );
        let want = self
            .remaining
            .map_or(PAGE, |r| usize::try_from(r).unwrap_or(PAGE).min(PAGE));
        // The narrowest index: the unit's records, the records with feedback, or the log.
        let keys: Box<dyn Iterator<Item = i64> + '_> = if let Some(unit) = &f.unit_id {
            match state.by_unit.get(unit) {
                Some(keys) => ordered(keys.range(range).copied(), f.order),
                None => Box::new(std::iter::empty()),
            }
        } else if matches!(
            f.feedback,
            FeedbackFilter::Present | FeedbackFilter::AtLeast(_)
        ) {
            ordered(state.with_feedback.range(range).copied(), f.order)
        } else {
            ordered(state.records.range(range).map(|(&k, _)| k), f.order)
        };
        let mut n = 0;
        let mut last = None;
        for key in keys {
            last = Some(key);
            let Some(r) = state.records.get(&key) else {
                continue;
            };
            if !matches(f, r) {
                continue;
            }
            self.buffer.push_back(match f.fields {
                RecordFields::All => r.clone(),
                RecordFields::Training => training(r),
            });
            n += 1;
            if n == want {
                break;
            }
        }
        self.after = last;
        if n < want {
            self.exhausted = true;
        }
    }
}

fn ordered<'a>(
    keys: impl DoubleEndedIterator<Item = i64> + 'a,
    order: Order,
) -> Box<dyn Iterator<Item = i64> + 'a> {
    match order {
        Order::OldestFirst => Box::new(keys),
        Order::NewestFirst => Box::new(keys.rev()),
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<UsageRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            return None;
        }
        if self.buffer.is_empty() && !self.exhausted {
            self.fetch();
        }
        let record = self.buffer.pop_front()?;
        if let Some(left) = self.remaining.as_mut() {
            *left -= 1;
        }
        Some(Ok(record))
    }
}

/// Writes `records` to a new file at `path` as JSON lines and syncs it; on failure the
/// partial file is removed.
fn write_archive<'a>(records: impl Iterator<Item = &'a UsageRecord>, path: &Path) -> Result<u64> {
    afs_store::write_archive(path, records.map(|r| Ok(r.clone())))
}

impl UsageStore for MemStore {
    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn log(&self, record: NewUsage) -> Result<String> {
        self.check(&record)?;
        let record = self.prepare(record);
        let id = record.id.clone();
        self.lock_write().insert(record);
        Ok(id)
    }

    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        for (index, record) in records.iter().enumerate() {
            self.check(record)
                .map_err(|e| StoreError::InvalidBatchRecord {
                    index,
                    source: Box::new(e),
                })?;
        }
        let rows: Vec<UsageRecord> = records.into_iter().map(|r| self.prepare(r)).collect();
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        let mut state = self.lock_write();
        for row in rows {
            state.insert(row);
        }
        Ok(ids)
    }

    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()> {
        if let Some(text) = text {
            if text.len() > self.max_field_bytes {
                return Err(invalid(
                    "feedback_text",
                    format!(
                        "{} bytes exceeds the limit of {} bytes",
                        text.len(),
                        self.max_field_bytes
                    ),
                ));
            }
        }
        let now = self.clock.now();
        validate_time("feedback_at", now).map_err(|e| StoreError::bad_clock(&e))?;
        let mut state = self.lock_write();
        let key = Self::key_of(&state, id)?;
        state.update(key, |r| {
            r.feedback = Some(value);
            r.feedback_text = text.map(str::to_string);
            r.feedback_at = Some(to_micros(now));
        });
        Ok(())
    }

    fn update_quality(&self, id: &str, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        let mut state = self.lock_write();
        let key = Self::key_of(&state, id)?;
        state.update(key, |r| r.quality_score = Some(quality));
        Ok(())
    }

    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()> {
        validate_qualities(scores)?;
        let mut state = self.lock_write();
        let keys = scores
            .iter()
            .map(|(id, _)| Self::key_of(&state, id))
            .collect::<Result<Vec<_>>>()?;
        for (key, &(_, quality)) in keys.into_iter().zip(scores) {
            state.update(key, |r| r.quality_score = Some(quality));
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Result<UsageRecord> {
        let state = self.lock_read();
        let key = Self::key_of(&state, id)?;
        state
            .records
            .get(&key)
            .cloned()
            .ok_or_else(|| StoreError::record_not_found(id))
    }

    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>> {
        if let Some(q) = filter.min_quality {
            if !q.is_finite() {
                return Err(invalid(
                    "min_quality",
                    format!("{q} is not a finite number"),
                ));
            }
        }
        Ok(Box::new(Pages {
            store: self,
            filter: filter.clone(),
            after: None,
            buffer: VecDeque::new(),
            remaining: filter.limit,
            exhausted: false,
        }))
    }

    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>> {
        let state = self.lock_read();
        Ok(stats_grouped(&state, window, Grouping::Model)
            .into_iter()
            .filter_map(|(group, stats)| match group {
                Group::Model(model) => Some((model, stats)),
                Group::Hour(_) => None,
            })
            .collect())
    }

    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>> {
        let state = self.lock_read();
        Ok(stats_grouped(&state, window, Grouping::Hour)
            .into_iter()
            .filter_map(|(group, stats)| match group {
                Group::Hour(hour) => DateTime::from_timestamp_micros(hour * 60 * MINUTE_US)
                    .map(|start| (start, stats)),
                Group::Model(_) => None,
            })
            .collect())
    }

    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport> {
        let mut state = self.lock_write();
        // Per pair, the newest record (highest key: latest time, then latest insertion).
        let mut newest: HashMap<&str, i64> = HashMap::new();
        for (&key, r) in &state.records {
            if let Some(hash) = r.dedupe_hash.as_deref() {
                newest.insert(hash, key);
            }
        }
        let mut victims = Vec::new();
        let mut groups = BTreeSet::new();
        for (&key, r) in &state.records {
            if let Some(hash) = r.dedupe_hash.as_deref() {
                if newest.get(hash) != Some(&key) {
                    victims.push(key);
                    groups.insert(hash.to_string());
                }
            }
        }
        let report = DedupeReport {
            duplicate_groups: groups.len() as u64,
            removed: victims.len() as u64,
            dry_run,
        };
        if !dry_run {
            Self::delete_all(&mut state, &victims);
        }
        Ok(report)
    }

    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport> {
        let mut state = self.lock_write();
        let end = first_key_at(micros_of(cutoff));
        let mut archived = 0;
        if let Some(path) = archive {
            archived = write_archive(state.records.range(..end).map(|(_, r)| r), path)?;
        }
        let keys: Vec<i64> = state.records.range(..end).map(|(&k, _)| k).collect();
        let removed = Self::delete_all(&mut state, &keys);
        Ok(PruneReport { removed, archived })
    }

    fn forget_unit(&self, unit_id: &str) -> Result<u64> {
        if unit_id.is_empty() {
            return Err(invalid("unit_id", "must not be empty"));
        }
        let mut state = self.lock_write();
        let keys: Vec<i64> = state
            .by_unit
            .get(unit_id)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default();
        let removed = Self::delete_all(&mut state, &keys);
        for units in state.units.values_mut() {
            units.forget_unit(unit_id);
        }
        Ok(removed)
    }

    fn rebuild_rollups(&self) -> Result<()> {
        let mut state = self.lock_write();
        let state = &mut *state;
        state.minutes.clear();
        for r in state.records.values() {
            state.minutes.add(r, 1);
        }
        Ok(())
    }
}
