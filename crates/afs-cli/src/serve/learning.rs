//! `afs serve --with-loop`: the continuous loop built from the config file and the flags,
//! run on a thread of its own and stopped cleanly at shutdown.
//!
//! [`trainer`] turns `--train-cmd`/`--train-timeout` and the `[trainer]` section into a
//! [`CommandTrainer`]; `afs retrain` and the loop commands can share it. The loop's
//! settings come from [`Config::loop_config`], with the flags on top.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use afs_loop::{ContinuousLearningLoop, LoopRunSummary};
use afs_store::{ErrorKind, NewModelVersion, SqliteStore};
use afs_trigger::CommandTrainer;

use super::ServeArgs;
use crate::config::Config;
use crate::exit::{InvalidInput, Usage};

/// The loop of this process.
pub(super) struct Learning {
    inner: Arc<ContinuousLearningLoop<SqliteStore>>,
    /// Set to stop a running trainer (its process group) when shutdown cannot wait for it.
    stop_trainer: Arc<AtomicBool>,
}

/// The trainer command: `flag` (`--train-cmd`) or else `train_cmd` of `[trainer]`, with
/// `timeout_flag` (seconds) or else the section's `timeout_secs`.
pub(super) fn trainer(
    flag: Option<&str>,
    timeout_flag: Option<u64>,
    config: &Config,
) -> anyhow::Result<CommandTrainer> {
    let command = match (flag, &config.retrain.train_cmd) {
        (Some(cmd), _) if cmd.trim().is_empty() => {
            return Err(InvalidInput("invalid --train-cmd: must not be empty".into()).into())
        }
        (Some(cmd), _) => cmd.to_string(),
        (None, Some(cmd)) => cmd.clone(),
        (None, None) => {
            return Err(Usage(
                "no trainer command: pass --train-cmd CMD or set train_cmd in the [trainer] \
                 section of the config file"
                    .into(),
            )
            .into())
        }
    };
    if timeout_flag == Some(0) {
        return Err(InvalidInput("invalid --train-timeout: must be > 0".into()).into());
    }
    let timeout = timeout_flag.map_or(config.retrain.timeout, Duration::from_secs);
    Ok(CommandTrainer::shell(command, timeout))
}

/// Builds the loop for `args` over `store` (which registers `--champion` when the store
/// has none, and recovers what a dead process left behind).
pub(super) fn build(
    store: Arc<SqliteStore>,
    config: &Config,
    args: &ServeArgs,
) -> anyhow::Result<Learning> {
    let stop_trainer = Arc::new(AtomicBool::new(false));
    let trainer = trainer(args.train_cmd.as_deref(), args.train_timeout, config)?
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
    let inner =
        ContinuousLearningLoop::new(store, loop_config, Box::new(trainer)).map_err(|e| match e
            .kind()
        {
            Some(ErrorKind::InvalidInput) => anyhow::Error::new(InvalidInput(e.to_string())),
            _ => anyhow::Error::new(e).context("cannot start the continuous loop"),
        })?;
    Ok(Learning {
        inner: Arc::new(inner),
        stop_trainer,
    })
}

impl Learning {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainer_comes_from_the_flag_or_the_file() {
        let mut config = Config::default();
        assert!(trainer(None, None, &config).is_err(), "no command anywhere");
        assert!(trainer(Some("  "), None, &config).is_err());
        assert!(trainer(Some("true"), Some(0), &config).is_err());
        assert!(trainer(Some("true"), None, &config).is_ok());
        config.retrain.train_cmd = Some("python train.py {data}".into());
        assert!(trainer(None, Some(60), &config).is_ok());
    }
}
