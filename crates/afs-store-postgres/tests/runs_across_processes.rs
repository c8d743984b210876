//! Retrain-run ownership across processes: a child process (this test binary re-run) begins
//! a run and is killed with SIGKILL; the server ends its session, which releases the run's
//! lock, so this process's `begin_run` succeeds and the old run is `failed` with an error
//! naming its lost owner. Skipped without a test cluster (`AFS_TEST_PG_URL`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use afs_store::{ErrorKind, NewRun, RunStatus, RunStore, SystemClock};
use afs_store_postgres::testing::{cluster_url, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore};

/// The variable that makes [`run_owner_child`] act: the database's URL.
const CHILD_URL_ENV: &str = "AFS_PG_RUN_OWNER_CHILD_URL";

/// A run to start.
fn new_run(trigger: &str) -> NewRun {
    NewRun {
        id: None,
        trigger_type: trigger.to_string(),
        trigger: "{}".to_string(),
        run_dir: "/tmp/afs-run".to_string(),
    }
}

#[test]
fn a_killed_owner_loses_its_run_to_the_next_begin_run() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = PgStore::open(PgConfig::new(&database.url), Arc::new(SystemClock)).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "run_owner_child",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_URL_ENV, &database.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held = loop {
        let line = lines
            .next()
            .expect("the child ended before starting its run")
            .unwrap();
        if let Some(id) = line.trim().strip_prefix("STARTED ") {
            break id.to_string();
        }
    };

    // While the child lives, its run blocks this process and is not stale.
    let err = store.begin_run(new_run("manual")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains(&held), "{err}");
    assert!(store.recover_stale_runs().unwrap().is_empty());
    let running = store.run(&held).unwrap();
    assert_eq!(running.status, RunStatus::Running);
    assert_eq!(running.owner_pid, child_pid);

    // SIGKILL: no destructor runs, the server alone notices the session's end.
    child.kill().unwrap();
    child.wait().unwrap();

    let mine = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(mine.status, RunStatus::Running);
    assert_eq!(mine.owner_pid, std::process::id());
    let dead = store.run(&held).unwrap();
    assert_eq!(dead.status, RunStatus::Failed);
    assert!(dead.finished_at.is_some());
    let error = dead.error.unwrap();
    assert!(
        error.contains(&format!("pid {child_pid}")) && error.contains("died"),
        "{error}"
    );
    // The new run is this process's: finishing it releases it, and the next one starts.
    store
        .finish_run(
            &mine.id,
            afs_store::RunOutcome {
                status: RunStatus::Completed,
                model_path: None,
                metrics: None,
                error: None,
            },
        )
        .unwrap();
    let next = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(next.status, RunStatus::Running);
}

/// The child of [`a_killed_owner_loses_its_run_to_the_next_begin_run`] (this binary re-run
/// with `--exact run_owner_child`): begins a run, says `STARTED <id>` and waits for its
/// stdin to close (it is killed first). Without its environment variable it returns at once.
#[test]
fn run_owner_child() {
    let Ok(url) = std::env::var(CHILD_URL_ENV) else {
        return;
    };
    let store = PgStore::open(PgConfig::new(&url), Arc::new(SystemClock)).unwrap();
    let run = store.begin_run(new_run("manual")).unwrap();
    println!("STARTED {}", run.id);
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}
