//! The evaluation gate: a command that must succeed on a new model before it is deployed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::EvalGate;
use crate::report::GateOutcome;

/// What the gate is run on.
pub(crate) struct GateJob<'a> {
    pub(crate) model_path: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) run_dir: &'a Path,
    pub(crate) dataset_path: &'a str,
}

/// Quotes `text` for `sh`: inside single quotes every character is literal except `'`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn command_line(gate: &EvalGate, job: &GateJob<'_>) -> String {
    gate.command
        .replace("{model_path}", &shell_quote(job.model_path))
        .replace("{run_id}", &shell_quote(job.run_id))
        .replace("{run_dir}", &shell_quote(&job.run_dir.to_string_lossy()))
        .replace("{data}", &shell_quote(job.dataset_path))
}

/// Runs the gate and says whether it passed. Never panics on a misbehaving command: every
/// failure (start, exit status, timeout) is a rejection with its reason.
pub(crate) fn run_gate(gate: &EvalGate, job: &GateJob<'_>) -> GateOutcome {
    let command = command_line(gate, job);
    let started = Instant::now();
    let (passed, detail) = match run(gate.timeout, &command, job) {
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

fn run(timeout: Duration, command: &str, job: &GateJob<'_>) -> Result<String, String> {
    // The run directory exists after a completed run; create it anyway so the logs have a
    // home when a trainer reported a model without using it.
    std::fs::create_dir_all(job.run_dir)
        .map_err(|e| format!("create {}: {e}", job.run_dir.display()))?;
    let stdout_path = job.run_dir.join("eval.stdout.log");
    let stderr_path = job.run_dir.join("eval.stderr.log");
    let stdout = create(&stdout_path)?;
    let stderr = create(&stderr_path)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("AFS_MODEL_PATH", job.model_path)
        .env("AFS_RUN_ID", job.run_id)
        .env("AFS_RUN_DIR", job.run_dir)
        .env("AFS_DATA_PATH", job.dataset_path)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so a timeout stops the command's children too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start the evaluation command: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for the evaluation command: {e}")),
        }
        if started.elapsed() >= timeout {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {}s and was stopped; stderr: {}",
                timeout.as_secs_f64(),
                tail(&stderr_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        Ok("exited with code 0".into())
    } else {
        let code = status
            .code()
            .map_or("a signal".to_string(), |c| format!("exit code {c}"));
        Err(format!("ended with {code}; stderr: {}", tail(&stderr_path)))
    }
}

fn create(path: &PathBuf) -> Result<File, String> {
    File::create(path).map_err(|e| format!("create {}: {e}", path.display()))
}

/// Kills the process group the command leads (its group id is its pid).
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

/// The last few lines of a log, for messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(5)..].join(" | ");
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            r#"test {model_path} = "/models/it's here" && test "$AFS_RUN_ID" = R1"#,
            second,
            true,
            "code 0",
        );
        check("echo too weak >&2; exit 3", second, false, "exit code 3");
        check("echo too weak >&2; exit 3", second, false, "too weak");
        check("sleep 5", Duration::from_millis(200), false, "timed out");
    }
}
