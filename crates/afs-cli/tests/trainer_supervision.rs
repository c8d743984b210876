//! The trainer and evaluation commands under afs's supervisor, with the real binary: values
//! never become shell code, bad templates are refused at startup, secrets are not passed
//! on, and no trainer process outlives afs — neither when afs is killed with SIGKILL nor
//! when something survives the watchdog (the next afs stops it before failing the run).

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{good_records, Env, NOW};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// `afs retrain --force` of every record into `out`, with `train_cmd`, as a child process.
/// `afs retrain --json --force` of any sample count into `out`, with `train_cmd` as the
/// trainer.
fn retrain_args(out: &Path, train_cmd: &str) -> Vec<String> {
    [
        "retrain",
        "--json",
        "--force",
        "--min-samples",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
        "--train-cmd",
        train_cmd,
    ]
    .map(String::from)
    .to_vec()
}

fn spawn_retrain(env: &Env, train_cmd: &str) -> Child {
    let args = retrain_args(&env.path("out"), train_cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.std_command_at(NOW, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `(state, pgid)` of a process from `/proc/PID/stat`, or `None` when it is gone.
fn stat(pid: i32) -> Option<(String, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields[0].to_string(), fields[2].parse().ok()?))
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    stat(pid).is_none_or(|(state, _)| state == "Z" || state == "X")
}

/// The live processes of group `pgid`.
fn members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(s, g)| g == pgid && s != "Z" && s != "X"))
        .collect()
}

/// Polls `done` until it holds, failing after a generous minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid the trainer wrote to `path`, once it is there.
fn pid_in(path: &Path) -> i32 {
    let mut pid = None;
    wait_until("the trainer wrote its pid", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.ends_with('\n'))
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// A trainer that starts a long-sleeping child, notes its pid and waits for it.
fn sleeping_trainer(pid_file: &Path) -> String {
    format!("sleep 1000 & echo $! > {}; wait", pid_file.display())
}

fn runs(env: &Env) -> Vec<Value> {
    env.check(&["runs", "--json"], 0).json_lines()
}

#[test]
fn killing_afs_with_sigkill_stops_the_trainer_and_everything_it_started() {
    let env = Env::new();
    env.import(&good_records(3, "kill"));
    let pid_file = env.path("sleep.pid");
    let mut afs = spawn_retrain(&env, &sleeping_trainer(&pid_file));
    let sleeper = pid_in(&pid_file);
    let (_, pgid) = stat(sleeper).expect("the trainer's child runs");
    assert!(!members(pgid).is_empty());

    afs.kill().unwrap(); // SIGKILL: afs gets no chance to clean up.
    afs.wait().unwrap();
    wait_until("the trainer's child is stopped", || gone(sleeper));
    wait_until("the trainer's process group is empty", || {
        members(pgid).is_empty()
    });
}

#[test]
fn killing_afs_loop_with_sigkill_stops_the_trainer_too() {
    let env = Env::new();
    env.import(&good_records(3, "loop"));
    let pid_file = env.path("sleep.pid");
    let out = env.path("out");
    let mut afs = env
        .std_command_at(
            NOW,
            &[
                "--set",
                &format!("trainer.output_dir={}", out.display()),
                "--set",
                "trainer.min_samples_for_retrain=1",
                "loop",
                "once",
                "--force",
                "--train-cmd",
                &sleeping_trainer(&pid_file),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = pid_in(&pid_file);
    let (_, pgid) = stat(sleeper).expect("the trainer's child runs");
    afs.kill().unwrap();
    afs.wait().unwrap();
    wait_until("the trainer's process group is empty", || {
        members(pgid).is_empty()
    });
}

/// Leaves the trainer's child running as an orphan of a dead afs (and of its watchdog);
/// returns the orphan's pid and process group.
fn leave_an_orphan(env: &Env) -> (i32, i32) {
    let pid_file = env.path("sleep.pid");
    let mut afs = spawn_retrain(env, &sleeping_trainer(&pid_file));
    let sleeper = pid_in(&pid_file);
    let (_, pgid) = stat(sleeper).expect("the trainer's child runs");

    // Simulate the worst case: afs and the trainer's watchdog (and shells) die at once,
    // leaving only the trainer's child. afs is paused first so it does not see its
    // trainer end and record the run itself.
    let afs_pid = Pid::from_raw(afs.id() as i32);
    kill(afs_pid, Signal::SIGSTOP).unwrap();
    for pid in members(pgid).into_iter().filter(|&p| p != sleeper) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_until("only the trainer's child is left", || {
        members(pgid) == vec![sleeper]
    });
    afs.kill().unwrap();
    afs.wait().unwrap();
    assert!(!gone(sleeper), "the orphan should still run here");
    (sleeper, pgid)
}

/// The orphan is stopped, and the dead afs's run is recorded as failed, saying so (which
/// only the recovery that stopped it writes, so the stop came first).
fn check_orphan_stopped(env: &Env, sleeper: i32, pgid: i32) {
    // `afs runs` recovers what a dead process left (if the loop has not already): it stops
    // the orphan, waiting until it is gone, before it records the run.
    let listed = runs(env);
    wait_until("the orphan is stopped", || gone(sleeper));
    let run = listed.last().unwrap(); // The oldest: the dead afs's.
    assert_eq!(run["status"], "failed", "{listed:?}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("leftover trainer process"), "{error}");
    assert!(error.contains(&format!("process group {pgid}")), "{error}");
}

#[test]
fn a_trainer_left_by_a_dead_afs_is_stopped_before_its_run_is_recorded_as_failed() {
    let env = Env::new();
    env.import(&good_records(3, "orphan"));
    let (sleeper, pgid) = leave_an_orphan(&env);
    // The next afs (here `afs runs`) stops the orphan, then records the run as failed.
    check_orphan_stopped(&env, sleeper, pgid);
}

#[test]
fn the_next_loop_stops_an_orphaned_trainer_before_failing_its_run() {
    let env = Env::new();
    env.import(&good_records(3, "orphan-loop"));
    let (sleeper, pgid) = leave_an_orphan(&env);
    // Building the loop recovers what the dead process left; nothing triggers after it.
    env.check(
        &[
            "--set",
            "trigger.min_new_samples=1000",
            "loop",
            "once",
            "--train-cmd",
            "true",
        ],
        0,
    );
    check_orphan_stopped(&env, sleeper, pgid);
}

#[test]
fn the_trainer_does_not_get_the_services_tokens() {
    let env = Env::new();
    env.import(&good_records(3, "env"));
    let dump = env.path("env.txt");
    let out = env.path("out");
    let train_cmd = format!("env > {}; echo '{{\"model_path\": \"m\"}}'", dump.display());
    let args = retrain_args(&out, &train_cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.command_at(NOW, &args)
        .env("AFS_TOKENS", "s3cret-service-token")
        .env("AFS_SERVE__TOKENS", "s3cret-config-token")
        .env("AFS_SERVE__TOKEN_FILE", "/etc/afs/s3cret-tokens")
        .assert()
        .success();
    let seen = std::fs::read_to_string(&dump).unwrap();
    assert!(seen.contains("AFS_RUN_ID="), "{seen}");
    assert!(!seen.contains("AFS_TOKENS"), "{seen}");
    assert!(!seen.contains("s3cret"), "{seen}");
}

#[test]
fn a_dataset_path_holding_shell_code_never_runs_even_in_double_quotes() {
    let env = Env::new();
    env.import(&good_records(3, "quote"));
    let pwned = env.path("pwned");
    let out = env.path(&format!(
        "out $(touch {p}) `touch {p}` x",
        p = pwned.display()
    ));
    let train_cmd =
        r#"test -s "{data}" && test "{data}" = "$AFS_DATA_PATH" && echo '{"model_path": "m"}'"#;
    let args = retrain_args(&out, train_cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = env.check(&args, 0);
    assert_eq!(run.json()["outcome"], "completed", "{run:#?}");
    assert!(!pwned.exists(), "a value ran as shell code");
}

#[test]
fn templates_the_shell_would_get_wrong_are_refused_at_startup() {
    let env = Env::new();
    env.import(&good_records(3, "refuse"));
    env.check_err(
        &[
            "retrain",
            "--force",
            "--train-cmd",
            "python train.py '{data}'",
        ],
        3,
        &[
            "invalid --train-cmd",
            "placeholder {data} is inside single quotes",
            "remove the quotes",
        ],
    );
    env.check_err(
        &["retrain", "--force", "--train-cmd", "check {model_path}"],
        3,
        &["not available to the trainer command"],
    );
    env.check_err(
        &[
            "loop",
            "once",
            "--train-cmd",
            "true",
            "--eval-cmd",
            "check '{model_path}'",
        ],
        3,
        &["invalid --eval-cmd", "inside single quotes"],
    );
    // Nothing started: no run, no dataset.
    assert!(runs(&env).is_empty());
}
