//! Building a usage log of a given size with `log_batch`, the way an import or backfill would.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use afs_store::UsageStore;
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};

use crate::clock::BenchClock;
use crate::workload::Workload;

/// Records per `log_batch` call.
pub(crate) const BATCH: usize = 5000;

/// A freshly built log, open again after the build settled.
pub(crate) struct Built {
    /// The store, reopened on the settled file (see [`build`]).
    pub(crate) store: SqliteStore,
    /// Timestamp of the newest record: "now" for the windows measured on this log.
    pub(crate) end: DateTime<Utc>,
    /// Seconds spent inside `log_batch` (generation excluded).
    pub(crate) secs: f64,
    /// Bytes of query and response text written.
    pub(crate) text_bytes: u64,
}

/// Writes `n` records of the workload seeded with `seed` to a new database at `path`, then
/// lets the file settle before handing it back: the store is closed (which checkpoints the
/// WAL), the file system is synced, and the store is opened again. Reads measured on it then
/// see what a reader sees on a quiet service, not the tail of the build. Without this, the
/// 1M log's reads overlapped the build's last checkpoints and the writeback of 1.8 GB: its
/// 7-day window took 1.30x and 1.58x the 100k log's in two runs (p95 0.70 ms at 1M); with
/// it, 1.09x and 1.05x (p95 0.36-0.38 ms).
pub(crate) fn build(path: &Path, n: u64, seed: u64, mean_gap: Duration) -> Result<Built> {
    let (store, _clock) = open(path)?;
    let mut workload = Workload::new(seed, mean_gap);
    let mut secs = 0.0;
    let mut written = 0u64;
    let mut next_report = 0u64;
    while written < n {
        let size = BATCH.min((n - written) as usize);
        let records = workload.batch(size);
        let start = Instant::now();
        store.log_batch(records).context("log_batch failed")?;
        secs += start.elapsed().as_secs_f64();
        written += size as u64;
        if written >= next_report {
            eprintln!(
                "  {written:>9} / {n} records ({:.0} rec/s in log_batch)",
                written as f64 / secs.max(1e-9)
            );
            next_report += (n / 10).max(BATCH as u64);
        }
    }
    drop(store);
    let synced = std::process::Command::new("sync").status();
    if !synced.is_ok_and(|status| status.success()) {
        eprintln!("  (sync did not run; reads may overlap the build's writeback)");
    }
    let (store, _clock) = open(path)?;
    Ok(Built {
        store,
        end: workload.last_timestamp(),
        secs,
        text_bytes: workload.text_bytes(),
    })
}

/// Opens the database at `path` with a [`BenchClock`] (the wall clock until pinned).
pub(crate) fn open(path: &Path) -> Result<(SqliteStore, Arc<BenchClock>)> {
    let clock = Arc::new(BenchClock::default());
    let store = SqliteStore::open(SqliteConfig::new(path), clock.clone())
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((store, clock))
}
