//! Issue 5: proof by simulation. Runs the simulator of `afs_sim` (the real router, judge,
//! bandit and `AbTest` on the in-memory store, with a manual clock) for the standard
//! scenarios and the sticky-routing check, and cross-checks a few runs through the real
//! SQLite store.

use std::path::Path;
use std::time::Instant;

use std::sync::Arc;

use afs_abtest::{AbTest, AbTestConfig, HashRouter, Router, RoutingTable};
use afs_sim::{
    routing_check, run_experiment, run_scenario, Backend, RoutingCheck, Scenario, ScenarioRates,
};
use afs_store::{
    ExperimentStore, Feedback, FeedbackValue, ManualClock, NewModelVersion, NewUsage, UsageStore,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{Context, Result};
use chrono::{Duration, TimeZone, Utc};
use serde::Serialize;

/// How many simulated experiments to run.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct AbSizes {
    /// Experiments per main scenario (A/A, power, harm).
    pub(crate) runs: usize,
    /// Experiments per secondary scenario (A/A variants and the bandit scenarios).
    pub(crate) secondary_runs: usize,
    /// Unit ids of the routing check.
    pub(crate) routing_units: u64,
    /// A/A experiments run through the real SQLite store and compared with the in-memory
    /// backend, seed by seed.
    pub(crate) sqlite_runs: usize,
    /// Records and units of the check-cost log (issue 13).
    pub(crate) cost_records: u64,
    pub(crate) cost_units: u64,
}

/// One scenario's rates (without the per-run outcomes).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScenarioSummary {
    pub(crate) scenario: String,
    pub(crate) runs: usize,
    pub(crate) base_seed: u64,
    pub(crate) promoted: usize,
    pub(crate) rolled_back: usize,
    pub(crate) rolled_back_within_48h: usize,
    pub(crate) fixed_rule_promoted: usize,
    pub(crate) held: usize,
    pub(crate) median_hours_to_decision: Option<f64>,
    /// Wall time of the runs, seconds.
    pub(crate) secs: f64,
}

impl ScenarioSummary {
    fn new(rates: &ScenarioRates, secs: f64) -> Self {
        ScenarioSummary {
            scenario: rates.scenario.clone(),
            runs: rates.runs,
            base_seed: rates.base_seed,
            promoted: rates.promoted,
            rolled_back: rates.rolled_back,
            rolled_back_within_48h: rates.rolled_back_within_48h,
            fixed_rule_promoted: rates.fixed_rule_promoted,
            held: rates.held,
            median_hours_to_decision: rates.median_hours_to_decision,
            secs,
        }
    }

    fn rate(&self, count: usize) -> f64 {
        count as f64 / self.runs.max(1) as f64
    }

    pub(crate) fn promotion_rate(&self) -> f64 {
        self.rate(self.promoted)
    }

    pub(crate) fn rollback_rate(&self) -> f64 {
        self.rate(self.rolled_back)
    }

    pub(crate) fn rollback_within_48h_rate(&self) -> f64 {
        self.rate(self.rolled_back_within_48h)
    }

    pub(crate) fn fixed_rule_promotion_rate(&self) -> f64 {
        self.rate(self.fixed_rule_promoted)
    }
}

/// The sticky-routing check.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Routing {
    pub(crate) units: u64,
    pub(crate) share_at_10: f64,
    pub(crate) share_at_50: f64,
    pub(crate) unstable: u64,
    pub(crate) moved_back: u64,
    pub(crate) secs: f64,
}

impl Routing {
    fn new(check: &RoutingCheck, secs: f64) -> Self {
        Routing {
            units: check.units,
            share_at_10: check.share_at_10,
            share_at_50: check.share_at_50,
            unstable: check.unstable,
            moved_back: check.moved_back,
            secs,
        }
    }
}

/// Runs through the real SQLite store compared with the in-memory backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SqliteCheck {
    pub(crate) scenario: String,
    pub(crate) runs: usize,
    /// Runs whose outcome (decision, its hour, the fixed rule's hour, the last reason) was
    /// identical in both backends.
    pub(crate) identical: usize,
    /// Seeds of the runs that differed.
    pub(crate) differing_seeds: Vec<u64>,
    /// Wall time of the SQLite runs, seconds.
    pub(crate) secs: f64,
}

/// Everything the group measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbResults {
    pub(crate) sizes: AbSizes,
    pub(crate) base_seed: u64,
    /// Worker threads of the simulator (it spreads the runs over the cores).
    pub(crate) threads: usize,
    pub(crate) scenarios: Vec<ScenarioSummary>,
    pub(crate) routing: Routing,
    pub(crate) sqlite: Option<SqliteCheck>,
    pub(crate) cost: Option<CheckCost>,
}

impl AbResults {
    /// The summary of the scenario named `name`.
    pub(crate) fn scenario(&self, name: &str) -> Option<&ScenarioSummary> {
        self.scenarios.iter().find(|s| s.scenario == name)
    }
}

fn scenario(s: &Scenario, runs: usize, base_seed: u64) -> Result<ScenarioSummary> {
    let start = Instant::now();
    let rates = run_scenario(s, &Backend::Memory, runs, base_seed)
        .with_context(|| format!("simulation of {} failed", s.name))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("  {rates}  ({secs:.1} s)");
    Ok(ScenarioSummary::new(&rates, secs))
}

/// Runs every scenario with the in-memory backend (seeds `base_seed..`), the routing check
/// and the SQLite cross-check (its databases under `dir`).
pub(crate) fn measure(sizes: AbSizes, base_seed: u64, dir: &Path) -> Result<AbResults> {
    // The requirements' scenarios at 10% and 20% challenger weight, then the variants.
    let standard = Scenario::standard();
    let (main, secondary) = standard.split_at(6);
    let mut scenarios = Vec::with_capacity(main.len() + secondary.len());
    for s in main {
        scenarios.push(scenario(s, sizes.runs, base_seed)?);
    }
    for s in secondary {
        scenarios.push(scenario(s, sizes.secondary_runs, base_seed)?);
    }

    let start = Instant::now();
    let check = routing_check(sizes.routing_units, base_seed);
    let routing = Routing::new(&check, start.elapsed().as_secs_f64());
    eprintln!(
        "  routing over {} ids: {:.4} at 10%, {:.4} at 50%, {} unstable, {} moved back ({:.1} s)",
        routing.units,
        routing.share_at_10,
        routing.share_at_50,
        routing.unstable,
        routing.moved_back,
        routing.secs
    );

    let sqlite = if sizes.sqlite_runs > 0 {
        let aa = Scenario::aa();
        let backend = Backend::Sqlite {
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        let mut identical = 0;
        let mut differing_seeds = Vec::new();
        let mut sqlite_secs = 0.0;
        for seed in base_seed..base_seed + sizes.sqlite_runs as u64 {
            let t = Instant::now();
            let real = run_experiment(&aa, &backend, seed)
                .with_context(|| format!("SQLite simulation of seed {seed} failed"))?;
            sqlite_secs += t.elapsed().as_secs_f64();
            let memory = run_experiment(&aa, &Backend::Memory, seed)?;
            let key =
                |o: &afs_sim::RunOutcome| (o.decision, o.decided_at_hour, o.looks, o.held_looks);
            if key(&real) == key(&memory) {
                identical += 1;
            } else {
                differing_seeds.push(seed);
            }
        }
        eprintln!(
            "  {} A/A runs through SQLite: {identical} identical to the memory backend ({:.1} s)",
            sizes.sqlite_runs,
            start.elapsed().as_secs_f64()
        );
        Some(SqliteCheck {
            scenario: aa.name.clone(),
            runs: sizes.sqlite_runs,
            identical,
            differing_seeds,
            secs: sqlite_secs,
        })
    } else {
        None
    };

    eprintln!("[abtest] a check and logging while an experiment runs");
    let cost = Some(measure_cost(dir, sizes.cost_records, sizes.cost_units, 21)?);

    Ok(AbResults {
        sizes,
        cost,
        base_seed,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        scenarios,
        routing,
        sqlite,
    })
}

/// Issue 13: what a look and logging cost while an experiment runs on a big log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckCost {
    /// Records logged in the running experiment.
    pub(crate) records: u64,
    /// Distinct unit ids among them.
    pub(crate) units: u64,
    /// Seconds to build the log (history, experiment records, covariates).
    pub(crate) build_secs: f64,
    /// Median of `reps` whole `AbTest::check` calls (rollups, unit statistics, judge,
    /// decision written), ms.
    pub(crate) check_ms: f64,
    /// Median of `reps` `unit_stats` calls alone, ms.
    pub(crate) unit_stats_ms: f64,
    /// Checks timed.
    pub(crate) reps: usize,
    /// One whole check right after the logging runs below (40,000 new records over many
    /// units): it folds every unit row they changed into the cohort sums, ms.
    pub(crate) check_after_logging_ms: f64,
    /// Unit rows that check folded.
    pub(crate) folded_units: u64,
    /// Single-record logging into the experiment's models, 1 thread, records/s.
    pub(crate) log_one_thread: f64,
    /// The same from 4 threads.
    pub(crate) log_four_threads: f64,
}

/// A record of the cost log: unit `i % units` (one in twenty without a unit id), quality,
/// latency and, for three in ten, feedback.
pub(crate) fn cost_record(
    i: u64,
    units: u64,
    model: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> NewUsage {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    NewUsage {
        unit_id: (h % 20 != 0).then(|| format!("user-{:06}", h % units)),
        quality_score: Some((h % 1000) as f64 / 1000.0),
        latency_ms: Some(20.0 + (h % 500) as f64),
        timestamp: Some(at),
        feedback: (h % 10 < 3).then_some(Feedback {
            value: if h % 7 < 5 {
                FeedbackValue::Positive
            } else {
                FeedbackValue::Negative
            },
            text: None,
            at: None,
        }),
        ..NewUsage::new(format!("query {i}"), "a response of some length", model)
    }
}

/// The arm of record `i`'s unit: sticky at 10% (the router's hash decides, as in service).
pub(crate) fn cost_model(i: u64, units: u64, router: &HashRouter, table: &RoutingTable) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let unit = format!("user-{:06}", h % units);
    table.model(router.route(table, Some(&unit))).to_string()
}

/// Builds a log with a week of history and `records` records of a running 90/10 experiment
/// over `units` units, then times `reps` checks and single-record logging.
pub(crate) fn measure_cost(dir: &Path, records: u64, units: u64, reps: usize) -> Result<CheckCost> {
    let t0 = Utc
        .with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
        .single()
        .context("date")?;
    let clock = Arc::new(ManualClock::new(t0));
    let path = dir.join("experiment-cost.db");
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path), clock.clone())?);
    let ab = AbTest::new(store.clone(), AbTestConfig::default())?;
    let started = Instant::now();
    ab.set_champion(&NewModelVersion::new("v1", "/m/v1"), "bench")?;
    let history = records / 5;
    let spacing = |n: u64| Duration::milliseconds((7 * 24 * 3_600_000 / n.max(1)) as i64);
    for chunk in (0..history).collect::<Vec<_>>().chunks(10_000) {
        store.log_batch(
            chunk
                .iter()
                .map(|&i| cost_record(i, units, "v1", t0 + spacing(history) * i as i32))
                .collect(),
        )?;
    }
    let deployed = t0 + Duration::days(7);
    clock.set(deployed);
    let experiment = ab.deploy_challenger_with_seed(
        &NewModelVersion::new("v2", "/m/v2"),
        Some(0.1),
        7,
        "bench",
    )?;
    let table = ab.routing_table()?;
    let router = HashRouter::seeded(7);
    let mut last = deployed;
    for chunk in (0..records).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                last = deployed + spacing(records) * i as i32;
                let j = history + i;
                cost_record(j, units, &cost_model(j, units, &router, &table), last)
            })
            .collect();
        store.log_batch(batch)?;
    }
    clock.set(last + Duration::seconds(1));
    let build_secs = started.elapsed().as_secs_f64();
    // Looks only: nothing is applied, so the experiment keeps running between them.
    let config = AbTestConfig {
        enable_auto_promotion: false,
        enable_auto_rollback: false,
        ..AbTestConfig::default()
    };
    let looks = AbTest::new(store.clone(), config)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut check = Vec::with_capacity(reps);
    let mut unit_stats = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        looks.check()?;
        check.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        store.unit_stats(experiment.id, None)?;
        unit_stats.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let log_rate = |threads: u64, from: chrono::DateTime<Utc>| -> Result<f64> {
        let n = 20_000u64;
        let prepared: Vec<Vec<NewUsage>> = (0..threads)
            .map(|t| {
                (0..n / threads)
                    .map(|k| {
                        let i = 50_000_000 + t * n + k;
                        let at = from + Duration::microseconds((k * threads + t) as i64 * 100);
                        cost_record(i, units, &cost_model(i, units, &router, &table), at)
                    })
                    .collect()
            })
            .collect();
        let t = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = prepared
                .into_iter()
                .map(|batch| {
                    let store = &store;
                    scope.spawn(move || -> Result<()> {
                        for r in batch {
                            store.log(r)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a logging thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let log_one_thread = log_rate(1, last + Duration::seconds(10))?;
    let log_four_threads = log_rate(4, last + Duration::minutes(10))?;
    let folded_units = {
        let conn = rusqlite::Connection::open(&path)?;
        conn.query_row(
            "SELECT COUNT(*) FROM experiment_unit WHERE experiment_id = ?1 AND dirty = 1",
            [experiment.id],
            |r| r.get::<_, i64>(0),
        )? as u64
    };
    clock.set(last + Duration::minutes(30));
    let t = Instant::now();
    looks.check()?;
    let check_after_logging_ms = t.elapsed().as_secs_f64() * 1e3;
    let cost = CheckCost {
        records,
        units,
        build_secs,
        check_ms: median(check),
        unit_stats_ms: median(unit_stats),
        reps,
        check_after_logging_ms,
        folded_units,
        log_one_thread,
        log_four_threads,
    };
    eprintln!(
        "  experiment of {records} records / {units} units built in {build_secs:.1} s: check {:.2} ms, unit_stats {:.3} ms (medians of {reps}); logging while it runs {:.0} rec/s (1 thread), {:.0} rec/s (4 threads); check after it {:.1} ms ({} unit rows folded)",
        cost.check_ms, cost.unit_stats_ms, cost.log_one_thread, cost.log_four_threads, cost.check_after_logging_ms, cost.folded_units
    );
    drop(looks);
    drop(ab);
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(p));
    }
    Ok(cost)
}
