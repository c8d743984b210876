//! `afs migrate`: copies a whole database into a new or empty one (SQLite and PostgreSQL,
//! either way) through [`RestoreStore`], then verifies the copy against the source.
//!
//! Order: experiments first (so the running experiment's per-unit statistics are built by
//! the destination's own triggers as records arrive), then the log, streamed oldest first
//! in batches of `--batch` records (the destination store's size unless given; one
//! transaction each), then runs and controller state.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use afs_store::{
    EventFilter, ExperimentDump, ExperimentStatus, ExperimentStore, Paging, RecordFilter,
    RestoreStore, RunStatus, RunStore, StatsWindow, UnitCohort, UsageStats, UsageStore,
};
use anyhow::{bail, Context};
use serde::Serialize;

use crate::any_store::{shown_db, AnyStore};
use crate::cli::{GlobalArgs, MigrateArgs};
use crate::exit::{Busy, InvalidInput};
use crate::output::{print_json, print_line};
use crate::store_open::{open, Create};

/// Relative tolerance of sums (counts must be equal).
const TOLERANCE: f64 = 1e-9;

/// What was copied, and what the verification found.
#[derive(Debug, Serialize)]
struct Summary {
    from: String,
    to: String,
    records: u64,
    models: usize,
    versions: usize,
    experiments: usize,
    events: usize,
    sequential_states: usize,
    covariate_units: usize,
    runs: usize,
    state_keys: usize,
    running_experiment: Option<i64>,
    verified: bool,
    differences: Vec<String>,
}

/// Runs `afs migrate`.
pub(crate) fn run(global: &GlobalArgs, args: &MigrateArgs) -> anyhow::Result<()> {
    let config = crate::config::load(global)?;
    let (from, to) = (shown_db(&args.from), shown_db(&args.to));
    if args.from == args.to {
        return Err(
            InvalidInput(format!("--from and --to name the same database ({from})")).into(),
        );
    }
    let source = open(config.store_config(&args.from), Create::Never)?;
    let dest = open(config.store_config(&args.to), Create::IfMissing)?;
    refuse_unless_copyable(&source, &dest, &from, &to)?;
    let progress = std::io::stderr().is_terminal() && !global.json;

    // Experiments, with the running one's covariates, before any record.
    let dump = dump_experiments(&source)?;
    let running = dump
        .experiments
        .iter()
        .find(|e| e.status == ExperimentStatus::Running)
        .map(|e| e.id);
    dest.restore_experiments(&dump)
        .with_context(|| format!("cannot copy the experiments into {to}"))?;
    let batch = args.batch.map_or_else(|| dest.batch_rows(), |n| n as usize);
    let records = copy_records(&source, &dest, &to, batch, progress)?;
    let (runs, state_keys) = copy_runs_and_state(&source, &dest, &to)?;
    tracing::info!(records, runs, "copy done; verifying");

    let differences = verify(&source, &dest, records, running)?;
    let summary = Summary {
        from,
        to,
        records,
        models: source.stats_by_model(&StatsWindow::default())?.len(),
        versions: dump.versions.len(),
        experiments: dump.experiments.len(),
        events: dump.events.len(),
        sequential_states: dump.states.iter().map(|(_, s)| s.len()).sum(),
        covariate_units: dump.covariates.iter().map(|(_, c)| c.len()).sum(),
        runs,
        state_keys,
        running_experiment: running,
        verified: differences.is_empty(),
        differences,
    };
    print_summary(&summary, global.json)?;
    if !summary.verified {
        bail!(
            "the copy differs from the source: {}",
            summary.differences.join("; ")
        );
    }
    Ok(())
}

/// `Busy` unless `dest` (shown as `to`) is empty and no retrain run is running on `source`
/// (shown as `from`).
fn refuse_unless_copyable(
    source: &AnyStore,
    dest: &AnyStore,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    if !RestoreStore::is_empty(dest).with_context(|| format!("cannot read {to}"))? {
        return Err(Busy(format!(
            "destination {to} is not empty (it holds records, model versions, experiments, \
             runs or state); afs migrate copies only into a new or empty database; nothing was \
             changed"
        ))
        .into());
    }
    if let Some(run) = source.last_run_with_status(RunStatus::Running)? {
        return Err(Busy(format!(
            "retrain run {} is running on {from}; wait for it to finish (or stop it) before \
             copying; nothing was changed",
            run.id
        ))
        .into());
    }
    Ok(())
}

/// Copies the log into `dest` (shown as `to`), streamed oldest first, in batches of
/// `batch_size` records (one transaction each), counting on stderr when `progress`;
/// returns how many records were copied.
fn copy_records(
    source: &AnyStore,
    dest: &AnyStore,
    to: &str,
    batch_size: usize,
    progress: bool,
) -> anyhow::Result<u64> {
    let filter = RecordFilter {
        paging: Paging::Bulk,
        ..RecordFilter::default()
    };
    let mut records = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    let write = |batch: &mut Vec<afs_store::UsageRecord>, records: &mut u64| {
        dest.restore_records(batch)
            .with_context(|| format!("cannot copy records into {to}"))?;
        *records += batch.len() as u64;
        batch.clear();
        if progress {
            eprint!("\rcopied {records} records");
        }
        anyhow::Ok(())
    };
    for record in source.query(&filter)? {
        batch.push(record?);
        if batch.len() >= batch_size {
            write(&mut batch, &mut records)?;
        }
    }
    if !batch.is_empty() {
        write(&mut batch, &mut records)?;
    }
    if progress {
        eprintln!();
    }
    Ok(records)
}

/// Copies the runs (oldest first) and the controller state into `dest` (shown as `to`);
/// returns how many runs and state keys were copied.
fn copy_runs_and_state(
    source: &AnyStore,
    dest: &AnyStore,
    to: &str,
) -> anyhow::Result<(usize, usize)> {
    let mut runs = source.runs(usize::MAX)?;
    runs.reverse();
    dest.restore_runs(&runs)
        .with_context(|| format!("cannot copy the runs into {to}"))?;
    let state = source.state_entries()?;
    let pairs: Vec<(&str, &str)> = state
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !pairs.is_empty() {
        dest.put_states(&pairs)
            .with_context(|| format!("cannot copy the state into {to}"))?;
    }
    Ok((runs.len(), state.len()))
}

/// Prints what was copied (and, when it was, that the copy was verified), as JSON with
/// `json`.
fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(summary);
    }
    print_line(&format!(
        "copied {} records ({} models), {} versions, {} experiments, {} events, {} runs \
         and {} state keys from {} to {}",
        summary.records,
        summary.models,
        summary.versions,
        summary.experiments,
        summary.events,
        summary.runs,
        summary.state_keys,
        summary.from,
        summary.to
    ))?;
    if summary.verified {
        print_line("verified: record count, stats overall and per model, versions, experiments, events, runs, state and the running experiment's unit statistics match")?;
    }
    Ok(())
}

/// Everything of the experiment store, as [`RestoreStore::restore_experiments`] takes it.
fn dump_experiments(source: &AnyStore) -> anyhow::Result<ExperimentDump> {
    let versions = source.model_versions()?;
    let experiments = source.experiments()?;
    let events = source.events(&EventFilter::default())?;
    let mut states = Vec::new();
    let mut covariates = Vec::new();
    for e in &experiments {
        let s = source.sequential_states(e.id)?;
        if !s.is_empty() {
            states.push((e.id, s));
        }
        if e.status == ExperimentStatus::Running {
            let c = source.unit_covariates(e.id)?;
            if !c.is_empty() {
                covariates.push((e.id, c));
            }
        }
    }
    Ok(ExperimentDump {
        versions,
        experiments,
        events,
        states,
        covariates,
    })
}

/// Whether two sums agree within [`TOLERANCE`] (relative; absolute near zero).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

/// What differs between two sets of statistics, named with `what`.
fn stats_differences(what: &str, a: &UsageStats, b: &UsageStats, out: &mut Vec<String>) {
    let counts = [
        ("total", a.total, b.total),
        ("with_feedback", a.with_feedback, b.with_feedback),
        (
            "positive_feedback",
            a.positive_feedback,
            b.positive_feedback,
        ),
        (
            "negative_feedback",
            a.negative_feedback,
            b.negative_feedback,
        ),
        ("neutral_feedback", a.neutral_feedback, b.neutral_feedback),
        ("quality_samples", a.n_quality, b.n_quality),
        ("latency_samples", a.n_latency, b.n_latency),
    ];
    for (name, x, y) in counts {
        if x != y {
            out.push(format!("{what} {name}: {x} in the source, {y} in the copy"));
        }
    }
    if a.total_tokens != b.total_tokens {
        out.push(format!(
            "{what} total_tokens: {} in the source, {} in the copy",
            a.total_tokens, b.total_tokens
        ));
    }
    let sums = [
        ("sum of quality", a.sum_quality, b.sum_quality),
        ("sum of quality squared", a.sum_quality_sq, b.sum_quality_sq),
        ("sum of latency", a.sum_latency_ms, b.sum_latency_ms),
        (
            "sum of latency squared",
            a.sum_latency_ms_sq,
            b.sum_latency_ms_sq,
        ),
    ];
    for (name, x, y) in sums {
        if !close(x, y) {
            out.push(format!("{what} {name}: {x} in the source, {y} in the copy"));
        }
    }
}

fn cohorts_equal(a: &[UnitCohort], b: &[UnitCohort]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.approx_eq(y, TOLERANCE))
}

/// Compares the copy with the source; returns what differs (empty when all matches).
fn verify(
    source: &AnyStore,
    dest: &AnyStore,
    copied: u64,
    running: Option<i64>,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let all = StatsWindow::default();
    let (a, b) = (source.stats(&all)?, dest.stats(&all)?);
    if copied != a.total || copied != b.total {
        out.push(format!(
            "records: {} in the source, {copied} copied, {} in the copy",
            a.total, b.total
        ));
    }
    stats_differences("stats", &a, &b, &mut out);
    let (by_a, by_b) = (source.stats_by_model(&all)?, dest.stats_by_model(&all)?);
    let models: std::collections::BTreeSet<&String> = by_a.keys().chain(by_b.keys()).collect();
    let none = UsageStats::default();
    for model in models {
        stats_differences(
            &format!("stats of model {model}"),
            by_a.get(model).unwrap_or(&none),
            by_b.get(model).unwrap_or(&none),
            &mut out,
        );
    }
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    counts.insert(
        "model versions",
        (source.model_versions()?.len(), dest.model_versions()?.len()),
    );
    counts.insert(
        "experiments",
        (source.experiments()?.len(), dest.experiments()?.len()),
    );
    let events = EventFilter::default();
    counts.insert(
        "events",
        (source.events(&events)?.len(), dest.events(&events)?.len()),
    );
    counts.insert(
        "runs",
        (source.runs(usize::MAX)?.len(), dest.runs(usize::MAX)?.len()),
    );
    counts.insert(
        "state keys",
        (source.state_entries()?.len(), dest.state_entries()?.len()),
    );
    for (what, (x, y)) in counts {
        if x != y {
            out.push(format!("{what}: {x} in the source, {y} in the copy"));
        }
    }
    if let Some(id) = running {
        let (x, y) = (source.unit_stats(id, None)?, dest.unit_stats(id, None)?);
        if !cohorts_equal(&x, &y) {
            out.push(format!("unit statistics of running experiment {id} differ"));
        }
    }
    Ok(out)
}
