//! `RunStore` tests: one retrain at a time across processes, stale-run recovery, state.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use afs_store::{
    ErrorKind, ManualClock, NewRun, RunOutcome, RunStatus, RunStore, SqliteConfig, SqliteStore,
    SystemClock,
};
use chrono::{Duration, TimeZone, Utc};

fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path), Arc::new(SystemClock)).unwrap()
}

fn new_run(trigger: &str) -> NewRun {
    NewRun {
        id: None,
        trigger_type: trigger.into(),
        trigger: "{\"reason\":\"test\"}".into(),
        run_dir: "/tmp/run".into(),
    }
}

#[test]
fn a_run_goes_from_running_to_its_final_status_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
    ));
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("a.db")), clock.clone()).unwrap();
    let run = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.owner_pid, std::process::id());
    assert_eq!(
        store.begin_run(new_run("manual")).unwrap_err().kind(),
        ErrorKind::Conflict
    );

    store
        .set_run_dataset(&run.id, "/tmp/run/data.jsonl", "{}", 1200)
        .unwrap();
    clock.advance(Duration::minutes(5));
    let done = store
        .finish_run(
            &run.id,
            RunOutcome {
                status: RunStatus::Completed,
                model_path: Some("/m".into()),
                metrics: Some("{\"loss\":0.2}".into()),
                error: None,
            },
        )
        .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.n_samples, Some(1200));
    assert_eq!(
        done.finished_at,
        Some(run.started_at + Duration::minutes(5))
    );
    let again = store.finish_run(
        &run.id,
        RunOutcome {
            status: RunStatus::Failed,
            model_path: None,
            metrics: None,
            error: None,
        },
    );
    assert_eq!(again.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        store
            .finish_run(
                "nope",
                RunOutcome {
                    status: RunStatus::Failed,
                    model_path: None,
                    metrics: None,
                    error: None
                }
            )
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store
            .last_run_with_status(RunStatus::Completed)
            .unwrap()
            .unwrap()
            .id,
        run.id
    );
    assert!(store
        .last_run_with_status(RunStatus::Failed)
        .unwrap()
        .is_none());

    // A second run may start now; history is newest first.
    clock.advance(Duration::minutes(1));
    let second = store.begin_run(new_run("schedule")).unwrap();
    let ids: Vec<String> = store.runs(10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![second.id, run.id]);
}

const CHILD_ENV: &str = "AFS_STORE_TEST_RUN_CHILD_DB";

/// Runs only as a child: starts a run, says so, then waits for stdin to close (or exits at
/// once when told to "crash").
#[test]
fn child_run_owner() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = open(std::path::Path::new(&path));
    let run = store.begin_run(new_run("manual")).unwrap();
    println!("STARTED {}", run.id);
    if std::env::var("AFS_STORE_TEST_RUN_CHILD_MODE").as_deref() == Ok("crash") {
        std::process::exit(0);
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn only_one_run_across_processes_and_dead_owners_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let exe = std::env::current_exe().unwrap();
    let spawn = |mode: &str| {
        Command::new(&exe)
            .args([
                "--exact",
                "child_run_owner",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD_ENV, &path)
            .env("AFS_STORE_TEST_RUN_CHILD_MODE", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_started = |child: &mut std::process::Child| -> String {
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "child ended without starting a run"
            );
            if let Some(id) = line.trim().strip_prefix("STARTED ") {
                return id.to_string();
            }
        }
    };

    // A live process owns a run: this process may not start another.
    let mut owner = spawn("hold");
    let held = wait_started(&mut owner);
    let store = open(&path);
    let err = store.begin_run(new_run("manual")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains(&held), "{err}");
    assert!(
        store.recover_stale_runs().unwrap().is_empty(),
        "a live owner's run is not stale"
    );

    // The owner dies without finishing: its run is marked failed and no longer blocks.
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert_eq!(store.recover_stale_runs().unwrap(), vec![held.clone()]);
    let dead = store.run(&held).unwrap();
    assert_eq!(dead.status, RunStatus::Failed);
    assert!(dead.error.unwrap().contains("died"));

    // A child that exits mid-run is recovered by the next begin_run directly.
    let mut crasher = spawn("crash");
    let crashed = wait_started(&mut crasher);
    crasher.wait().unwrap();
    let mine = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(store.run(&crashed).unwrap().status, RunStatus::Failed);
    assert_eq!(mine.status, RunStatus::Running);
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = open(&path);
        assert_eq!(store.state("trigger").unwrap(), None);
        store.put_state("trigger", "{\"baseline\":0.8}").unwrap();
        store
            .put_states(&[("trigger", "{\"baseline\":0.7}"), ("other", "1")])
            .unwrap();
        assert_eq!(
            store.put_state("", "x").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    let store = open(&path);
    assert_eq!(
        store.state("trigger").unwrap().as_deref(),
        Some("{\"baseline\":0.7}")
    );
    assert_eq!(store.state("other").unwrap().as_deref(), Some("1"));
}
