//! The `Trainer` trait and its two implementations: a Rust closure and an external command.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

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

/// Runs an external command (any language) through `sh -c`.
///
/// The command gets the job through placeholders, replaced by shell-quoted values —
/// `{data}` (dataset path), `{output_dir}`, `{run_id}`, `{run_dir}`, `{result}` (result
/// file path) — and through the environment: `AFS_DATA_PATH`, `AFS_OUTPUT_DIR`,
/// `AFS_RUN_ID`, `AFS_RUN_DIR`, `AFS_RESULT_PATH`, `AFS_N_SAMPLES`. Its stdout and stderr go
/// to `trainer.stdout.log` and `trainer.stderr.log` in the run directory. It reports its
/// result as a JSON object with a string `model_path` (and any metrics, either under
/// `metrics` or as the other keys) written to the result file, or else printed as the last
/// non-empty line of stdout. A non-zero exit, a timeout (the whole process group is killed)
/// or a missing/garbled result is a failure. With [`CommandTrainer::interrupt_on`], setting
/// the flag stops the command the same way within ~20 ms ([`TrainError::Interrupted`]).
#[derive(Debug, Clone)]
pub struct CommandTrainer {
    command: String,
    timeout: Duration,
    working_dir: Option<PathBuf>,
    interrupt: Option<Arc<AtomicBool>>,
}

impl CommandTrainer {
    /// A trainer running `command` with `sh -c`, stopped after `timeout`.
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

    /// The command line with placeholders filled in for `job`.
    pub fn command_line(&self, job: &TrainJob) -> String {
        let result = result_path(job);
        self.command
            .replace("{data}", &shell_quote(&job.dataset_path.to_string_lossy()))
            .replace(
                "{output_dir}",
                &shell_quote(&job.output_dir.to_string_lossy()),
            )
            .replace("{run_id}", &shell_quote(&job.run_id))
            .replace("{run_dir}", &shell_quote(&job.run_dir.to_string_lossy()))
            .replace("{result}", &shell_quote(&result.to_string_lossy()))
    }
}

fn result_path(job: &TrainJob) -> PathBuf {
    job.run_dir.join("trainer.result.json")
}

/// Quotes `text` for `sh`: inside single quotes every character is literal except `'`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrainError {
    let context = context.into();
    move |source| TrainError::Io { context, source }
}

impl Trainer for CommandTrainer {
    fn train(&self, job: &TrainJob) -> Result<TrainOutput, TrainError> {
        let stdout_path = job.run_dir.join("trainer.stdout.log");
        let stderr_path = job.run_dir.join("trainer.stderr.log");
        let stdout =
            File::create(&stdout_path).map_err(io(format!("create {}", stdout_path.display())))?;
        let stderr =
            File::create(&stderr_path).map_err(io(format!("create {}", stderr_path.display())))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(self.command_line(job))
            .env("AFS_DATA_PATH", &job.dataset_path)
            .env("AFS_OUTPUT_DIR", &job.output_dir)
            .env("AFS_RUN_ID", &job.run_id)
            .env("AFS_RUN_DIR", &job.run_dir)
            .env("AFS_RESULT_PATH", result_path(job))
            .env("AFS_N_SAMPLES", job.n_samples.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a timeout stops the trainer's children too.
            .process_group(0);
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        if self.interrupted() {
            return Err(TrainError::Interrupted);
        }
        let mut child = command.spawn().map_err(io("start the trainer command"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io("wait for the trainer"))? {
                break status;
            }
            let timed_out = started.elapsed() >= self.timeout;
            if timed_out || self.interrupted() {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(if timed_out {
                    TrainError::TimedOut(self.timeout)
                } else {
                    TrainError::Interrupted
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let code = status
                .code()
                .map_or("a signal".to_string(), |c| format!("exit code {c}"));
            return Err(TrainError::Failed(format!(
                "command ended with {code}; stderr: {}",
                tail(&stderr_path)
            )));
        }
        read_result(&result_path(job), &stdout_path)
    }
}

/// Kills the process group the trainer leads (it was started with `process_group(0)`, so
/// its group id is its pid), taking any children it started with it.
fn kill_group(pid: u32) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    if pgid <= 1 {
        return; // Never signal "every process" or init by accident.
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The last few lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let joined = lines[start..].join(" | ");
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined
    }
}

fn read_result(result_file: &Path, stdout_path: &Path) -> Result<TrainOutput, TrainError> {
    let (text, source) = if result_file.exists() {
        let text = std::fs::read_to_string(result_file)
            .map_err(io(format!("read {}", result_file.display())))?;
        (text, format!("result file {}", result_file.display()))
    } else {
        let file =
            File::open(stdout_path).map_err(io(format!("read {}", stdout_path.display())))?;
        let last = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .last()
            .ok_or_else(|| TrainError::BadOutput("no result file and nothing on stdout".into()))?;
        (last, "the last line of stdout".to_string())
    };
    parse_result(&text).map_err(|reason| TrainError::BadOutput(format!("{source}: {reason}")))
}

/// Parses a trainer's JSON result.
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
    let metrics = match object.remove("metrics") {
        Some(Value::Object(m)) => m,
        Some(other) => return Err(format!("metrics is not an object: {other}")),
        None => object,
    };
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
    fn shell_quoting_keeps_paths_literal() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
