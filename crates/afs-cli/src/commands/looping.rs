//! `afs loop run` and `afs loop once`: the continuous loop built from the configuration and
//! the flags, run until stopped (SIGINT or SIGTERM stop it cleanly) or once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::any_store::AnyStore;
use afs_loop::{
    ContinuousLearningLoop, IterationOptions, IterationReport, LoopError, LoopRunSummary,
    StopReason, StopSignal,
};
use afs_store::UsageStore;
use afs_trigger::{CommandTemplate, Placeholder};
use anyhow::Context;
use serde_json::json;

use crate::cli::{GlobalArgs, LoopArgs, LoopCommand, LoopOnceArgs, LoopOptions, LoopRunArgs};
use crate::config;
use crate::exit::{Interrupted, InvalidInput, RunFailed};
use crate::interrupt::{self, Step};
use crate::output::{count, print_json, print_line};
use crate::store_open::{open_with, Create, Pinned};
use crate::time_arg::format_duration;

/// Runs `afs loop run` or `afs loop once`.
pub(crate) fn run(global: &GlobalArgs, args: &LoopArgs) -> anyhow::Result<()> {
    match &args.command {
        LoopCommand::Run(args) => run_loop(global, args),
        LoopCommand::Once(args) => once(global, args),
    }
}

/// Builds the loop from the configuration, changed by the flags; `pinned` says how the
/// clock reads `AFS_NOW`.
fn build(
    global: &GlobalArgs,
    options: &LoopOptions,
    interval: Option<Duration>,
    pinned: Pinned,
    stop_trainer: Arc<AtomicBool>,
) -> anyhow::Result<ContinuousLearningLoop<AnyStore>> {
    let mut config = config::load(global)?;
    if let Some(interval) = interval {
        config.loop_settings.check_interval = interval;
    }
    if let Some(cmd) = &options.eval_cmd {
        if cmd.trim().is_empty() {
            return Err(InvalidInput("invalid --eval-cmd: must not be empty".into()).into());
        }
        config.loop_settings.eval_cmd = Some(cmd.clone());
    }
    if let Some(cmd) = &config.loop_settings.eval_cmd {
        // A template the shell would get wrong is refused now, not after the first retrain.
        let source = match options.eval_cmd {
            Some(_) => "--eval-cmd".to_string(),
            None => config.key_name("loop.eval_cmd"),
        };
        CommandTemplate::parse(cmd, Placeholder::EVAL, "evaluation command")
            .map_err(|e| InvalidInput(format!("invalid {source}: {e}")))?;
    }
    let loop_config = config.loop_config();
    config.check_loop(&loop_config)?;
    let trainer = crate::trainer::from_flags(options.train_cmd.as_deref(), None, "", &config)?
        .interrupt_on(stop_trainer.clone());
    let store = open_with(config.store_config(&global.db), Create::Never, pinned)?;
    tracing::debug!(?loop_config, "starting the continuous loop");
    // The flag that stops the trainer also stops a dataset generation under way.
    Ok(
        ContinuousLearningLoop::new(Arc::new(store), loop_config, Box::new(trainer))
            .context("cannot start the continuous loop")?
            .with_generation_stop(stop_trainer),
    )
}

/// `afs loop once`: one iteration, and what it did.
fn once(global: &GlobalArgs, args: &LoopOnceArgs) -> anyhow::Result<()> {
    let stop_trainer = Arc::new(AtomicBool::new(false));
    let learning = build(
        global,
        &args.options,
        None,
        Pinned::Stopped,
        stop_trainer.clone(),
    )?;
    interrupt::install(
        stop_trainer.clone(),
        vec![Step::SetFlag(
            "afs loop: stopping the trainer or the dataset generation (send the signal again \
             to exit at once)",
        )],
        interrupt::RUN_LEFT_UNFINISHED,
    )?;
    let report = learning.run_iteration_with(IterationOptions {
        force_retrain: args.force,
    })?;
    if global.json {
        print_json(&report.to_json())?;
    } else {
        print_line(&describe(&report))?;
    }
    if stop_trainer.load(Ordering::SeqCst) {
        return Err(Interrupted(format!("iteration {} interrupted", report.number)).into());
    }
    if report.errors.is_empty() {
        return Ok(());
    }
    Err(RunFailed(format!(
        "iteration {} recorded {}: {}",
        report.number,
        count(report.errors.len() as u64, "problem"),
        report.errors.join("; ")
    ))
    .into())
}

/// An iteration in words: its one-line summary, then each step.
fn describe(report: &IterationReport) -> String {
    let mut text = report.summary();
    for note in &report.notes {
        text.push_str(&format!("\n  {note}"));
    }
    for error in &report.errors {
        if !report
            .notes
            .iter()
            .any(|note| note.contains(error.as_str()))
        {
            text.push_str(&format!("\n  problem: {error}"));
        }
    }
    text
}

/// `afs loop run`: iterations every check interval until stopped.
fn run_loop(global: &GlobalArgs, args: &LoopRunArgs) -> anyhow::Result<()> {
    let stop_trainer = Arc::new(AtomicBool::new(false));
    let learning = build(
        global,
        &args.options,
        args.interval,
        Pinned::Running,
        stop_trainer.clone(),
    )?;
    let stop = learning.stop_signal();
    install_signals(&stop, stop_trainer)?;
    let interval = learning.config().check_interval;
    eprintln!(
        "afs loop: running on {} every {}{}; SIGINT (Ctrl-C) or SIGTERM stops it after the \
         current iteration",
        crate::any_store::shown_db(&global.db),
        format_duration(interval),
        args.max_iterations
            .map_or(String::new(), |n| format!(" for {}", count(n, "iteration"))),
    );

    let json = global.json;
    let mut print_failure: Option<anyhow::Error> = None;
    let mut on_iteration = |result: &Result<IterationReport, LoopError>| {
        if print_failure.is_some() {
            return;
        }
        let printed = match (result, json) {
            (Ok(report), true) => print_json(&report.to_json()),
            (Ok(report), false) => print_line(&report.summary()),
            (Err(err), true) => {
                let (_, kind) = crate::exit::classify_loop(err);
                print_json(&json!({ "error": err.to_string(), "kind": kind }))
            }
            (Err(err), false) => print_line(&format!("iteration failed: {err}")),
        };
        // Nobody reads the results any more (stdout closed): stop after this iteration.
        if let Err(err) = printed {
            print_failure = Some(err);
            stop.request_stop();
        }
    };

    let done = run_iterations(&learning, args, &mut on_iteration);
    if let Some(err) = print_failure {
        return Err(err);
    }

    print_summary(json, &done)?;
    if done.iterations > 0 && done.failed_iterations == done.iterations {
        return Err(RunFailed(format!(
            "every iteration failed ({}); see `afs status`",
            count(done.iterations, "iteration")
        ))
        .into());
    }
    Ok(())
}

/// The signals of `afs loop run`: the first stops after the current iteration, the second
/// stops a running trainer or dataset generation, the third exits at once.
fn install_signals(stop: &StopSignal, stop_trainer: Arc<AtomicBool>) -> anyhow::Result<()> {
    let stopper = stop.clone();
    interrupt::install(
        stop_trainer,
        vec![
            Step::Call(
                Box::new(move || stopper.request_stop()),
                "afs loop: stopping after the current iteration (send the signal again to stop \
                 a running trainer, a third time to exit at once)",
            ),
            Step::SetFlag(
                "afs loop: stopping the trainer or the dataset generation; the run is recorded as \
                 interrupted",
            ),
        ],
        interrupt::RUN_LEFT_UNFINISHED,
    )?;
    Ok(())
}

/// The iterations of `afs loop run`: with `--force-first`, a first one that retrains
/// whatever the triggers say, then the loop's own, one check interval apart.
fn run_iterations(
    learning: &ContinuousLearningLoop<AnyStore>,
    args: &LoopRunArgs,
    on_iteration: &mut dyn FnMut(&Result<IterationReport, LoopError>),
) -> LoopRunSummary {
    let stop = learning.stop_signal();
    let mut done = LoopRunSummary {
        iterations: 0,
        failed_iterations: 0,
        stop_reason: StopReason::Stopped,
    };
    let mut max_iterations = args.max_iterations;
    if args.force_first && !stop.is_stop_requested() {
        let started = learning.store().clock().now();
        let result = learning.run_iteration_with(IterationOptions {
            force_retrain: true,
        });
        done.iterations += 1;
        done.failed_iterations += u64::from(result.is_err());
        on_iteration(&result);
        max_iterations = max_iterations.map(|n| n - 1);
        if max_iterations == Some(0) {
            done.stop_reason = StopReason::MaxIterations;
        } else if !nap_until_next(learning, &stop, started) {
            // `run_loop` runs its first iteration at once; it starts after the interval.
            let rest = learning.run_loop(max_iterations, &mut *on_iteration);
            done.iterations += rest.iterations;
            done.failed_iterations += rest.failed_iterations;
            done.stop_reason = rest.stop_reason;
        }
    } else {
        done = learning.run_loop(max_iterations, &mut *on_iteration);
    }
    done
}

/// The line (or JSON object) that ends `afs loop run`.
fn print_summary(json: bool, done: &LoopRunSummary) -> anyhow::Result<()> {
    let reason = match done.stop_reason {
        StopReason::MaxIterations => "max_iterations",
        StopReason::Stopped => "stopped",
    };
    if json {
        print_json(&json!({
            "iterations": done.iterations,
            "failed_iterations": done.failed_iterations,
            "stop_reason": reason,
        }))?;
    } else {
        print_line(&format!(
            "loop stopped after {} ({} failed): {}",
            count(done.iterations, "iteration"),
            done.failed_iterations,
            match done.stop_reason {
                StopReason::MaxIterations => "--max-iterations reached",
                StopReason::Stopped => "stop requested",
            }
        ))?;
    }
    Ok(())
}

/// Waits until one check interval after `started` on the store's clock; true when a stop was
/// requested meanwhile.
fn nap_until_next(
    learning: &ContinuousLearningLoop<AnyStore>,
    stop: &StopSignal,
    started: chrono::DateTime<chrono::Utc>,
) -> bool {
    // An interval beyond chrono's range (it is at most 100 years) would mean "never".
    let interval = chrono::Duration::from_std(learning.config().check_interval)
        .unwrap_or(chrono::Duration::days(365_000));
    let due = started + interval;
    loop {
        let left = (due - learning.store().clock().now()).to_std();
        match left {
            Ok(left) if !left.is_zero() => {
                // Naps of at most a second, so a clock moved by others is noticed.
                if stop.wait(left.min(Duration::from_secs(1))) {
                    return true;
                }
            }
            _ => return stop.is_stop_requested(),
        }
    }
}
