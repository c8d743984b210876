//! `afs demo` against the real binary: the timeline and table it prints, the database it
//! leaves for every other command, and the same output for the same seed.

mod common;

use std::path::{Path, PathBuf};

use common::{Env, Run};
use serde_json::Value;

/// `afs demo --seed SEED --weeks 1 --requests-per-hour 100 EXTRA` with its database in `env`.
fn demo(env: &Env, seed: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "demo",
        "--seed",
        seed,
        "--weeks",
        "1",
        "--requests-per-hour",
        "100",
    ];
    args.extend_from_slice(extra);
    env.check(&args, 0)
}

/// The demo's output with the temp dir replaced, so runs in two dirs compare equal.
fn without_dir(env: &Env, text: &str) -> String {
    text.replace(&env.dir.path().display().to_string(), "[dir]")
}

#[test]
fn the_demo_prints_a_timeline_and_a_table_and_leaves_a_database() {
    let env = Env::new();
    let run = env.check(&["demo", "--seed", "7", "--weeks", "1"], 0);
    let out = &run.stdout;
    let kinds: Vec<&str> = out
        .lines()
        .take_while(|line| line.starts_with("day "))
        .map(|line| line.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"start"), "{out}");
    assert_eq!(kinds.last(), Some(&"finish"), "{out}");
    assert_eq!(kinds.iter().filter(|k| **k == "day").count(), 7, "{out}");
    assert!(kinds.contains(&"retrain"), "{out}");
    assert!(kinds.contains(&"deploy"), "{out}");
    assert!(
        kinds.contains(&"promote") || kinds.contains(&"rollback"),
        "{out}"
    );
    // The trainer says plainly whether each model is better or worse.
    assert!(
        out.contains("better than champion") || out.contains("worse than champion"),
        "{out}"
    );
    for needle in [
        "7 simulated days",
        "(seed 7)",
        "champion     true quality",
        "model        true quality",
        "nayru-v1",
        &format!("database: {}", env.db.display()),
        "try:",
        &format!("afs --db {} status", env.db.display()),
    ] {
        assert!(out.contains(needle), "lacks {needle:?}:\n{out}");
    }

    // Every other command can inspect the database it leaves.
    let status = env.check(&["status", "--json"], 0).json();
    assert_eq!(status["status"]["iterations"], 7 * 24);
    assert!(status["status"]["total_retrains"].as_u64().unwrap() >= 1);
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    assert!(!runs.is_empty());
    assert!(runs
        .iter()
        .all(|r| r["status"] == "completed" || r["status"] == "failed"));
    let history = env.check(&["ab", "history"], 0).stdout;
    assert!(history.contains("deploy"), "{history}");
    assert!(
        history.contains("promote") || history.contains("rollback"),
        "{history}"
    );
    let stats = env.check(&["stats", "--by-model", "--json"], 0).json();
    assert!(stats.get("nayru-v1").is_some(), "{stats}");
    assert!(env
        .check(&["status"], 0)
        .stdout
        .contains("champion: nayru-v"));

    // A database that holds data is refused.
    env.check_err(&["demo", "--weeks", "1"], 5, &["already holds data"]);
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let (a, b) = (Env::new(), Env::new());
    let run_a = demo(&a, "3", &[]);
    let run_b = demo(&b, "3", &[]);
    assert_eq!(
        without_dir(&a, &run_a.stdout),
        without_dir(&b, &run_b.stdout)
    );
    let other = demo(&Env::new(), "4", &[]);
    assert_ne!(
        without_dir(&a, &run_a.stdout)
            .lines()
            .take(30)
            .collect::<Vec<_>>(),
        other.stdout.lines().take(30).collect::<Vec<_>>()
    );

    // With --json: one object per event, then the summary; the same for the same seed but
    // for the paths.
    let (a, b) = (Env::new(), Env::new());
    let json_a = demo(&a, "3", &["--json"]);
    let json_b = demo(&b, "3", &["--json"]);
    assert_eq!(
        without_dir(&a, &json_a.stdout),
        without_dir(&b, &json_b.stdout)
    );
    let lines = json_a.json_lines();
    let (summary, events) = lines.split_last().unwrap();
    assert_eq!(events[0]["kind"], "start");
    assert_eq!(events.last().unwrap()["kind"], "finish");
    assert!(events
        .iter()
        .all(|e| e["at"].is_string() && e["message"].is_string()));
    assert_eq!(summary["seed"], 3);
    assert_eq!(summary["days"], 7);
    assert_eq!(summary["db_path"], a.db.display().to_string());
    assert!(summary["champions"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
}

#[test]
fn without_db_the_demo_uses_a_new_temporary_directory() {
    let env = Env::new();
    // `--db` from AFS_DB is not the demo's: only --db on the command line is.
    let mut cmd = assert_cmd::Command::cargo_bin("afs").unwrap();
    cmd.current_dir(env.dir.path())
        .env("AFS_DB", env.path("not-this.db"))
        .args(["demo", "--days", "1", "--requests-per-hour", "20"]);
    let run = Env::run_command(cmd);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(!env.path("not-this.db").exists());
    let db = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("database: "))
        .map(PathBuf::from)
        .expect("the table names the database");
    let dir = db.parent().unwrap().to_path_buf();
    // Remove the demo's directory whatever happens below.
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("afs-demo-"),
        "{dir:?}"
    );
    assert!(db.is_file());
    assert!(
        Path::new(&dir).join("runs").join("models").is_dir(),
        "{dir:?}"
    );
    let status: Value = {
        let mut cmd = assert_cmd::Command::cargo_bin("afs").unwrap();
        cmd.current_dir(env.dir.path())
            .arg("--db")
            .arg(&db)
            .args(["status", "--json"]);
        Env::run_command(cmd).json()
    };
    assert_eq!(status["status"]["iterations"], 24);
}
