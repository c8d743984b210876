//! `afs serve --with-loop`: the continuous loop built from the config file and the flags,
//! run on a thread of its own and stopped cleanly at shutdown.
//!
//! [`trainer`] is the one place that turns `--train-cmd`/`--train-timeout` and the
//! `[retrain]` section into a [`CommandTrainer`], and [`loop_config`] the one place that
//! turns the config file into a [`LoopConfig`]; `afs retrain` and the coming loop commands
//! can share them.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use afs_loop::{ContinuousLearningLoop, LoopConfig, LoopError, LoopRunSummary};
use afs_store::{ErrorKind, NewModelVersion, SqliteStore};
use afs_trigger::CommandTrainer;

use super::ServeArgs;
use crate::config::Config;
use crate::exit::{InvalidInput, Usage};
use crate::time_arg::{parse_time_arg, TimeArg};

/// The loop of this process.
pub(super) struct Learning {
    inner: Arc<ContinuousLearningLoop<SqliteStore>>,
}

/// The trainer command: `flag` (`--train-cmd`) or else `train_cmd` of `[retrain]`, with
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
                "no trainer command: pass --train-cmd CMD or set train_cmd in the [retrain] \
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

/// The loop's settings: the config file's `[trigger]`, `[generator]`, `[abtest]` and
/// `[retrain]` sections, the check interval (default 1 h) and the initial champion.
pub(super) fn loop_config(
    config: &Config,
    check_interval: Option<Duration>,
    initial_champion: Option<NewModelVersion>,
) -> LoopConfig {
    let defaults = LoopConfig::default();
    LoopConfig {
        check_interval: check_interval.unwrap_or(defaults.check_interval),
        trigger: config.trigger.clone(),
        generator: config.generator.clone(),
        abtest: config.abtest.clone(),
        retrainer: config.retrain.retrainer.clone(),
        initial_champion,
        ..defaults
    }
}

/// Builds the loop for `args` over `store` (which registers `--champion` when the store
/// has none, and recovers what a dead process left behind).
pub(super) fn build(
    store: Arc<SqliteStore>,
    config: &Config,
    args: &ServeArgs,
) -> anyhow::Result<Learning> {
    let trainer = trainer(args.train_cmd.as_deref(), args.train_timeout, config)?;
    let champion = match (&args.champion, &args.champion_path) {
        (Some(name), Some(path)) => Some(NewModelVersion::new(name, path)),
        _ => None,
    };
    let loop_config = loop_config(config, args.check_interval, champion);
    let inner = ContinuousLearningLoop::new(store, loop_config, Box::new(trainer))
        .map_err(|e| match (&e, e.kind()) {
            (LoopError::InvalidConfig { .. }, _) | (_, Some(ErrorKind::InvalidInput)) => {
                anyhow::Error::new(InvalidInput(e.to_string()))
            }
            _ => anyhow::Error::new(e).context("cannot start the continuous loop"),
        })?;
    Ok(Learning {
        inner: Arc::new(inner),
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

/// Waits up to `timeout` for the loop's thread to return.
pub(super) async fn join(thread: JoinHandle<LoopRunSummary>, timeout: Duration) {
    let waited = tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || thread.join()));
    match waited.await {
        Ok(Ok(Ok(summary))) => {
            tracing::info!(iterations = summary.iterations, "continuous loop stopped");
            eprintln!(
                "afs serve: loop stopped after {} iteration(s) ({} failed)",
                summary.iterations, summary.failed_iterations
            );
        }
        Ok(_) => eprintln!("afs serve: the loop thread panicked"),
        Err(_) => eprintln!(
            "afs serve: the loop's current iteration (a retrain?) did not finish within the \
             shutdown timeout; exiting anyway. A run left `running` is marked failed at the \
             next start"
        ),
    }
}

/// Parses `--check-interval`: a number of seconds, or an age such as `90s`, `30m`, `1h`,
/// `1d`; must be > 0.
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => match parse_time_arg(text) {
            Ok(TimeArg::Ago(age)) => age
                .to_std()
                .map_err(|_| format!("{text:?} is not a positive duration"))?,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration (seconds, or e.g. 30m, 1h, 1d)"
                ))
            }
        },
    };
    if duration.is_zero() {
        return Err("must be > 0".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_interval("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("2025-01-01T00:00:00Z").is_err());
    }

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
