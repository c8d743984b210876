//! [`UsageStore`] on PostgreSQL: the log, its rollups, group commit and `COPY`.

use std::collections::BTreeMap;
use std::path::Path;

use afs_store::{
    Clock, DedupeReport, FeedbackValue, NewUsage, PruneReport, RecordFilter, RecordStream, Result,
    StatsWindow, UsageRecord, UsageStats, UsageStore,
};
use chrono::{DateTime, Utc};

use crate::store::PgStore;

/// The usage log's in-process state (the group-commit queue).
#[derive(Debug, Default)]
pub(crate) struct UsageState {}

impl UsageState {
    pub(crate) fn new() -> Self {
        UsageState {}
    }
}

impl UsageStore for PgStore {
    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn log(&self, record: NewUsage) -> Result<String> {
        todo!("{record:?}")
    }

    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        todo!("{records:?}")
    }

    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()> {
        todo!("{id}{value:?}{text:?}")
    }

    fn update_quality(&self, id: &str, quality: f64) -> Result<()> {
        todo!("{id}{quality}")
    }

    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()> {
        todo!("{scores:?}")
    }

    fn get(&self, id: &str) -> Result<UsageRecord> {
        todo!("{id}")
    }

    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>> {
        todo!("{filter:?}")
    }

    fn stats(&self, window: &StatsWindow) -> Result<UsageStats> {
        todo!("{window:?}")
    }

    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>> {
        todo!("{window:?}")
    }

    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>> {
        todo!("{window:?}")
    }

    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport> {
        todo!("{dry_run}")
    }

    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport> {
        todo!("{cutoff}{archive:?}")
    }

    fn forget_unit(&self, unit_id: &str) -> Result<u64> {
        todo!("{unit_id}")
    }

    fn rebuild_rollups(&self) -> Result<()> {
        todo!()
    }
}
