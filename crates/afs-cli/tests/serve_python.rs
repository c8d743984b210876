//! The standard-library Python client (`examples/afs_client.py`) against a running
//! `afs serve` with a token: as a script (route, log, feedback, batch, a refused record,
//! stats) and imported by a small program (errors carry the status and the field).
//!
//! Without python3 the test fails when `CI` is set and prints a notice otherwise.

mod serve_support;

use std::process::Command;

use serde_json::Value;
use serve_support::{workspace_root, Env};

const TOKEN: &str = "python-token";

fn python() -> Option<&'static str> {
    let found = Command::new("python3").arg("--version").output();
    found.is_ok_and(|o| o.status.success()).then_some("python3")
}

#[test]
fn the_python_client_logs_routes_and_records_feedback() {
    let Some(python) = python() else {
        if std::env::var_os("CI").is_some() {
            panic!("python3 is not installed, and CI is set: the Python client test must run");
        }
        eprintln!("notice: python3 not found; skipping the Python client test");
        return;
    };
    let env = Env::new();
    env.afs(
        None,
        &[
            "ab",
            "set-champion",
            "nayru-v1",
            "--path",
            "/models/nayru-v1",
        ],
    );
    let server = env.serve(&["--token", TOKEN]);
    let client = workspace_root().join("examples/afs_client.py");

    let output = Command::new(python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&client)
        .args(["--url", &server.url(), "--token", TOKEN, "--unit", "user-7"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["route"]["model"], "nayru-v1");
    assert_eq!(report["route"]["arm"], "champion");
    assert_eq!(report["feedback"]["value"], 1);
    assert_eq!(report["batch_ids"].as_array().unwrap().len(), 2);
    assert_eq!(report["refused"]["status"], 400);
    assert_eq!(report["refused"]["field"], "quality_score");
    assert_eq!(report["stats"]["total"], 3);
    assert_eq!(report["stats"]["positive_feedback"], 1);
    assert_eq!(report["stats"]["negative_feedback"], 1);

    // What the client wrote is in the store, with its feedback.
    let id = report["id"].as_str().unwrap();
    let records = env.afs(None, &["records", "--json", "--with-feedback"]);
    let logged: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mine = logged
        .iter()
        .find(|r| r["id"] == id)
        .expect("the logged record");
    assert_eq!(mine["user_feedback"], 1);
    assert_eq!(mine["feedback_text"], "helpful");
    assert_eq!(mine["unit"], "user-7");

    // Imported as a module: errors carry the status, and a missing token is refused.
    let program = format!(
        r#"
import json, sys
sys.path.insert(0, {dir:?})
from afs_client import AfsClient, AfsError
out = {{}}
try:
    AfsClient({url:?}, token={token:?}).feedback("01NOSUCHRECORD0000000000000", 1)
except AfsError as err:
    out["unknown_id"] = err.status
try:
    AfsClient({url:?}).log("q", "r", "nayru-v1")
except AfsError as err:
    out["no_token"] = [err.status, err.kind]
out["route"] = AfsClient({url:?}).route(unit="user-7")["model"]
print(json.dumps(out))
"#,
        dir = client.parent().unwrap().display().to_string(),
        url = server.url(),
        token = TOKEN,
    );
    // No __pycache__ left in examples/.
    let output = Command::new(python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-c")
        .arg(program)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["unknown_id"], 404);
    assert_eq!(out["no_token"], serde_json::json!([401, "unauthorized"]));
    assert_eq!(out["route"], "nayru-v1");
}
