//! `afs retrain`: check the triggers and, when one fires, generate a dataset and run the
//! trainer command; and `afs runs`: the history of those runs.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use afs_datagen::{DatagenError, GenerationResult};
use afs_store::{RetrainRun, RunStatus, RunStore};
use afs_trigger::{AutoRetrainer, RetrainOutcome, RetrainTrigger, TriggerResult};
use serde::Serialize;

use crate::cli::{GlobalArgs, RetrainArgs, RunsArgs};
use crate::commands::trigger::describe;
use crate::config::{self, generator_key};
use crate::exit::{Busy, Interrupted, InvalidInput, RunFailed};
use crate::interrupt;
use crate::output::{
    count, duration, left_table, print_json, print_line, rfc3339, stdout_error, RunJson,
};
use crate::store_open::{configured, open, Create};

/// The JSON output of `afs retrain`.
#[derive(Debug, Serialize)]
struct RetrainJson<'a> {
    /// `completed`, `not_triggered`, `already_running`, `refused` or `failed`.
    outcome: &'static str,
    /// The trigger check's result.
    trigger: &'a TriggerResult,
    /// The run, when one was started.
    run: Option<RunJson<'a>>,
    /// The dataset generation's result, when the dataset was generated.
    dataset: Option<&'a GenerationResult>,
    /// Why nothing started (`already_running`).
    reason: Option<&'a str>,
}

/// Runs one retrain check, and the retrain when it is due.
pub(crate) fn run(global: &GlobalArgs, args: &RetrainArgs) -> anyhow::Result<()> {
    let config = config::load(global)?;
    let trainer = crate::trainer::from_flags(
        args.train_cmd.as_deref(),
        args.timeout,
        "--timeout",
        &config,
    )?;
    let mut retrainer = config.retrain.retrainer();
    if let Some(dir) = &args.output_dir {
        retrainer.output_dir = dir.clone();
    }
    if let Some(n) = args.min_samples {
        retrainer.min_samples_for_retrain = n;
    }
    // The file's generator settings were checked when it was read, except that a rehearsal
    // share needs an existing file; refuse that here rather than record a failed run.
    if let Err(DatagenError::InvalidConfig { field, reason }) = config.generator.validate() {
        return Err(InvalidInput(format!(
            "invalid {}: {reason}",
            config.key_name(&generator_key(field))
        ))
        .into());
    }

    let trigger = RetrainTrigger::new(config.trigger.clone())?;
    let store = open(config.store_config(&global.db), Create::Never)?;
    let stop_trainer = Arc::new(AtomicBool::new(false));
    // One flag stops whichever is running: the dataset generation or the trainer.
    let retrainer = AutoRetrainer::new(trigger, config.generator.clone(), retrainer)
        .stop_generation_on(stop_trainer.clone());
    interrupt::install(
        stop_trainer.clone(),
        vec![interrupt::Step::SetFlag(
            "afs retrain: stopping the trainer or the dataset generation (send the signal again to \
             exit at once)",
        )],
        interrupt::RUN_LEFT_UNFINISHED,
    )?;
    let trainer = trainer.interrupt_on(stop_trainer);
    tracing::debug!(?retrainer, ?trainer, "checking and retraining");
    let outcome = retrainer.check_and_retrain(&store, &trainer, args.force)?;

    if global.json {
        print_json(&outcome_json(&outcome))?;
    } else {
        print_line(describe_outcome(&outcome).trim_end())?;
    }
    match &outcome {
        RetrainOutcome::NotTriggered(_) | RetrainOutcome::Completed { .. } => Ok(()),
        RetrainOutcome::AlreadyRunning { reason, .. } => {
            Err(Busy(format!("another retrain is running: {reason}")).into())
        }
        RetrainOutcome::Failed { run, .. } if run.status == RunStatus::Interrupted => {
            Err(Interrupted(format!("retrain run {} interrupted", run.id)).into())
        }
        RetrainOutcome::Refused { run, .. } | RetrainOutcome::Failed { run, .. } => {
            Err(RunFailed(format!(
                "retrain run {} {}: {}",
                run.id,
                run.status.as_str(),
                run.error.as_deref().unwrap_or("no error recorded")
            ))
            .into())
        }
    }
}

fn outcome_json(outcome: &RetrainOutcome) -> RetrainJson<'_> {
    let (name, trigger, dataset, reason) = match outcome {
        RetrainOutcome::NotTriggered(trigger) => ("not_triggered", trigger, None, None),
        RetrainOutcome::AlreadyRunning { trigger, reason } => {
            ("already_running", trigger, None, Some(reason.as_str()))
        }
        RetrainOutcome::Refused {
            trigger, dataset, ..
        } => ("refused", trigger, Some(dataset.as_ref()), None),
        RetrainOutcome::Completed {
            trigger, dataset, ..
        } => ("completed", trigger, Some(dataset.as_ref()), None),
        RetrainOutcome::Failed { trigger, .. } => ("failed", trigger, None, None),
    };
    RetrainJson {
        outcome: name,
        trigger,
        run: outcome.run().map(RunJson::from),
        dataset,
        reason,
    }
}

/// The readable outcome.
fn describe_outcome(outcome: &RetrainOutcome) -> String {
    match outcome {
        RetrainOutcome::NotTriggered(trigger) => format!("no retrain: {}", describe(trigger)),
        RetrainOutcome::AlreadyRunning { trigger, reason } => format!(
            "not started: another retrain is running ({reason})\n  trigger: {}\n",
            trigger_line(trigger)
        ),
        RetrainOutcome::Refused { run, trigger, .. } => {
            format!(
                "retrain refused: run {}\n{}",
                run.id,
                run_lines(run, trigger)
            )
        }
        RetrainOutcome::Completed { run, trigger, .. } => {
            format!(
                "retrain completed: run {}\n{}",
                run.id,
                run_lines(run, trigger)
            )
        }
        RetrainOutcome::Failed { run, trigger } => format!(
            "retrain {}: run {}\n{}",
            run.status.as_str(),
            run.id,
            run_lines(run, trigger)
        ),
    }
}

fn trigger_line(trigger: &TriggerResult) -> String {
    match trigger.trigger_type {
        Some(t) => format!("{} ({})", t.as_str(), trigger.reason),
        None => trigger.reason.clone(),
    }
}

/// The details of a run that started, one `  name: value` per line.
fn run_lines(run: &RetrainRun, trigger: &TriggerResult) -> String {
    let mut text = format!("  trigger: {}\n", trigger_line(trigger));
    if let Some(path) = &run.dataset_path {
        let samples = run
            .n_samples
            .map_or(String::new(), |n| format!(" ({})", count(n, "sample")));
        text.push_str(&format!("  dataset: {path}{samples}\n"));
    }
    if let Some(model) = &run.model_path {
        text.push_str(&format!("  model: {model}\n"));
    }
    if let Some(metrics) = &run.metrics {
        text.push_str(&format!("  metrics: {metrics}\n"));
    }
    if let Some(error) = &run.error {
        text.push_str(&format!("  error: {error}\n"));
    }
    if let Some(end) = run.finished_at {
        let secs = (end - run.started_at).num_milliseconds() as f64 / 1000.0;
        text.push_str(&format!("  duration: {}\n", duration(secs)));
    }
    text.push_str(&format!("  run dir: {}\n", run.run_dir));
    text
}

/// Lists retrain runs, newest first, after marking runs of dead processes as failed.
pub(crate) fn runs(global: &GlobalArgs, args: &RunsArgs) -> anyhow::Result<()> {
    let store = open(configured(global)?, Create::Never)?;
    // Leftovers of a dead process's trainer are stopped before its run is marked failed.
    let recovered = afs_trigger::recover_stale_runs(&store)?;
    if !recovered.is_empty() {
        tracing::warn!(
            ?recovered,
            "runs left running by dead processes marked failed"
        );
    }
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let runs: Vec<RetrainRun> = match &args.status {
        // Run history is small (one row per retrain), so filtering here is cheap.
        Some(status) => {
            let status = RunStatus::parse(status);
            store
                .runs(usize::MAX)?
                .into_iter()
                .filter(|run| Some(run.status) == status)
                .take(limit)
                .collect()
        }
        None => store.runs(limit)?,
    };
    if global.json {
        let mut out = BufWriter::new(io::stdout().lock());
        for run in &runs {
            let line = crate::output::json_text(&RunJson::from(run))?;
            writeln!(out, "{line}").map_err(stdout_error)?;
        }
        return out.flush().map_err(stdout_error);
    }
    if runs.is_empty() {
        return print_line("no retrain runs");
    }
    let mut text = String::new();
    let header = [
        "id",
        "status",
        "trigger",
        "started_at",
        "duration",
        "samples",
        "model / error",
    ];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for run in &runs {
        let outcome = match (&run.model_path, &run.error) {
            (Some(model), _) => model.clone(),
            (None, Some(error)) => format!("error: {}", one_line(error, 100)),
            (None, None) => "-".to_string(),
        };
        rows.push(vec![
            run.id.clone(),
            run.status.as_str().to_string(),
            run.trigger_type.clone(),
            rfc3339(run.started_at),
            run.finished_at.map_or("-".to_string(), |end| {
                duration((end - run.started_at).num_milliseconds() as f64 / 1000.0)
            }),
            run.n_samples.map_or("-".to_string(), |n| n.to_string()),
            outcome,
        ]);
    }
    text.push_str(&left_table(&rows));
    print_line(text.trim_end())
}

/// `text` on one line, cut to at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line("abcdefghijkl", 8), "abcde...");
    }
}
