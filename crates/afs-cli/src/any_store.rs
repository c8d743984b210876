//! The store `--db` names: a SQLite file (a path) or a PostgreSQL database (a `postgres://`
//! URL). The binary picks the backend here and nowhere else; every command runs on
//! [`AnyStore`], which forwards each trait method to the backend it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use afs_store::backend::{ExperimentBackend, ExperimentTx};
use afs_store::{
    Clock, DedupeReport, ExperimentDump, FeedbackValue, Lease, LeaseStore, NewRun, NewUsage,
    PruneReport, RecordFilter, RecordStream, RestoreStore, Result, RetrainRun, RunOutcome,
    RunStatus, RunStore, StatsWindow, UnitCohort, UnitTally, UsageRecord, UsageStats, UsageStore,
};
use afs_store_postgres::{PgConfig, PgStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Utc};

/// The settings of the store `--db` names.
#[derive(Debug, Clone)]
pub(crate) enum StoreConfig {
    /// A SQLite file.
    Sqlite(SqliteConfig),
    /// A PostgreSQL database.
    Postgres(PgConfig),
}

impl StoreConfig {
    /// The default settings for `--db` (what `afs demo`, which reads no configuration, uses).
    pub(crate) fn defaults_for(db: &Path) -> StoreConfig {
        if is_server(db) {
            StoreConfig::Postgres(PgConfig::new(db.to_string_lossy()))
        } else {
            StoreConfig::Sqlite(SqliteConfig::new(db))
        }
    }

    /// The database for messages: the file's path, or the URL without its password.
    pub(crate) fn shown(&self) -> String {
        match self {
            StoreConfig::Sqlite(config) => config.path.display().to_string(),
            StoreConfig::Postgres(config) => afs_store_postgres::redact_url(&config.url),
        }
    }

    /// The most bytes a free-text field may hold.
    pub(crate) fn max_field_bytes(&self) -> usize {
        match self {
            StoreConfig::Sqlite(config) => config.max_field_bytes,
            StoreConfig::Postgres(config) => config.max_field_bytes,
        }
    }

    /// The SQLite file, or `None` for a server database.
    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            StoreConfig::Sqlite(config) => Some(&config.path),
            StoreConfig::Postgres(_) => None,
        }
    }
}

/// `--db` for messages: the path, or the URL without its password.
pub(crate) fn shown_db(db: &Path) -> String {
    if is_server(db) {
        afs_store_postgres::redact_url(&db.to_string_lossy())
    } else {
        db.display().to_string()
    }
}

/// Whether `--db` names a PostgreSQL database rather than a file.
pub(crate) fn is_server(db: &Path) -> bool {
    db.to_str().is_some_and(afs_store_postgres::is_postgres_url)
}

/// The store of `--db`: one backend or the other.
#[derive(Debug)]
pub(crate) enum AnyStore {
    /// A SQLite file (boxed, like the other: the handles differ in size by hundreds of bytes).
    Sqlite(Box<SqliteStore>),
    /// A PostgreSQL database.
    Postgres(Box<PgStore>),
}

impl AnyStore {
    /// Opens the store `config` describes, reading time from `clock`.
    pub(crate) fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<AnyStore> {
        Ok(match config {
            StoreConfig::Sqlite(config) => {
                AnyStore::Sqlite(Box::new(SqliteStore::open(config, clock)?))
            }
            StoreConfig::Postgres(config) => {
                AnyStore::Postgres(Box::new(PgStore::open(config, clock)?))
            }
        })
    }
}

/// Forwards a call to the backend held.
macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl UsageStore for AnyStore {
    fn clock(&self) -> &dyn Clock {
        each!(self, s => s.clock())
    }
    fn log(&self, record: NewUsage) -> Result<String> {
        each!(self, s => s.log(record))
    }
    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        each!(self, s => s.log_batch(records))
    }
    fn batch_writers(&self) -> usize {
        each!(self, s => s.batch_writers())
    }

    fn batch_rows(&self) -> usize {
        each!(self, s => s.batch_rows())
    }

    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()> {
        each!(self, s => s.record_feedback(id, value, text))
    }
    fn update_quality(&self, id: &str, quality: f64) -> Result<()> {
        each!(self, s => s.update_quality(id, quality))
    }
    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()> {
        each!(self, s => s.update_qualities(scores))
    }
    fn get(&self, id: &str) -> Result<UsageRecord> {
        each!(self, s => s.get(id))
    }
    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>> {
        each!(self, s => s.query(filter))
    }
    fn stats(&self, window: &StatsWindow) -> Result<UsageStats> {
        each!(self, s => s.stats(window))
    }
    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>> {
        each!(self, s => s.stats_by_model(window))
    }
    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>> {
        each!(self, s => s.stats_by_hour(window))
    }
    fn count_quality_samples(
        &self,
        since: Option<DateTime<Utc>>,
        model: Option<&str>,
    ) -> Result<u64> {
        each!(self, s => s.count_quality_samples(since, model))
    }
    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport> {
        each!(self, s => s.dedupe(dry_run))
    }
    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport> {
        each!(self, s => s.prune(cutoff, archive))
    }
    fn forget_unit(&self, unit_id: &str) -> Result<u64> {
        each!(self, s => s.forget_unit(unit_id))
    }
    fn rebuild_rollups(&self) -> Result<()> {
        each!(self, s => s.rebuild_rollups())
    }
    fn files(&self) -> Vec<PathBuf> {
        each!(self, s => s.files())
    }
}

impl RunStore for AnyStore {
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun> {
        each!(self, s => s.begin_run(run))
    }
    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()> {
        each!(self, s => s.set_run_dataset(id, dataset_path, manifest, n_samples))
    }
    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun> {
        each!(self, s => s.finish_run(id, outcome))
    }
    fn run(&self, id: &str) -> Result<RetrainRun> {
        each!(self, s => s.run(id))
    }
    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>> {
        each!(self, s => s.runs(limit))
    }
    fn count_runs(&self, status: RunStatus) -> Result<u64> {
        each!(self, s => s.count_runs(status))
    }
    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>> {
        each!(self, s => s.last_run_with_status(status))
    }
    fn recover_stale_runs(&self) -> Result<Vec<String>> {
        each!(self, s => s.recover_stale_runs())
    }
    fn state(&self, key: &str) -> Result<Option<String>> {
        each!(self, s => s.state(key))
    }
    fn put_state(&self, key: &str, value: &str) -> Result<()> {
        each!(self, s => s.put_state(key, value))
    }
    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()> {
        each!(self, s => s.put_states(entries))
    }
}

impl ExperimentBackend for AnyStore {
    fn max_field_bytes(&self) -> usize {
        each!(self, s => s.max_field_bytes())
    }
    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T> {
        each!(self, s => s.read(f))
    }
    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>,
    ) -> Result<T> {
        each!(self, s => s.write(what, f))
    }
    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        each!(self, s => s.unit_stats(experiment_id, feedback_before))
    }
    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        each!(self, s => s.record_unit_covariates(experiment_id, since))
    }
}

impl RestoreStore for AnyStore {
    fn is_empty(&self) -> Result<bool> {
        match self {
            AnyStore::Sqlite(s) => RestoreStore::is_empty(s.as_ref()),
            AnyStore::Postgres(s) => RestoreStore::is_empty(s.as_ref()),
        }
    }
    fn state_entries(&self) -> Result<Vec<(String, String)>> {
        each!(self, s => s.state_entries())
    }
    fn unit_covariates(&self, experiment_id: i64) -> Result<Vec<(String, UnitTally)>> {
        each!(self, s => s.unit_covariates(experiment_id))
    }
    fn restore_experiments(&self, dump: &ExperimentDump) -> Result<()> {
        each!(self, s => s.restore_experiments(dump))
    }
    fn restore_records(&self, records: &[UsageRecord]) -> Result<()> {
        each!(self, s => s.restore_records(records))
    }
    fn restore_runs(&self, runs: &[RetrainRun]) -> Result<()> {
        each!(self, s => s.restore_runs(runs))
    }
}

impl LeaseStore for AnyStore {
    fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        each!(self, s => s.try_lease(name))
    }
}
