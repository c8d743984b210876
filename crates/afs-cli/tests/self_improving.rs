//! A real model improving itself through afs (`examples/self-improving`): a naive-Bayes
//! topic classifier that trains and answers on a CPU in milliseconds, served by its own
//! Python process that routes, logs and records feedback through a real `afs serve
//! --with-loop` with the Python client, for simulated users whose thumbs follow a hidden
//! ground truth. afs's loop generates the training file, runs the example's trainer on it,
//! deploys the new model as challenger, and its judge promotes or rolls back.
//!
//! The test asks for one promotion (a trigger window starts on a whole minute, so each
//! further retrain waits for the next minute of traffic: the example's README shows longer
//! runs), then checks on held-out questions that the final champion answers measurably
//! better than the first and that every promotion chose the better model.
//!
//! The interpreter is `AFS_PYTHON` (CI's virtual environment), else `python3`; without it
//! the test fails when `CI` is set and prints a notice otherwise. The example needs only the
//! standard library and `python/afs-client` (put on `PYTHONPATH`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .expect("the workspace root")
        .to_path_buf()
}

#[test]
fn a_real_model_gets_better_through_the_loop_and_every_promotion_was_deserved() {
    let python = std::env::var("AFS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !Command::new(&python)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        if std::env::var_os("CI").is_some() {
            panic!("{python:?} is missing, and CI is set: the self-improving example must run");
        }
        eprintln!("notice: {python:?} not found; skipping the self-improving example");
        return;
    }
    let root = workspace_root();
    let output = Command::new(&python)
        .arg(root.join("examples/self-improving/simulate.py"))
        .env("AFS_BIN", env!("CARGO_BIN_EXE_afs"))
        .env("PYTHONPATH", root.join("python/afs-client/src"))
        .env("SELF_IMPROVING_PROMOTIONS", "1")
        .env("SELF_IMPROVING_MAX_SECONDS", "120")
        .env_remove("AFS_DB")
        .env_remove("AFS_CONFIG")
        .env_remove("AFS_NOW")
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no summary; stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(output.status.success(), "{summary}\n{stderr}");
    assert_eq!(
        summary["serve_exit"], 0,
        "afs serve exits cleanly: {stderr}"
    );

    let first = summary["held_out_accuracy_first"].as_f64().unwrap();
    let last = summary["held_out_accuracy_final"].as_f64().unwrap();
    assert!(first < 0.5, "the first model is weak: {summary}");
    assert!(
        last >= first + 0.2,
        "the final champion is measurably better on held-out questions: {summary}"
    );
    assert_ne!(summary["final_champion"], "topic-v1", "{summary}");
    let promotions = summary["promotions"].as_array().unwrap();
    assert!(!promotions.is_empty(), "{summary}");
    for p in promotions {
        let (before, after) = (
            p["held_out_accuracy_before"].as_f64().unwrap(),
            p["held_out_accuracy_after"].as_f64().unwrap(),
        );
        assert!(
            after > before,
            "a promotion of a model that was not better: {p}"
        );
    }
    // The trainer was afs's: the promoted model came from a completed retrain run, trained
    // on the file afs generated.
    let db = summary["database"].as_str().unwrap();
    let runs = Command::new(env!("CARGO_BIN_EXE_afs"))
        .args(["--db", db, "--json", "runs"])
        .output()
        .unwrap();
    assert!(runs.status.success());
    let runs = String::from_utf8_lossy(&runs.stdout);
    assert!(
        runs.contains("\"status\":\"completed\"") && runs.contains("train.jsonl"),
        "{runs}"
    );
    let _ = std::fs::remove_dir_all(summary["workdir"].as_str().unwrap());
}
