//! Issue 5: proof by simulation. Runs the simulator of `afs_abtest::sim` (the real router,
//! judge and bandit with a manual clock) for the standard scenarios and the sticky-routing
//! check, and cross-checks a few runs through the real SQLite store.

use std::path::Path;
use std::time::Instant;

use afs_abtest::sim::{
    routing_check, run_experiment, run_scenario, Backend, RoutingCheck, Scenario, ScenarioRates,
};
use anyhow::{Context, Result};
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
            let key = |o: &afs_abtest::sim::RunOutcome| {
                (o.decision, o.decided_at_hour, o.looks, o.held_looks)
            };
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

    Ok(AbResults {
        sizes,
        base_seed,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        scenarios,
        routing,
        sqlite,
    })
}
