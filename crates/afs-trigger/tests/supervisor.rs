//! The command trainer under its supervisor: values never become shell code, files of the
//! run directory are never replaced, results are bounded, and nothing the command started
//! outlives the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use afs_trigger::{CommandTrainer, TrainError, TrainJob, Trainer};

/// A job in a fresh run directory under `root/<name>`, with a one-line dataset.
fn job(root: &Path, name: &str) -> TrainJob {
    let run_dir = root.join(name);
    let output_dir = run_dir.join("model");
    std::fs::create_dir_all(&output_dir).unwrap();
    let dataset_path = run_dir.join("train.jsonl");
    std::fs::write(&dataset_path, "{}\n").unwrap();
    TrainJob {
        run_id: "R1".into(),
        dataset_path,
        output_dir,
        run_dir,
        n_samples: 1,
    }
}

fn trainer(command: &str) -> CommandTrainer {
    CommandTrainer::shell(command, Duration::from_secs(120))
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            matches!(rest.split_whitespace().next(), Some("Z") | Some("X"))
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    wait_until("the pid file is written", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

#[test]
fn a_value_holding_shell_code_never_runs_however_the_placeholder_is_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    // A run directory whose name carries command substitutions of every kind.
    let evil = format!(
        "run $(touch {p}) `touch {p}` \"$(touch {p})\" '$(touch {p})' x",
        p = pwned.display()
    );
    for (i, command) in [
        r#"test -s "{data}" && printf '%s' "{data}" > "{output_dir}/seen""#,
        r#"test -s {data} && printf '%s' {data} > {output_dir}/seen"#,
        r#"test -s "$(printf '%s' "{data}")" && printf '%s' "x{data}" | cut -c2- > "{output_dir}/seen""#,
    ]
    .into_iter()
    .enumerate()
    {
        let job = job(dir.path(), &format!("{evil}{i}"));
        let command = format!("{command}; echo '{{\"model_path\": \"m\"}}'");
        let output = trainer(&command).train(&job).unwrap_or_else(|e| panic!("{command}: {e}"));
        assert_eq!(output.model_path, "m");
        let seen = std::fs::read_to_string(job.output_dir.join("seen")).unwrap();
        assert_eq!(Path::new(seen.trim_end()), job.dataset_path, "{command}");
        assert!(!pwned.exists(), "{command} ran code from a value");
    }
}

#[test]
fn a_placeholder_in_single_quotes_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "run");
    let marker = dir.path().join("ran");
    let trainer = trainer(&format!("touch {}; cat '{{data}}'", marker.display()));
    let err = trainer.validate().unwrap_err().to_string();
    assert!(err.contains("inside single quotes"), "{err}");
    let err = trainer.train(&job).unwrap_err().to_string();
    assert!(err.contains("remove the quotes"), "{err}");
    assert!(!marker.exists());
}

#[test]
fn files_already_in_the_run_directory_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let ok = r#"echo '{"model_path": "m"}'"#;
    for name in [
        "trainer.stdout.log",
        "trainer.stderr.log",
        "trainer.pid.json",
        "trainer.result.json",
    ] {
        // A plain file, and a link to a file outside the run directory.
        for link in [false, true] {
            let job = job(dir.path(), &format!("{name}-{link}"));
            let path = job.run_dir.join(name);
            if link {
                std::os::unix::fs::symlink(&precious, &path).unwrap();
            } else {
                std::fs::write(&path, "old").unwrap();
            }
            let err = trainer(ok).train(&job).unwrap_err().to_string();
            assert!(err.contains("exists"), "{name}: {err}");
            let expected = if link { "keep me" } else { "old" };
            assert_eq!(std::fs::read_to_string(&path).unwrap(), expected, "{name}");
        }
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

#[test]
fn an_oversized_result_is_a_bad_output_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A 10 MB model path on stdout.
        (
            "printf '{\"model_path\": \"'; head -c 10000000 /dev/zero | tr '\\0' m; echo '\"}'",
            "128 KiB",
        ),
        // A model path just over PATH_MAX in the result file.
        (
            "printf '{\"model_path\": \"%s\"}' $(head -c 4097 /dev/zero | tr '\\0' m) > {result}",
            "4096 bytes",
        ),
        // Metrics over 64 KiB.
        (
            "printf '{\"model_path\": \"m\", \"notes\": \"%s\"}' $(head -c 70000 /dev/zero | tr '\\0' n) > {result}",
            "64 KiB",
        ),
    ];
    for (i, (command, limit)) in cases.into_iter().enumerate() {
        let job = job(dir.path(), &format!("run{i}"));
        match trainer(command).train(&job) {
            Err(TrainError::BadOutput(reason)) => {
                assert!(reason.contains(limit), "{command}: {reason}");
                assert!(reason.contains("limit"), "{command}: {reason}");
            }
            other => panic!("{command}: {other:?}"),
        }
    }
}

#[test]
fn what_the_trainer_leaves_running_is_stopped_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "run");
    let pid_file: PathBuf = dir.path().join("leftover.pid");
    let command = format!(
        "sleep 1000 & echo $! > {}; echo '{{\"model_path\": \"m\"}}'",
        pid_file.display()
    );
    trainer(&command).train(&job).unwrap();
    let leftover = read_pid(&pid_file);
    wait_until("the leftover process is stopped", || gone(leftover));
}

#[test]
fn a_leftover_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "run");
    let pid_file: PathBuf = dir.path().join("stubborn.pid");
    let command = format!(
        "(trap '' TERM; exec sleep 1000) & echo $! > {}; echo '{{\"model_path\": \"m\"}}'",
        pid_file.display()
    );
    trainer(&command).train(&job).unwrap();
    let leftover = read_pid(&pid_file);
    wait_until("the stubborn leftover is killed", || gone(leftover));
}

#[test]
fn the_command_gets_no_pipe_and_no_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "run");
    // stdin is empty (the watchdog's pipe would never end), and the only pipes open in the
    // command's shell are those it inherited from outside afs (this test's own).
    let command = r#"test -z "$(cat)" || exit 3
for f in /proc/$$/fd/*; do readlink "$f"; done > "{output_dir}/fds"
echo '{"model_path": "m"}'"#;
    let output = trainer(command).train(&job);
    let stderr = std::fs::read_to_string(job.run_dir.join("trainer.stderr.log")).unwrap();
    assert!(output.is_ok(), "{output:?}: {stderr}");
    let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let fds = std::fs::read_to_string(job.output_dir.join("fds")).unwrap();
    for target in fds.lines().filter(|t| t.starts_with("pipe:")) {
        assert!(ours.iter().any(|o| o == target), "{target} leaked: {fds}");
    }
}

#[test]
fn a_result_that_is_not_a_regular_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    for (i, command) in [
        // A FIFO nobody writes: opening it to read would block for ever.
        "mkfifo {result}",
        "ln -s /etc/passwd {result}",
    ]
    .into_iter()
    .enumerate()
    {
        let job = job(dir.path(), &format!("run{i}"));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(trainer(command).train(&job).map(|o| o.model_path));
        });
        let result = finished
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{command}: reading the result blocked"));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{command}: {err}");
    }
}
