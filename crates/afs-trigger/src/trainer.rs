//! The `Trainer` trait and its two implementations: a Rust closure and an external command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::supervise::{read_tail_checked, run_supervised, tail, Ended, ShellCommand};
use crate::template::{CommandTemplate, Placeholder, TemplateError};

/// What a trainer is asked to do: train on `dataset_path`, write the model under `output_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainJob {
    /// The run's id.
    pub run_id: String,
    /// The training file (JSON lines in the configured format).
    pub dataset_path: PathBuf,
    /// Where the trainer should write the model (created, empty).
    pub output_dir: PathBuf,
    /// The run directory (dataset, manifest, trainer logs).
    pub run_dir: PathBuf,
    /// Samples in the dataset.
    pub n_samples: u64,
}

/// What a successful trainer reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    /// Where the trained model is.
    pub model_path: String,
    /// Free-form metrics (loss, eval scores, ...).
    pub metrics: Map<String, Value>,
}

/// Why training failed. None of these ever deploys anything.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The trainer reported failure (non-zero exit, closure error, panic).
    #[error("trainer failed: {0}")]
    Failed(String),
    /// The trainer ran past its timeout and was killed.
    #[error("trainer timed out after {}s and was stopped", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The trainer was stopped because the process running it was asked to stop (SIGINT or
    /// SIGTERM), through the flag given to [`CommandTrainer::interrupt_on`].
    #[error("trainer interrupted and stopped")]
    Interrupted,
    /// The trainer exited successfully but its result is unusable.
    #[error("trainer output unusable: {0}")]
    BadOutput(String),
    /// The trainer could not be started or its files could not be handled.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Trains a model on a dataset.
///
/// `train` is called at most once per run, from the thread running the retrain, after the
/// dataset has been written. It returns only when training is over: `Ok` means a model
/// exists at `model_path`; any error means the run failed and nothing is deployed. A panic
/// is caught by the retrainer and recorded as a failure.
pub trait Trainer: Send + Sync {
    /// Trains; see the trait's contract.
    fn train(&self, job: &TrainJob) -> Result<TrainOutput, TrainError>;
}

/// A trainer from a Rust closure.
pub struct FnTrainer<F>(pub F);

impl<F> Trainer for FnTrainer<F>
where
    F: Fn(&TrainJob) -> Result<TrainOutput, String> + Send + Sync,
{
    fn train(&self, job: &TrainJob) -> Result<TrainOutput, TrainError> {
        (self.0)(job).map_err(TrainError::Failed)
    }
}

/// The longest `model_path` a trainer may report, in bytes (as `PATH_MAX`).
pub const MAX_MODEL_PATH_BYTES: usize = 4096;

/// The largest metrics a trainer may report, in bytes of JSON.
pub const MAX_METRICS_BYTES: usize = 64 * 1024;

/// The largest result a trainer may write (result file, or last line of stdout), in bytes.
pub const MAX_RESULT_BYTES: u64 = 128 * 1024;

/// The result file's name in the run directory.
const RESULT_FILE: &str = "trainer.result.json";

/// Runs an external command (any language) through `sh -c`.
///
/// The command gets the job through the environment — `AFS_DATA_PATH` (dataset path),
/// `AFS_OUTPUT_DIR`, `AFS_RUN_ID`, `AFS_RUN_DIR`, `AFS_RESULT_PATH` (result file path),
/// `AFS_N_SAMPLES` — and through placeholders `{data}`, `{output_dir}`, `{run_id}`,
/// `{run_dir}`, `{result}`, which become references to those variables quoted for where
/// they stand (see [`CommandTemplate`]): a value is never pasted into the shell text.
/// afs's secrets (`AFS_TOKENS`, ...; see [`crate::is_secret_env`]) are not passed on.
///
/// It runs under the supervisor ([`crate::run_supervised`]): in its own process group, which
/// is stopped when the command times out, when the flag of
/// [`CommandTrainer::interrupt_on`] is set ([`TrainError::Interrupted`], within ~20 ms), and
/// when afs ends or dies; the group is recorded in `trainer.pid.json` in the run directory
/// for [`crate::recover_stale_runs`]. Its stdout and stderr go to `trainer.stdout.log` and
/// `trainer.stderr.log` there; none of these files may exist before.
///
/// It reports its result as a JSON object with a string `model_path` (at most
/// [`MAX_MODEL_PATH_BYTES`]) and any metrics (at most [`MAX_METRICS_BYTES`] of JSON), either
/// under `metrics` or as the other keys, written to the result file (which must not exist
/// before it starts), or else printed as the last non-empty line of stdout. A non-zero exit,
/// a timeout or a missing, garbled or oversized result is a failure.
#[derive(Debug, Clone)]
pub struct CommandTrainer {
    command: String,
    timeout: Duration,
    working_dir: Option<PathBuf>,
    interrupt: Option<Arc<AtomicBool>>,
}

impl CommandTrainer {
    /// A trainer running `command` with `sh -c`, stopped after `timeout`. The command is
    /// checked when it runs; check it sooner with [`CommandTrainer::validate`].
    pub fn shell(command: impl Into<String>, timeout: Duration) -> Self {
        CommandTrainer {
            command: command.into(),
            timeout,
            working_dir: None,
            interrupt: None,
        }
    }

    /// Stops the command (its whole process group) when `flag` becomes true, e.g. from a
    /// SIGINT handler, so the trainer does not outlive the process that started it. A
    /// command not started yet when the flag is set is not started.
    pub fn interrupt_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Runs the command in `dir` instead of the current directory.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// The command as configured.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The command checked as a trainer command template (placeholders where the shell
    /// expands them, and only the trainer's).
    pub fn template(&self) -> Result<CommandTemplate, TemplateError> {
        CommandTemplate::parse(&self.command, Placeholder::TRAINER, "trainer command")
    }

    /// Checks the command now, so that a bad one is refused before any work.
    pub fn validate(&self) -> Result<(), TemplateError> {
        self.template().map(|_| ())
    }
}

fn result_path(job: &TrainJob) -> PathBuf {
    job.run_dir.join(RESULT_FILE)
}

impl Trainer for CommandTrainer {
    fn train(&self, job: &TrainJob) -> Result<TrainOutput, TrainError> {
        let template = self
            .template()
            .map_err(|e| TrainError::Failed(format!("invalid trainer command: {e}")))?;
        let stdout_path = job.run_dir.join("trainer.stdout.log");
        let stderr_path = job.run_dir.join("trainer.stderr.log");
        let result = result_path(job);
        if result.symlink_metadata().is_ok() {
            return Err(TrainError::Failed(format!(
                "{} exists before the trainer started; afs does not reuse or replace it",
                result.display()
            )));
        }
        let group_file = job.run_dir.join(crate::recovery::TRAINER_GROUP_FILE);
        let ended = run_supervised(&ShellCommand {
            script: template.script(),
            env: vec![
                ("AFS_DATA_PATH", job.dataset_path.clone().into_os_string()),
                ("AFS_OUTPUT_DIR", job.output_dir.clone().into_os_string()),
                ("AFS_RUN_ID", job.run_id.clone().into()),
                ("AFS_RUN_DIR", job.run_dir.clone().into_os_string()),
                ("AFS_RESULT_PATH", result.clone().into_os_string()),
                ("AFS_N_SAMPLES", job.n_samples.to_string().into()),
            ],
            working_dir: self.working_dir.as_deref(),
            stdout_log: &stdout_path,
            stderr_log: &stderr_path,
            group_file: Some(&group_file),
            timeout: self.timeout,
            stop: self.interrupt.as_deref(),
        })
        .map_err(|e| TrainError::Io {
            context: format!("trainer: {}", e.context),
            source: e.source,
        })?;
        match ended {
            Ended::TimedOut => return Err(TrainError::TimedOut(self.timeout)),
            Ended::Interrupted => return Err(TrainError::Interrupted),
            Ended::Exited(_) if !ended.success() => {
                return Err(TrainError::Failed(format!(
                    "command ended with {}; stderr: {}",
                    ended.describe(),
                    tail(&stderr_path)
                )))
            }
            Ended::Exited(_) => {}
        }
        if self.interrupted() {
            return Err(TrainError::Interrupted);
        }
        read_result(&result, &stdout_path)
    }
}

fn read_result(result_file: &Path, stdout_path: &Path) -> Result<TrainOutput, TrainError> {
    let limit = MAX_RESULT_BYTES;
    let (text, source) = if result_file.symlink_metadata().is_ok() {
        let source = format!("result file {}", result_file.display());
        let (text, cut) = read_tail_checked(result_file, limit)
            .map_err(io(format!("read {}", result_file.display())))?;
        if cut {
            return Err(TrainError::BadOutput(format!(
                "{source}: larger than {} KiB, the limit",
                limit / 1024
            )));
        }
        (text, source)
    } else {
        let source = "the last line of stdout".to_string();
        let (text, cut) = read_tail_checked(stdout_path, limit)
            .map_err(io(format!("read {}", stdout_path.display())))?;
        let lines: Vec<&str> = text.lines().collect();
        let Some(index) = lines.iter().rposition(|l| !l.trim().is_empty()) else {
            return Err(TrainError::BadOutput(if cut {
                format!("{source}: no result in its last {} KiB", limit / 1024)
            } else {
                "no result file and nothing on stdout".into()
            }));
        };
        if cut && index == 0 {
            return Err(TrainError::BadOutput(format!(
                "{source}: longer than {} KiB, the limit",
                limit / 1024
            )));
        }
        (lines[index].to_string(), source)
    };
    parse_result(&text).map_err(|reason| TrainError::BadOutput(format!("{source}: {reason}")))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrainError {
    let context = context.into();
    move |source| TrainError::Io { context, source }
}

/// Parses a trainer's JSON result, within the limits ([`MAX_MODEL_PATH_BYTES`],
/// [`MAX_METRICS_BYTES`]).
pub fn parse_result(text: &str) -> Result<TrainOutput, String> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let model_path = match object.remove("model_path") {
        Some(Value::String(p)) if !p.trim().is_empty() => p,
        Some(_) => return Err("model_path is not a non-empty string".into()),
        None => return Err("model_path is missing".into()),
    };
    if model_path.len() > MAX_MODEL_PATH_BYTES {
        return Err(format!(
            "model_path is {} bytes long, more than the limit of {MAX_MODEL_PATH_BYTES} bytes",
            model_path.len()
        ));
    }
    if model_path.contains('\0') {
        return Err("model_path contains a NUL character".into());
    }
    let metrics = match object.remove("metrics") {
        Some(Value::Object(m)) => m,
        Some(other) => return Err(format!("metrics is not an object: {other}")),
        None => object,
    };
    let size = serde_json::to_string(&metrics).map_or(usize::MAX, |m| m.len());
    if size > MAX_METRICS_BYTES {
        return Err(format!(
            "the metrics are {size} bytes of JSON, more than the limit of {} KiB",
            MAX_METRICS_BYTES / 1024
        ));
    }
    Ok(TrainOutput {
        model_path,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_parsed_strictly() {
        let ok = parse_result(r#"{"model_path": "m.pth", "loss": 0.25}"#).unwrap();
        assert_eq!(ok.model_path, "m.pth");
        assert_eq!(ok.metrics["loss"], 0.25);
        let nested = parse_result(r#"{"model_path": "m", "metrics": {"acc": 1}}"#).unwrap();
        assert_eq!(nested.metrics["acc"], 1);
        for bad in [
            "",
            "garbage",
            "[1]",
            r#"{"loss": 1}"#,
            r#"{"model_path": ""}"#,
            r#"{"model_path": 3}"#,
            r#"{"model_path": "m", "metrics": 2}"#,
        ] {
            assert!(parse_result(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn oversized_results_are_refused_naming_the_limit() {
        let long = "m".repeat(MAX_MODEL_PATH_BYTES + 1);
        let err = parse_result(&format!(r#"{{"model_path": "{long}"}}"#)).unwrap_err();
        assert!(err.contains("limit of 4096 bytes"), "{err}");
        let ok = "m".repeat(MAX_MODEL_PATH_BYTES);
        assert!(parse_result(&format!(r#"{{"model_path": "{ok}"}}"#)).is_ok());
        let big = "x".repeat(MAX_METRICS_BYTES);
        let err = parse_result(&format!(r#"{{"model_path": "m", "note": "{big}"}}"#)).unwrap_err();
        assert!(err.contains("limit of 64 KiB"), "{err}");
        assert!(parse_result(r#"{"model_path": "a\u0000b"}"#).is_err());
    }
}
