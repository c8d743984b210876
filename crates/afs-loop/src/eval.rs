//! The evaluation gate: a command that must succeed on a new model before it is deployed.
//!
//! It runs under the trainer's supervisor ([`afs_trigger::run_supervised`]): the same
//! placeholder handling (values in environment variables, never in the shell text), the same
//! process group, watchdog, stop flag and scrubbed environment.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use afs_trigger::{run_supervised, tail, CommandTemplate, Ended, Placeholder, ShellCommand};

use crate::config::EvalGate;
use crate::report::GateOutcome;

/// What the gate is run on.
pub(crate) struct GateJob<'a> {
    pub(crate) model_path: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) run_dir: &'a Path,
    pub(crate) dataset_path: &'a str,
    /// Stops the command when set (the loop's stop-the-work flag).
    pub(crate) stop: Option<&'a AtomicBool>,
}

/// The gate's command checked as a template (placeholders where the shell expands them,
/// and only the evaluation command's).
pub(crate) fn template(gate: &EvalGate) -> Result<CommandTemplate, afs_trigger::TemplateError> {
    CommandTemplate::parse(&gate.command, Placeholder::EVAL, "evaluation command")
}

/// Runs the gate and says whether it passed. Never panics on a misbehaving command: every
/// failure (start, exit status, timeout, interruption) is a rejection with its reason.
pub(crate) fn run_gate(gate: &EvalGate, job: &GateJob<'_>) -> GateOutcome {
    let started = Instant::now();
    let (command, result) = match template(gate) {
        Ok(template) => {
            let result = run(gate, template.script(), job);
            (template.script().to_string(), result)
        }
        Err(e) => (
            gate.command.clone(),
            Err(format!("invalid evaluation command: {e}")),
        ),
    };
    let (passed, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    GateOutcome {
        passed,
        command,
        detail,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn run(gate: &EvalGate, script: &str, job: &GateJob<'_>) -> Result<String, String> {
    // The run directory exists after a completed run; create it anyway so the logs have a
    // home when a trainer reported a model without using it.
    std::fs::create_dir_all(job.run_dir)
        .map_err(|e| format!("create {}: {e}", job.run_dir.display()))?;
    let stdout_path = job.run_dir.join("eval.stdout.log");
    let stderr_path = job.run_dir.join("eval.stderr.log");
    let ended = run_supervised(&ShellCommand {
        script,
        env: vec![
            ("AFS_MODEL_PATH", job.model_path.into()),
            ("AFS_RUN_ID", job.run_id.into()),
            ("AFS_RUN_DIR", job.run_dir.as_os_str().to_owned()),
            ("AFS_DATA_PATH", job.dataset_path.into()),
        ],
        working_dir: None,
        stdout_log: &stdout_path,
        stderr_log: &stderr_path,
        group_file: None,
        timeout: gate.timeout,
        stop: job.stop,
    })
    .map_err(|e| format!("evaluation command: {e}"))?;
    match ended {
        _ if ended.success() => Ok("exited with code 0".into()),
        Ended::TimedOut => Err(format!(
            "timed out after {}s and was stopped; stderr: {}",
            gate.timeout.as_secs_f64(),
            tail(&stderr_path)
        )),
        Ended::Interrupted => Err("interrupted and stopped (afs was asked to stop)".into()),
        Ended::Exited(_) => Err(format!(
            "ended with {}; stderr: {}",
            ended.describe(),
            tail(&stderr_path)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(command: &str, timeout: Duration, passed: bool, detail_has: &str) {
        let dir = tempfile::tempdir().unwrap();
        let gate = EvalGate {
            command: command.into(),
            timeout,
        };
        let job = GateJob {
            model_path: "/models/it's here",
            run_id: "R1",
            run_dir: &dir.path().join("run"),
            dataset_path: "/data/train.jsonl",
            stop: None,
        };
        let outcome = run_gate(&gate, &job);
        assert_eq!(outcome.passed, passed, "{command}: {}", outcome.detail);
        assert!(
            outcome.detail.contains(detail_has),
            "{command}: {:?} lacks {detail_has:?}",
            outcome.detail
        );
    }

    #[test]
    fn the_gate_passes_only_on_exit_zero_in_time() {
        let second = Duration::from_secs(10);
        check("true", second, true, "code 0");
        check(
            r#"test {model_path} = "/models/it's here" && test "{model_path}" = "$AFS_MODEL_PATH" && test "$AFS_RUN_ID" = R1"#,
            second,
            true,
            "code 0",
        );
        check("echo too weak >&2; exit 3", second, false, "exit code 3");
        check("echo too weak >&2; exit 3", second, false, "too weak");
        check("sleep 5", Duration::from_millis(200), false, "timed out");
    }

    #[test]
    fn a_model_path_holding_shell_code_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let pwned = dir.path().join("pwned");
        let model_path = format!(
            "$(touch {p}) `touch {p}` '$(touch {p})' \"$(touch {p})\"",
            p = pwned.display()
        );
        for command in [
            r#"test -n "{model_path}""#,
            r#"test -n {model_path}"#,
            r#"test "$(printf '%s' "{model_path}")" = "$AFS_MODEL_PATH""#,
        ] {
            let gate = EvalGate {
                command: command.into(),
                timeout: Duration::from_secs(120),
            };
            let outcome = run_gate(
                &gate,
                &GateJob {
                    model_path: &model_path,
                    run_id: "R1",
                    run_dir: &dir.path().join(format!("run{}", command.len())),
                    dataset_path: "/data/train.jsonl",
                    stop: None,
                },
            );
            assert!(outcome.passed, "{command}: {}", outcome.detail);
            assert!(!pwned.exists(), "{command} ran code from the model path");
        }
    }

    #[test]
    fn a_placeholder_in_single_quotes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gate = EvalGate {
            command: "check '{model_path}'".into(),
            timeout: Duration::from_secs(120),
        };
        let job = GateJob {
            model_path: "m",
            run_id: "R1",
            run_dir: dir.path(),
            dataset_path: "d",
            stop: None,
        };
        let outcome = run_gate(&gate, &job);
        assert!(!outcome.passed);
        assert!(
            outcome.detail.contains("inside single quotes"),
            "{}",
            outcome.detail
        );
    }

    #[test]
    fn setting_the_stop_flag_stops_a_running_gate() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        let gate = EvalGate {
            command: format!("touch {}; sleep 600", started.display()),
            timeout: Duration::from_secs(3600),
        };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (done, finished) = std::sync::mpsc::channel();
        let run_dir = dir.path().join("run");
        let flag = stop.clone();
        std::thread::spawn(move || {
            let job = GateJob {
                model_path: "m",
                run_id: "R1",
                run_dir: &run_dir,
                dataset_path: "d",
                stop: Some(&flag),
            };
            let _ = done.send(run_gate(&gate, &job));
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the gate never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        // Generous: the gate's own timeout is an hour.
        let outcome = finished
            .recv_timeout(Duration::from_secs(120))
            .expect("the gate did not stop when asked");
        assert!(!outcome.passed);
        assert!(outcome.detail.contains("interrupted"), "{}", outcome.detail);
    }
}
