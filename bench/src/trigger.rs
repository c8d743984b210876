//! Issue 4: the cost of one retraining-trigger check with every policy enabled (sample
//! count, schedule, quality drop, Page-Hinkley, error rate), state load and save included,
//! and what the store calls it makes cost on their own.

use std::time::Instant;

use afs_store::{StatsWindow, UsageStore};
use afs_store_sqlite::SqliteStore;
use afs_trigger::{RetrainTrigger, TriggerConfig, TriggerResult, TriggerState};
use anyhow::{Context, Result};
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use crate::clock::BenchClock;
use crate::timing::{repeat, Samples};

/// Untimed checks after the first one, before timing starts.
const WARMUP: usize = 4;

/// Timings of the trigger check on one log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TriggerTimes {
    /// Policies the trigger ran.
    pub(crate) policies: usize,
    /// The very first check: no saved state, so Page-Hinkley is fed the last 7 days hour by
    /// hour.
    pub(crate) first_ms: f64,
    /// Checks with no retrain ever recorded (the sample count covers the whole log), one
    /// simulated hour apart (each feeds one new hour to Page-Hinkley), after the first
    /// check and a few untimed ones; the last one at the newest record.
    pub(crate) check: Samples,
    /// The same after a successful retrain 7 days before (the sample count covers 7 days),
    /// on the hours before those of `check`.
    pub(crate) after_retrain: Samples,
    /// Whether the last timed check triggered, and its reason.
    pub(crate) triggered: bool,
    pub(crate) reason: String,
    /// What the store calls of one check cost on their own, at the newest record.
    pub(crate) parts: Parts,
}

/// The store calls one check makes, timed on their own.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Parts {
    /// `stats` of the last 24 hours (made twice: quality drop and error rate).
    pub(crate) window_24h: Samples,
    /// `stats_by_hour` of the last complete hour (Page-Hinkley).
    pub(crate) last_hour: Samples,
    /// `count_quality_samples` since the start of the log (sample count, never retrained).
    pub(crate) samples_all_time: Samples,
    /// `count_quality_samples` of the last 7 days (sample count after a retrain).
    pub(crate) samples_7d: Samples,
    /// Loading and saving the trigger state.
    pub(crate) state: Samples,
}

/// A config with every policy enabled; thresholds are the defaults.
fn all_policies() -> TriggerConfig {
    TriggerConfig {
        enable_sample_count: true,
        enable_scheduled: true,
        enable_quality_drop: true,
        enable_page_hinkley: true,
        enable_error_rate: true,
        ..TriggerConfig::default()
    }
}

/// Pins the clock `hours` before `end`, checks once (untimed), then times `reps` checks one
/// hour apart after `WARMUP` untimed ones; the last timed check is at `end`.
fn series(
    trigger: &RetrainTrigger,
    store: &SqliteStore,
    clock: &BenchClock,
    end: DateTime<Utc>,
    reps: usize,
) -> Result<(f64, Samples, TriggerResult)> {
    let mut at = end - Duration::hours((1 + WARMUP + reps) as i64);
    clock.pin(at);
    let start = Instant::now();
    trigger.check(store, false).context("first trigger check")?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut last = None;
    let samples = repeat(WARMUP, reps, || {
        at += Duration::hours(1);
        clock.pin(at);
        last = Some(std::hint::black_box(trigger.check(store, false)?));
        Ok(())
    })?;
    Ok((first_ms, samples, last.context("no check ran")?))
}

/// Times `reps` checks on `store`, whose clock is pinned to times within the log so that
/// the 24-hour windows are full of records; `end` is the newest record's time.
pub(crate) fn measure(
    store: &SqliteStore,
    clock: &BenchClock,
    end: DateTime<Utc>,
    reps: usize,
) -> Result<TriggerTimes> {
    let trigger = RetrainTrigger::new(all_policies()).context("invalid trigger config")?;
    let policies = afs_trigger::policies(trigger.config()).len();

    // After a retrain, on the hours before those of the main series.
    let reps_after = (reps / 2).max(1);
    let end_after = end - Duration::hours((1 + WARMUP + reps) as i64);
    let retrained_at = end_after - Duration::hours((1 + WARMUP + reps_after) as i64 + 7 * 24);
    TriggerState {
        last_success_at: Some(retrained_at),
        ..TriggerState::default()
    }
    .save(store)
    .context("cannot save the trigger state")?;
    let (_, after_retrain, _) = series(&trigger, store, clock, end_after, reps_after)?;

    // Never retrained: the state starts empty, as on a new database.
    TriggerState::default()
        .save(store)
        .context("cannot reset the trigger state")?;
    let (first_ms, check, last) = series(&trigger, store, clock, end, reps)?;

    let parts = parts(store, end, reps)?;
    eprintln!(
        "  trigger check ({policies} policies): first {first_ms:.3} ms, then median {:.3} ms, \
         p95 {:.3} ms (after a retrain: median {:.3} ms); {}",
        check.median_ms, check.p95_ms, after_retrain.median_ms, last.reason
    );
    eprintln!(
        "  parts: stats 24 h {:.3} ms, stats_by_hour 1 h {:.3} ms, count_quality_samples all \
         time {:.3} ms, 7 days {:.3} ms, state load+save {:.3} ms",
        parts.window_24h.median_ms,
        parts.last_hour.median_ms,
        parts.samples_all_time.median_ms,
        parts.samples_7d.median_ms,
        parts.state.median_ms
    );
    Ok(TriggerTimes {
        policies,
        first_ms,
        check,
        after_retrain,
        triggered: last.triggered,
        reason: last.reason,
        parts,
    })
}

/// Times each store call of a check at `end` on its own.
fn parts(store: &SqliteStore, end: DateTime<Utc>, reps: usize) -> Result<Parts> {
    let warmup = 2;
    let reps = (reps / 2).max(1);
    let window_24h = StatsWindow {
        since: Some(end - Duration::hours(24)),
        until: Some(end),
        model: None,
    };
    let this_hour = end.duration_trunc(Duration::hours(1)).unwrap_or(end);
    let last_hour = StatsWindow {
        since: Some(this_hour - Duration::hours(1)),
        until: Some(this_hour),
        model: None,
    };
    Ok(Parts {
        window_24h: repeat(warmup, reps, || {
            std::hint::black_box(store.stats(&window_24h)?);
            Ok(())
        })?,
        last_hour: repeat(warmup, reps, || {
            std::hint::black_box(store.stats_by_hour(&last_hour)?);
            Ok(())
        })?,
        samples_all_time: repeat(warmup, reps, || {
            std::hint::black_box(store.count_quality_samples(None, None)?);
            Ok(())
        })?,
        samples_7d: repeat(warmup, reps, || {
            std::hint::black_box(store.count_quality_samples(Some(end - Duration::days(7)), None)?);
            Ok(())
        })?,
        state: repeat(warmup, reps, || {
            let state = TriggerState::load(store)?;
            state.save(store)?;
            Ok(())
        })?,
    })
}
