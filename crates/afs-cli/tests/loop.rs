//! `afs loop once`, `afs loop run` and `afs status` against the real binary: a small shell
//! trainer, a pinned clock, a stop by SIGTERM in the middle of an iteration.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{good_records, Env, Run, NOW};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A trainer that notes the dataset it got, optionally sleeps, and reports a model.
const TRAINER: &str = r#"#!/bin/sh
# usage: train.sh DATA OUTPUT_DIR [SLEEP_SECS]
mkdir -p "$2"
touch "$2/../started"
echo "$1" > "$2/../data-path"
wc -l < "$1" > "$2/../data-lines"
sleep "${3:-0}"
echo "trained on $1" > "$2/model.bin"
echo "{\"model_path\": \"$2/model.bin\", \"eval_loss\": 0.42}"
"#;

/// A log of 120 good records of `m1`, `m1` as champion, the trainer script, and a config
/// file that retrains after 100 new samples.
fn fixture() -> Env {
    let env = Env::new();
    env.import(&good_records(120, "loop"));
    env.check(&["ab", "set-champion", "m1", "--path", "/models/m1"], 0);
    env.write("train.sh", TRAINER);
    env.write(
        "afs.toml",
        "[trigger]\nmin_new_samples = 100\n\n[trainer]\ntrain_cmd = \"sh train.sh {data} {output_dir}\"\n",
    );
    env
}

fn status_of(env: &Env) -> Value {
    env.check(&["status", "--json"], 0).json()
}

#[test]
fn loop_once_imports_triggers_trains_and_deploys_a_challenger() {
    let env = fixture();
    let run = env.check(&["loop", "once"], 0);
    assert!(
        run.stdout.starts_with("iteration 1: retrain "),
        "{}",
        run.stdout
    );
    for needle in [
        "trained on 120 samples",
        "retrain triggered (sample_count)",
        "deployed m1-v2 as challenger with 10% of traffic",
    ] {
        assert!(run.stdout.contains(needle), "lacks {needle:?}: {run:#?}");
    }
    // The trainer was called with the dataset of this run, holding the 120 samples.
    let runs: Vec<_> = std::fs::read_dir(env.path("continuous_output/runs"))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1);
    let run_dir = runs[0].as_ref().unwrap().path();
    let data = std::fs::read_to_string(run_dir.join("data-path")).unwrap();
    // Relative to the current directory, as the config file's output_dir is.
    assert_eq!(
        env.dir.path().join(data.trim()),
        run_dir.join("train.jsonl")
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("data-lines"))
            .unwrap()
            .trim(),
        "120"
    );

    let status = status_of(&env);
    assert_eq!(status["status"]["champion_model"], "m1");
    assert_eq!(status["status"]["challenger_model"], "m1-v2");
    assert_eq!(status["status"]["total_retrains"], 1);
    assert_eq!(status["status"]["iterations"], 1);
    assert_eq!(status["status"]["in_progress"], Value::Null);
    assert_eq!(status["traffic_split"][1]["share"], 0.1);
    let ab = env.check(&["ab", "status", "--json"], 0).json();
    assert_eq!(ab["challenger"]["name"], "m1-v2", "{ab}");
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    assert_eq!(runs[0]["status"], "completed");
    assert_eq!(runs[0]["metrics"]["eval_loss"], 0.42);

    // The next iteration judges the experiment and defers retraining while it runs.
    let run = env.check(&["loop", "once", "--json"], 0);
    let report = run.json();
    assert_eq!(report["iteration"], 2);
    assert_eq!(report["experiment"]["challenger"], "m1-v2");
    assert_eq!(report["retrain"]["status"], "deferred");
    assert_eq!(report["deploy"], Value::Null);

    let text = env.check(&["status"], 0).stdout;
    for needle in [
        "loop: 2 iterations (0 failed, 0 interrupted)",
        "champion: m1",
        "challenger: m1-v2 (experiment 1",
        "traffic: m1 90.0%, m1-v2 10.0%",
        "errors: none",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }
}

#[test]
fn loop_once_reports_failures_and_needs_a_trainer() {
    let env = fixture();
    // Nothing due: exit 0 and says so.
    let run = env.check(
        &["--set", "trigger.min_new_samples=1000", "loop", "once"],
        0,
    );
    assert!(
        run.stdout.starts_with("iteration 1: no retrain triggered"),
        "{run:#?}"
    );

    // A failing trainer: recorded, exit 1, nothing deployed.
    let run = env.check(
        &["loop", "once", "--train-cmd", "echo broken >&2; exit 7"],
        1,
    );
    assert!(run.stdout.contains("retrain "), "{run:#?}");
    assert!(run.stderr.contains("recorded 1 problem"), "{run:#?}");
    let status = status_of(&env);
    assert_eq!(status["status"]["failed_retrains"], 1);
    assert_eq!(status["status"]["challenger_model"], Value::Null);
    assert!(!status["status"]["errors"].as_array().unwrap().is_empty());

    // An evaluation gate that rejects the model: trained, not deployed, exit 1.
    let run = env.check(
        &[
            "loop",
            "once",
            "--force",
            "--eval-cmd",
            "test -f {model_path} && echo too weak >&2 && exit 3",
        ],
        1,
    );
    assert!(
        run.stdout.contains("evaluation gate rejected the model"),
        "{run:#?}"
    );
    assert_eq!(status_of(&env)["status"]["challenger_model"], Value::Null);

    // No trainer anywhere: a usage error. A bad flag value: invalid input.
    std::fs::remove_file(env.path("afs.toml")).unwrap();
    env.check_err(&["loop", "once"], 2, &["no trainer command", "--train-cmd"]);
    env.check_err(&["loop", "once", "--train-cmd", " "], 3, &["--train-cmd"]);
    env.check_err(
        &["loop", "run", "--interval", "0s", "--train-cmd", "true"],
        2,
        &["--interval"],
    );
    // A missing database is not created by the loop.
    let other = Env::new();
    other.check_err(
        &["loop", "once", "--train-cmd", "true"],
        1,
        &["does not exist"],
    );
    assert!(!other.db.exists());
}

#[test]
fn loop_run_stops_after_max_iterations() {
    let env = fixture();
    let started = Instant::now();
    // AFS_NOW pins where the clock starts; `loop run` lets it run, so the interval passes.
    let run = env.check(
        &["loop", "run", "--max-iterations", "2", "--interval", "1s"],
        0,
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:#?}");
    assert!(lines[0].starts_with("iteration 1: retrain"), "{run:#?}");
    assert!(
        lines[0].contains("deployed m1-v2 as challenger"),
        "{run:#?}"
    );
    assert!(
        lines[1].starts_with("iteration 2: experiment 1"),
        "{run:#?}"
    );
    assert_eq!(
        lines[2],
        "loop stopped after 2 iterations (0 failed): --max-iterations reached"
    );
    assert!(run.stderr.contains("every 1s for 2 iterations"), "{run:#?}");

    // --json: one report per iteration, then the summary. --force-first retrains although
    // no trigger is due (after a rollback ends the running experiment).
    env.check(&["ab", "rollback"], 0);
    let run = env.check(
        &[
            "--set",
            "trigger.min_new_samples=100000",
            "loop",
            "run",
            "--json",
            "--max-iterations",
            "1",
            "--force-first",
        ],
        0,
    );
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert_eq!(lines[0]["retrain"]["status"], "completed", "{run:#?}");
    assert_eq!(lines[0]["retrain"]["trigger"], "manual", "{run:#?}");
    assert_eq!(lines[0]["deploy"]["name"], "m1-v3");
    assert_eq!(
        lines[1],
        serde_json::json!({"iterations": 1, "failed_iterations": 0, "stop_reason": "max_iterations"})
    );
}

/// Reads the rest of a child's stdout and waits for it, failing after `timeout`.
fn finish(mut child: Child, timeout: Duration) -> Run {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("afs loop run did not stop within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code().expect("exited by itself");
    Run {
        code,
        stdout,
        stderr,
    }
}

/// Sends `signal` to the child (its own pid only, never a group).
fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id()).unwrap();
    assert!(pid > 1);
    kill(Pid::from_raw(pid), signal).unwrap();
}

#[test]
fn sigterm_lets_the_iteration_in_progress_finish_and_stops_cleanly() {
    let env = fixture();
    // The trainer sleeps 2 s; SIGTERM arrives while it runs.
    let (child, _) = start_until_the_trainer_runs(
        &env,
        &[
            "loop",
            "run",
            "--interval",
            "1h",
            "--train-cmd",
            "sh train.sh {data} {output_dir} 2",
        ],
    );
    signal(&child, Signal::SIGTERM);
    let run = finish(child, Duration::from_secs(60));
    assert_eq!(run.code, 0, "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert!(
        lines[0].starts_with("iteration 1: retrain")
            && lines[0].contains("deployed m1-v2 as challenger"),
        "the iteration in progress finished: {run:#?}"
    );
    assert_eq!(
        lines[1],
        "loop stopped after 1 iteration (0 failed): stop requested"
    );
    assert!(
        run.stderr.contains("stopping after the current iteration"),
        "{run:#?}"
    );

    // The store is consistent: nothing in progress, the run completed, the model deployed.
    let status = status_of(&env);
    assert_eq!(status["status"]["in_progress"], Value::Null, "{status}");
    assert_eq!(
        status["status"]["last_iteration"]["outcome"], "ok",
        "{status}"
    );
    assert_eq!(status["status"]["interrupted_iterations"], 0);
    assert_eq!(status["retrains"]["running"], Value::Null);
    assert_eq!(status["retrains"]["last"]["status"], "completed");
    assert_eq!(status["status"]["challenger_model"], "m1-v2");

    // A stop while the loop naps between iterations ends it at once (SIGINT too).
    let mut cmd = env.std_command_at(NOW, &["loop", "run", "--json", "--interval", "1h"]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its first iteration to finish, then interrupt the nap.
    let started = Instant::now();
    while status_of(&env)["status"]["last_iteration"]["iteration"] != 2 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, Signal::SIGINT);
    let run = finish(child, Duration::from_secs(10));
    assert_eq!(run.code, 0, "{run:#?}");
    let lines = run.json_lines();
    assert_eq!(lines.last().unwrap()["stop_reason"], "stopped", "{run:#?}");
}

/// Starts `afs` with `args` (a loop command whose trainer is `train.sh`) and returns it with
/// the run directory of its first retrain, once the trainer has started.
/// The caller waits for the child.
#[allow(clippy::zombie_processes)]
fn start_until_the_trainer_runs(env: &Env, args: &[&str]) -> (Child, std::path::PathBuf) {
    let mut child = env
        .std_command_at(NOW, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = || {
        std::fs::read_dir(env.path("continuous_output/runs"))
            .ok()
            .and_then(|dirs| {
                dirs.flatten()
                    .map(|d| d.path())
                    .find(|p| p.join("started").exists())
            })
    };
    let started = Instant::now();
    loop {
        if let Some(dir) = run_dir() {
            return (child, dir);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the trainer never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `afs loop run` with a trainer that sleeps `secs`, once the trainer has started.
fn loop_with_a_running_trainer(env: &Env, secs: u32) -> (Child, std::path::PathBuf) {
    let train_cmd = format!("sh train.sh {{data}} {{output_dir}} {secs}");
    start_until_the_trainer_runs(env, &["loop", "run", "--train-cmd", &train_cmd])
}

#[test]
fn a_second_signal_stops_the_running_trainer_and_records_the_run_as_interrupted() {
    let env = fixture();
    // A trainer that would take a minute; it is in its own process group, so only afs can
    // stop it.
    let (child, run_dir) = loop_with_a_running_trainer(&env, 60);
    signal(&child, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, Signal::SIGTERM);
    let run = finish(child, Duration::from_secs(30));
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("stopping the trainer"), "{run:#?}");
    assert!(
        run.stdout.contains("stop requested"),
        "the loop stopped after the iteration: {run:#?}"
    );
    // The trainer was stopped, not left to finish: no model, the run says interrupted.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!run_dir.join("model").join("model.bin").exists());
    let status = status_of(&env);
    assert_eq!(status["status"]["in_progress"], Value::Null, "{status}");
    assert_eq!(status["retrains"]["running"], Value::Null, "{status}");
    assert_eq!(
        status["retrains"]["last"]["status"], "interrupted",
        "{status}"
    );
}

#[test]
fn a_loop_killed_mid_iteration_is_recorded_as_interrupted_at_the_next_start() {
    let env = fixture();
    let (mut child, run_dir) = loop_with_a_running_trainer(&env, 1);
    // SIGKILL: afs gets no chance to stop anything (a third signal, or `kill -9`).
    child.kill().unwrap();
    child.wait().unwrap();

    // The iteration was left unfinished. The trainer does not outlive afs (its watchdog
    // stops the group; see tests/trainer_supervision.rs), so it never writes its model.
    let status = status_of(&env);
    assert_eq!(status["status"]["in_progress"]["iteration"], 1, "{status}");
    assert!(run_dir.exists(), "{}", run_dir.display());

    // The next start (building the loop) records the interruption and marks the run
    // failed; the iteration goes on.
    let run = env.check(&["loop", "once", "--json"], 0);
    let report = run.json();
    assert_eq!(report["iteration"], 2, "{report}");
    let status = status_of(&env);
    assert_eq!(status["status"]["interrupted_iterations"], 1, "{status}");
    assert_eq!(status["status"]["in_progress"], Value::Null);
    assert_eq!(status["retrains"]["running"], Value::Null);
    assert_ne!(
        status["retrains"]["last"]["status"], "completed",
        "{status}"
    );
    let errors = status["status"]["errors"].to_string();
    assert!(errors.contains("interrupted"), "{errors}");
}

#[test]
fn loop_once_stops_its_trainer_on_sigint_and_exits_130() {
    let env = fixture();
    let (child, _) = start_until_the_trainer_runs(
        &env,
        &[
            "loop",
            "once",
            "--json",
            "--train-cmd",
            "sh train.sh {data} {output_dir} 60",
        ],
    );
    signal(&child, Signal::SIGINT);
    let run = finish(child, Duration::from_secs(30));
    assert_eq!(run.code, 130, "{run:#?}");
    assert!(run.stderr.contains("stopping the trainer"), "{run:#?}");
    assert_eq!(
        run.json()["retrain"]["run_status"],
        "interrupted",
        "{run:#?}"
    );
    let status = status_of(&env);
    assert_eq!(
        status["retrains"]["last"]["status"], "interrupted",
        "{status}"
    );
}
