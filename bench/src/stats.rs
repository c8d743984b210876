//! Figure 3: windowed per-model statistics, all-time statistics and a trigger check, read
//! from the rollups.

use afs_store::{StatsWindow, UsageStore};
use afs_store_sqlite::SqliteStore;
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::timing::{repeat, Samples};

/// Timings of the statistics calls on one log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatsTimes {
    /// `stats_by_model` over the last 7 days (edges off the hour).
    pub(crate) window: Samples,
    /// `stats` over all time.
    pub(crate) all_time: Samples,
    /// `count_quality_samples(Some(since), None)`: what one trigger check costs.
    pub(crate) trigger: Samples,
    /// Records in the window, all models together.
    pub(crate) window_total: u64,
    /// Records counted by the all-time statistics (should equal the log size).
    pub(crate) all_time_total: u64,
}

/// Times each call `reps` times after a short warm-up; `end` is the newest record's time.
pub(crate) fn measure(store: &SqliteStore, end: DateTime<Utc>, reps: usize) -> Result<StatsTimes> {
    let warmup = 5;
    let now = end + Duration::seconds(30);
    // Neither edge falls on an hour boundary, so both partial hours are read from the log.
    let window = StatsWindow {
        since: Some(now - Duration::days(7) + Duration::minutes(17)),
        until: Some(now - Duration::minutes(3)),
        model: None,
    };
    let window_total = store
        .stats_by_model(&window)?
        .values()
        .map(|s| s.total)
        .sum();
    let all_time_total = store.stats(&StatsWindow::default())?.total;

    let window_times = repeat(warmup, reps, || {
        std::hint::black_box(store.stats_by_model(&window)?);
        Ok(())
    })?;
    let all_time = repeat(warmup, reps, || {
        std::hint::black_box(store.stats(&StatsWindow::default())?);
        Ok(())
    })?;
    let trigger = repeat(warmup, reps, || {
        std::hint::black_box(store.count_quality_samples(window.since, None)?);
        Ok(())
    })?;
    eprintln!(
        "  stats_by_model 7d: median {:.3} ms, p95 {:.3} ms; stats all time {:.3} ms; trigger check {:.3} ms",
        window_times.median_ms, window_times.p95_ms, all_time.median_ms, trigger.median_ms
    );
    Ok(StatsTimes {
        window: window_times,
        all_time,
        trigger,
        window_total,
        all_time_total,
    })
}
