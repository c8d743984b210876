//! `afs serve --with-loop`: the continuous loop built from the config file and the flags,
//! run on a thread of its own and stopped cleanly at shutdown.
//!
//! The trainer comes from `--train-cmd`/`--train-timeout` and the `[trainer]` section
//! (see [`crate::trainer`]); the loop's settings from [`Config::loop_config`], with the
//! flags on top.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::any_store::AnyStore;
use afs_loop::{ContinuousLearningLoop, LoopRunSummary};
use afs_store::{ErrorKind, NewModelVersion};

use super::ServeArgs;
use crate::config::Config;
use crate::exit::InvalidInput;

/// The loop of this process.
pub(super) struct Learning {
    inner: Arc<ContinuousLearningLoop<AnyStore>>,
    /// Set to stop a running trainer (its process group) when shutdown cannot wait for it.
    stop_trainer: Arc<AtomicBool>,
}

/// Builds the loop for `args` over `store` (which registers `--champion` when the store
/// has none, and recovers what a dead process left behind).
pub(super) fn build(
    store: Arc<AnyStore>,
    config: &Config,
    args: &ServeArgs,
) -> anyhow::Result<Learning> {
    let stop_trainer = Arc::new(AtomicBool::new(false));
    let trainer = crate::trainer::from_flags(
        args.train_cmd.as_deref(),
        args.train_timeout,
        "--train-timeout",
        config,
    )?
    .interrupt_on(stop_trainer.clone());
    // The config file's `[loop]` and the layers' sections, with the flags on top.
    let mut loop_config = config.loop_config();
    if let Some(interval) = args.check_interval {
        loop_config.check_interval = interval;
    }
    if let (Some(name), Some(path)) = (&args.champion, &args.champion_path) {
        loop_config.initial_champion = Some(NewModelVersion::new(name, path));
    }
    config.check_loop(&loop_config)?;
    let inner = ContinuousLearningLoop::new(store, loop_config, Box::new(trainer))
        .map_err(|e| match e.kind() {
            Some(ErrorKind::InvalidInput) => anyhow::Error::new(InvalidInput(e.to_string())),
            _ => anyhow::Error::new(e).context("cannot start the continuous loop"),
        })?
        // The flag that stops the trainer also stops a dataset generation under way.
        .with_generation_stop(stop_trainer.clone());
    Ok(Learning {
        inner: Arc::new(inner),
        stop_trainer,
    })
}

impl Learning {
    /// The loop's serving path (logging, feedback and routing with its router).
    pub(super) fn serving(&self) -> Arc<afs_loop::Serving<AnyStore>> {
        self.inner.serving()
    }

    /// Starts the loop on its own thread: the first iteration at once, then one every
    /// check interval, until [`request_stop`](Self::request_stop).
    pub(super) fn start(&self) -> anyhow::Result<JoinHandle<LoopRunSummary>> {
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("afs-loop".into())
            .spawn(move || inner.run_loop(None, &mut |_| {}))?;
        tracing::info!(
            interval_secs = self.inner.config().check_interval.as_secs_f64(),
            "continuous loop started"
        );
        Ok(handle)
    }

    /// Asks the loop to stop: a napping loop returns at once, an iteration in progress
    /// finishes first.
    pub(super) fn request_stop(&self) {
        self.inner.stop_signal().request_stop();
    }
}

/// Waits up to `timeout` for the loop's thread to return; if an iteration is still running
/// then (a long retrain), stops its trainer and waits a few seconds more for the iteration
/// to record the run as interrupted.
pub(super) async fn join(
    learning: &Learning,
    thread: JoinHandle<LoopRunSummary>,
    timeout: Duration,
) {
    let joined = tokio::task::spawn_blocking(move || thread.join());
    tokio::pin!(joined);
    let waited = match tokio::time::timeout(timeout, &mut joined).await {
        Ok(result) => Ok(result),
        Err(_) => {
            eprintln!(
                "afs serve: the loop's current iteration did not finish within the shutdown \
                 timeout; stopping its trainer"
            );
            learning.stop_trainer.store(true, Ordering::SeqCst);
            tokio::time::timeout(TRAINER_STOP_GRACE, &mut joined).await
        }
    };
    match waited {
        Ok(Ok(Ok(summary))) => {
            tracing::info!(iterations = summary.iterations, "continuous loop stopped");
            eprintln!(
                "afs serve: loop stopped after {} iteration(s) ({} failed)",
                summary.iterations, summary.failed_iterations
            );
        }
        Ok(_) => eprintln!("afs serve: the loop thread panicked"),
        Err(_) => eprintln!(
            "afs serve: the loop's iteration did not end after its trainer was stopped; \
             exiting anyway. A run left `running` is marked failed at the next start"
        ),
    }
}

/// How long shutdown waits for an iteration to record its stopped trainer.
const TRAINER_STOP_GRACE: Duration = Duration::from_secs(5);
