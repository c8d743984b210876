//! The `UsageStore` trait: the contract every storage backend fulfils.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::error::Result;
use crate::query::{RecordFilter, StatsWindow};
use crate::record::{FeedbackValue, NewUsage, UsageRecord};
use crate::stats::UsageStats;

/// A stream of records, read lazily from the store in pages.
pub type RecordStream<'a> = Box<dyn Iterator<Item = Result<UsageRecord>> + Send + 'a>;

/// What [`UsageStore::dedupe`] found or removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupeReport {
    /// Distinct query/response pairs that occur more than once.
    pub duplicate_groups: u64,
    /// Records that are (dry run) or were removed: all but the newest of each group.
    pub removed: u64,
    /// True when nothing was deleted.
    pub dry_run: bool,
}

/// What [`UsageStore::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records deleted.
    pub removed: u64,
    /// Records written to the archive (equal to `removed` when an archive was asked for).
    pub archived: u64,
}

/// The usage log: production calls with quality scores and feedback, and the per-model
/// aggregates the upper layers read.
///
/// # Contract
///
/// * **Atomicity.** Every method is one transaction: when it returns an error, nothing it
///   was asked to write has been written. [`log_batch`](Self::log_batch) validates every
///   record first; one bad record fails the whole batch with
///   [`crate::StoreError::InvalidBatchRecord`] naming its position, and writes nothing.
/// * **Durability.** A method that writes returns only after its transaction committed;
///   an id returned by [`log`](Self::log) is readable by every other connection and process
///   from that moment.
/// * **Concurrency.** Implementations are shared across threads (`Send + Sync`) and may be
///   opened by several processes at once; contention is waited out inside the store
///   (callers never see "database is locked") and no write is lost.
/// * **Ids** are unique across processes and sort by creation time (ULIDs). Ids of rows
///   imported from the Python module keep their old form and are still accepted everywhere.
/// * **Time** comes from [`clock`](Self::clock): the record timestamp when the caller gives
///   none, `feedback_at`, `created_at`. Timestamps are UTC.
/// * **Aggregates.** [`stats`](Self::stats), [`stats_by_model`](Self::stats_by_model) and
///   [`count_quality_samples`](Self::count_quality_samples) must not scan the log: they
///   read per-model rollups that every write keeps consistent in the same transaction, so
///   their cost grows with the number of hours in the window, not with the number of records.
///   Their results are always equal to what a scan of the log would give.
/// * **Validation.** Bad input yields [`crate::ErrorKind::InvalidInput`] naming the field;
///   an unknown id yields [`crate::ErrorKind::NotFound`]. Driver errors are wrapped as
///   [`crate::ErrorKind::Database`] and never leak their type.
pub trait UsageStore: Send + Sync {
    /// The clock this store stamps records with.
    fn clock(&self) -> &dyn Clock;

    /// Logs one call and returns its new id once committed.
    fn log(&self, record: NewUsage) -> Result<String>;

    /// Logs many calls in one transaction; returns their ids in input order. All or nothing.
    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>>;

    /// How many [`log_batch`](Self::log_batch) calls from different threads this store can
    /// usefully run at once: a hint for importers, which write batches from that many
    /// threads. Batches written at once may commit in either order. 1 by default (a store
    /// that serialises its writers gains nothing from more).
    fn batch_writers(&self) -> usize {
        1
    }

    /// How many records an importer should put in one [`log_batch`](Self::log_batch) when
    /// its user did not say: a hint, any size works. 5,000 by default (on SQLite a
    /// 100k-record `afs import` took 1.8-2.0 s with 5,000 and 2.0-2.1 s with 2,000).
    fn batch_rows(&self) -> usize {
        5000
    }

    /// Sets (or replaces) the feedback of record `id`, stamps `feedback_at` with the clock,
    /// and moves the aggregates from the old value to the new one.
    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()>;

    /// Sets (or replaces) the quality score of record `id`; must be finite and within [0, 1].
    fn update_quality(&self, id: &str, quality: f64) -> Result<()>;

    /// Sets the quality scores of many records in one transaction: all or nothing. Fails,
    /// writing none, if a score is not finite or outside [0, 1]
    /// ([`crate::StoreError::InvalidBatchRecord`] with its position) or an id matches no
    /// record ([`crate::ErrorKind::NotFound`]). Much cheaper per record than
    /// [`update_quality`](Self::update_quality) for more than a few.
    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()>;

    /// One record by id.
    fn get(&self, id: &str) -> Result<UsageRecord>;

    /// The records matching `filter`, streamed: memory does not grow with the result size.
    /// The stream reflects the log as of each page it reads; records logged while it runs
    /// may or may not appear.
    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>>;

    /// Statistics of the records in `window`, from the rollups. Provided: the sum of
    /// [`stats_by_model`](Self::stats_by_model) (a backend with a cheaper total may
    /// override it).
    fn stats(&self, window: &StatsWindow) -> Result<UsageStats> {
        let mut total = UsageStats::default();
        for stats in self.stats_by_model(window)?.values() {
            total.add(stats);
        }
        Ok(total)
    }

    /// Statistics per model of the records in `window` (its `model` field narrows the set).
    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>>;

    /// Hourly statistics of the records in `window`, keyed by the start of each hour that
    /// has records. For charts and for detectors that consume the quality stream in order.
    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>>;

    /// Number of records with a quality score at or after `since` (all time when `None`),
    /// optionally for one model: the `n_quality` of the open window from `since`.
    fn count_quality_samples(
        &self,
        since: Option<DateTime<Utc>>,
        model: Option<&str>,
    ) -> Result<u64> {
        let window = StatsWindow {
            since,
            until: None,
            model: model.map(str::to_string),
        };
        Ok(self.stats(&window)?.n_quality)
    }

    /// Finds records with the same query and response (BLAKE3 key) and, unless `dry_run`,
    /// deletes all but the newest of each group.
    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport>;

    /// Deletes records older than `cutoff`. With `archive`, first writes them as JSON lines
    /// to that file (which must not exist) and syncs it; if writing fails nothing is deleted.
    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport>;

    /// Deletes every record of one unit (user or session); returns how many.
    fn forget_unit(&self, unit_id: &str) -> Result<u64>;

    /// Re-derives every rollup from the log (the log is the source of truth).
    fn rebuild_rollups(&self) -> Result<()>;

    /// The files this store keeps its data in (a database and its journals), existing or
    /// not. Commands that write files never write one of these (see
    /// [`resolve_output`](crate::resolve_output)). Empty for a store without local files.
    fn files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}
