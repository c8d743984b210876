//! Issue 15: what a trigger check, `afs stats --since 24h --by-model` and an experiment
//! check cost however the records arrived: after 100k and 1M records inside the current
//! minute (a bulk import, or a service logging thousands of records a second), and while
//! records are logged at full speed. Each is timed in-process (median of several calls) and
//! as a whole `afs` process (median of several runs of the release binary).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use afs_abtest::{AbTest, AbTestConfig, HashRouter, RoutingTable};
use afs_store::{Clock, ManualClock, NewModelVersion, NewUsage, StatsWindow, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_trigger::{RetrainTrigger, TriggerConfig, TriggerState};
use anyhow::{Context, Result};
use chrono::{DateTime, Duration, DurationRound, SecondsFormat, TimeZone, Utc};
use serde::Serialize;

use crate::timing::median;

/// Distinct users of the log.
const UNITS: u64 = 20_000;
/// Records of history before the burst (a week, for the trigger's baselines).
const HISTORY: u64 = 50_000;
/// Calls timed in-process, and whole processes run, per figure.
const REPS: usize = 7;

/// The figures of one arrival pattern.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pattern {
    /// What arrived: e.g. `100,000 records in the current minute`.
    pub(crate) name: String,
    /// Short key for the figure names (`100k`, `1m`, `logging`).
    pub(crate) key: String,
    /// Seconds to build the log.
    pub(crate) build_secs: f64,
    /// `RetrainTrigger::check` with every policy, median ms.
    pub(crate) trigger_ms: f64,
    /// `stats_by_model` of the last 24 hours (from the start of that minute), median ms.
    pub(crate) stats_ms: f64,
    /// The first `AbTest::check` after the records arrived (it folds the unit rows they
    /// changed), ms.
    pub(crate) experiment_first_ms: f64,
    /// Unit rows that first check folded.
    pub(crate) folded_units: u64,
    /// The checks after it, median ms.
    pub(crate) experiment_ms: f64,
    /// `afs trigger check` as a process, median ms.
    pub(crate) trigger_process_ms: f64,
    /// `afs stats --since 24h --by-model` as a process, median ms.
    pub(crate) stats_process_ms: f64,
    /// `afs ab check` (decisions not applied) as a process, median ms; the first run folds.
    pub(crate) experiment_process_ms: f64,
    /// Records logged while the checks ran (the logging pattern), per second.
    pub(crate) logged_per_sec: Option<f64>,
}

/// All patterns.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BurstTimes {
    pub(crate) patterns: Vec<Pattern>,
}

/// A record of unit `i % UNITS`, as the experiment-cost figures log them.
fn record(i: u64, model: &str, at: DateTime<Utc>) -> NewUsage {
    crate::abtest::cost_record(i, UNITS, model, at)
}

/// The model that serves record `i`'s unit, as the service routes.
fn model_of(i: u64, router: &HashRouter, table: &RoutingTable) -> String {
    crate::abtest::cost_model(i, UNITS, router, table)
}

/// A store with a week of history for `v1`, an experiment `v2` at 10% deployed an hour
/// before `now`, an hour of its traffic, and the clock at `now`.
struct Fixture {
    path: PathBuf,
    clock: Arc<ManualClock>,
    store: Arc<SqliteStore>,
    router: HashRouter,
    table: RoutingTable,
    experiment_id: i64,
    now: DateTime<Utc>,
    next: u64,
}

impl Fixture {
    fn build(dir: &Path, name: &str) -> Result<Fixture> {
        let path = dir.join(format!("burst-{name}.db"));
        remove(&path);
        let t0 = Utc
            .with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
            .single()
            .context("date")?;
        let clock = Arc::new(ManualClock::new(t0));
        let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path), clock.clone())?);
        let ab = AbTest::new(store.clone(), AbTestConfig::default())?;
        ab.set_champion(&NewModelVersion::new("v1", "/m/v1"), "bench")?;
        let week = Duration::days(7);
        let step = week.num_milliseconds() / HISTORY as i64;
        for chunk in (0..HISTORY).collect::<Vec<_>>().chunks(10_000) {
            store.log_batch(
                chunk
                    .iter()
                    .map(|&i| record(i, "v1", t0 + Duration::milliseconds(step * i as i64)))
                    .collect(),
            )?;
        }
        let deployed = t0 + week;
        clock.set(deployed);
        let experiment = ab.deploy_challenger_with_seed(
            &NewModelVersion::new("v2", "/m/v2"),
            Some(0.1),
            7,
            "bench",
        )?;
        let table = ab.routing_table()?;
        let router = HashRouter::seeded(7);
        let mut next = HISTORY;
        let hour: Vec<NewUsage> = (0..3_000)
            .map(|k| {
                let i = next + k;
                record(
                    i,
                    &model_of(i, &router, &table),
                    deployed + Duration::seconds(k as i64),
                )
            })
            .collect();
        next += 3_000;
        store.log_batch(hour)?;
        // One look before the burst: the experiment's first look has work of its own (the
        // units' pre-experiment covariates), which is not what the burst figures measure.
        clock.set(deployed + Duration::hours(1));
        AbTest::new(
            store.clone(),
            AbTestConfig {
                enable_auto_promotion: false,
                enable_auto_rollback: false,
                ..AbTestConfig::default()
            },
        )?
        .check()?;
        let now = deployed + Duration::hours(1) + Duration::seconds(50);
        clock.set(now);
        Ok(Fixture {
            path,
            clock,
            store,
            router,
            table,
            experiment_id: experiment.id,
            now,
            next,
        })
    }

    /// `n` records inside the current minute (from its start to `now`), in batches of
    /// 10,000, as an import or a burst of service traffic writes them.
    fn burst(&mut self, n: u64) -> Result<()> {
        let minute = self
            .now
            .duration_trunc(Duration::minutes(1))
            .unwrap_or(self.now);
        let span = (self.now - minute).num_microseconds().unwrap_or(1).max(1);
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let batch = chunk
                .iter()
                .map(|&k| {
                    let i = self.next + k;
                    let at = minute + Duration::microseconds(span * k as i64 / n as i64);
                    record(i, &model_of(i, &self.router, &self.table), at)
                })
                .collect();
            self.store.log_batch(batch)?;
        }
        self.next += n;
        Ok(())
    }

    fn dirty_units(&self) -> Result<u64> {
        let conn = rusqlite::Connection::open(&self.path)?;
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM experiment_unit WHERE experiment_id = ?1 AND dirty = 1",
            [self.experiment_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Median wall time of `REPS` runs of `afs --db DB ARGS` with the clock at `now`.
fn process_ms(db: &Path, now: DateTime<Utc>, args: &[&str]) -> Result<f64> {
    let afs = crate::import::afs_bin()?;
    let mut times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        let out = Command::new(&afs)
            .arg("--db")
            .arg(db)
            .args(args)
            .env("AFS_NOW", now.to_rfc3339_opts(SecondsFormat::Micros, true))
            .env_remove("AFS_DB")
            .env_remove("AFS_CONFIG")
            .output()
            .with_context(|| format!("cannot run {}", afs.display()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            out.status.success() || out.status.code() == Some(10),
            "afs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(median(times))
}

/// Times the three checks in-process and as processes on `f`.
fn time_checks(f: &Fixture, name: String, key: &str, build_secs: f64) -> Result<Pattern> {
    let trigger = RetrainTrigger::new(TriggerConfig {
        enable_sample_count: true,
        enable_scheduled: true,
        enable_quality_drop: true,
        enable_page_hinkley: true,
        enable_error_rate: true,
        ..TriggerConfig::default()
    })
    .context("invalid trigger config")?;
    TriggerState::default().save(&*f.store)?;
    // The first check feeds Page-Hinkley the last week hour by hour; not what is timed.
    trigger.check(&*f.store, false)?;
    let mut trigger_times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        std::hint::black_box(trigger.check(&*f.store, false)?);
        trigger_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let since = (f.now - Duration::hours(24))
        .duration_trunc(Duration::minutes(1))
        .unwrap_or(f.now);
    let window = StatsWindow {
        since: Some(since),
        until: None,
        model: None,
    };
    let mut stats_times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        std::hint::black_box(f.store.stats_by_model(&window)?);
        stats_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let looks = AbTest::new(
        f.store.clone(),
        AbTestConfig {
            enable_auto_promotion: false,
            enable_auto_rollback: false,
            ..AbTestConfig::default()
        },
    )?;
    let folded_units = f.dirty_units()?;
    let t = Instant::now();
    looks.check()?;
    let experiment_first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut experiment_times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        std::hint::black_box(looks.check()?);
        experiment_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let no_apply = [
        "--set",
        "abtest.enable_auto_promotion=false",
        "--set",
        "abtest.enable_auto_rollback=false",
    ];
    let mut ab_args = vec!["ab", "check"];
    ab_args.extend(no_apply);
    Ok(Pattern {
        name,
        key: key.to_string(),
        build_secs,
        trigger_ms: median(trigger_times),
        stats_ms: median(stats_times),
        experiment_first_ms,
        folded_units,
        experiment_ms: median(experiment_times),
        trigger_process_ms: process_ms(&f.path, f.now, &["trigger", "check"])?,
        stats_process_ms: process_ms(&f.path, f.now, &["stats", "--since", "24h", "--by-model"])?,
        experiment_process_ms: process_ms(&f.path, f.now, &ab_args)?,
        logged_per_sec: None,
    })
}

/// The burst patterns (`bursts` records each in the current minute), then the logging one.
pub(crate) fn measure(dir: &Path, bursts: &[u64]) -> Result<BurstTimes> {
    let mut patterns = Vec::new();
    for &n in bursts {
        let started = Instant::now();
        let mut f = Fixture::build(dir, &format!("{n}"))?;
        f.burst(n)?;
        let build_secs = started.elapsed().as_secs_f64();
        let key = if n >= 1_000_000 {
            format!("{}m", n / 1_000_000)
        } else {
            format!("{}k", n / 1_000)
        };
        let p = time_checks(
            &f,
            format!(
                "{} records in the current minute",
                crate::report::thousands(n)
            ),
            &key,
            build_secs,
        )?;
        report(&p);
        patterns.push(p);
        let path = f.path.clone();
        drop(f);
        remove(&path);
    }

    // Logging at full speed (one record per call, two threads) while the checks run.
    let started = Instant::now();
    let f = Fixture::build(dir, "logging")?;
    let build_secs = started.elapsed().as_secs_f64();
    let stop = AtomicBool::new(false);
    let logged = AtomicU64::new(0);
    let mut p = std::thread::scope(|scope| -> Result<Pattern> {
        let loggers: Vec<_> = (0..2u64)
            .map(|t| {
                let (store, router, table, stop, logged) =
                    (&f.store, &f.router, &f.table, &stop, &logged);
                let base = f.next + t * 100_000_000;
                let clock = &f.clock;
                scope.spawn(move || -> Result<()> {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let i = base + k;
                        let at = clock.now() - Duration::milliseconds(1);
                        store.log(record(i, &model_of(i, router, table), at))?;
                        logged.fetch_add(1, Ordering::Relaxed);
                        k += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        let t = Instant::now();
        let p = time_checks(
            &f,
            "logging one record per call at full speed (2 threads) meanwhile".into(),
            "logging",
            build_secs,
        );
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for l in loggers {
            l.join()
                .map_err(|_| anyhow::anyhow!("a logging thread panicked"))??;
        }
        let mut p = p?;
        p.logged_per_sec = Some(logged.load(Ordering::Relaxed) as f64 / secs);
        Ok(p)
    })?;
    p.name = format!(
        "{} ({:.0} records/s logged)",
        p.name,
        p.logged_per_sec.unwrap_or(0.0)
    );
    report(&p);
    patterns.push(p);
    let path = f.path.clone();
    drop(f);
    remove(&path);
    Ok(BurstTimes { patterns })
}

fn report(p: &Pattern) {
    eprintln!(
        "  {} (built in {:.0} s): in-process trigger {:.2} ms, stats 24h by model {:.2} ms, \
         experiment check {:.2} ms (first after the records {:.1} ms folding {} units); \
         processes: trigger {:.1} ms, stats {:.1} ms, ab check {:.1} ms",
        p.name,
        p.build_secs,
        p.trigger_ms,
        p.stats_ms,
        p.experiment_ms,
        p.experiment_first_ms,
        p.folded_units,
        p.trigger_process_ms,
        p.stats_process_ms,
        p.experiment_process_ms
    );
}
