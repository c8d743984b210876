//! Figure 1: logging one record per call (`UsageStore::log`), from one thread and from four.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use afs_store::{NewUsage, StatsWindow, SystemClock, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{anyhow, Context, Result};
use chrono::Duration;
use serde::Serialize;

use crate::timing::median;
use crate::workload::Workload;

/// Logging throughput with one and with several threads.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rates {
    /// Records per call-at-a-time run (after warm-up); each rate is the median of [`ROUNDS`].
    pub(crate) n_records: u64,
    /// Records per second from one thread.
    pub(crate) one_thread: f64,
    /// Threads of the second run.
    pub(crate) threads: usize,
    /// Records per second from `threads` threads, same total.
    pub(crate) many_threads: f64,
    /// Records missing from the log after a run (should be none).
    pub(crate) lost: u64,
}

/// Rounds of the two runs. One round of each lasts about a second, and on a 2-core machine
/// the several-thread figure swings by a quarter from one to the next (how many callers a
/// group commit finds depends on when the scheduler wakes them); the medians of alternating
/// rounds are steadier.
const ROUNDS: usize = 3;

/// Measures both runs, [`ROUNDS`] times each, alternating, each in a fresh database under
/// `dir`; reports the median rate of each.
pub(crate) fn measure(dir: &Path, n_records: u64, warmup: u64) -> Result<Rates> {
    let threads = 4;
    let mut one = Vec::with_capacity(ROUNDS);
    let mut many = Vec::with_capacity(ROUNDS);
    let mut lost = 0;
    for round in 1..=ROUNDS {
        eprintln!("[log] round {round}/{ROUNDS}: {n_records} records, one call each, 1 thread");
        let (rate, missing) = run(&dir.join("log-1.db"), 1, n_records, warmup)?;
        eprintln!("  {rate:.0} rec/s");
        one.push(rate);
        lost += missing;
        eprintln!(
            "[log] round {round}/{ROUNDS}: {n_records} records, one call each, {threads} threads"
        );
        let (rate, missing) = run(&dir.join("log-4.db"), threads, n_records, warmup)?;
        eprintln!("  {rate:.0} rec/s");
        many.push(rate);
        lost += missing;
    }
    Ok(Rates {
        n_records,
        one_thread: median(one),
        threads,
        many_threads: median(many),
        lost,
    })
}

/// Logs `warmup` records, then `n_records` split over `threads` threads; returns the timed
/// rate and how many records the log is missing afterwards.
fn run(path: &Path, threads: usize, n_records: u64, warmup: u64) -> Result<(f64, u64)> {
    let store = SqliteStore::open(SqliteConfig::new(path), Arc::new(SystemClock))
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut workload = Workload::new(0x10c + threads as u64, Duration::seconds(1));
    for _ in 0..warmup {
        store
            .log(workload.next_live())
            .context("log failed during warm-up")?;
    }
    // Generate every record before the clock starts, so only the store is timed.
    let per_thread = n_records / threads as u64;
    let shares: Vec<Vec<NewUsage>> = (0..threads)
        .map(|_| (0..per_thread).map(|_| workload.next_live()).collect())
        .collect();

    let store_ref = &store;
    let start = Instant::now();
    thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || -> Result<()> {
                    for record in share {
                        store_ref.log(record).context("log failed")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow!("a logging thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();

    let expected = warmup + per_thread * threads as u64;
    let total = store.stats(&StatsWindow::default())?.total;
    drop(store);
    crate::remove_db(path);
    Ok((
        (per_thread * threads as u64) as f64 / secs,
        expected.saturating_sub(total),
    ))
}
