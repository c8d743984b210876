//! The Python package `python/afs-client` against a real `afs serve` with a token: pip
//! installs it from the repository path, its smoke test (`python -m afs_client`) and its
//! live suite (`python/afs-client/tests`, stdlib `unittest`: errors, keep-alive, the asyncio
//! client, batched logging, a full queue, the flush at exit of a child process) run against
//! the server, and the records they logged are checked in the database with the CLI. A
//! second test runs `mypy --strict` on the package.
//!
//! The interpreter is `AFS_PYTHON` (CI's virtual environment with
//! `.ci/python-requirements.txt`), else `python3`. When it, pip, flit_core or mypy is
//! missing, the tests fail if `CI` is set and print a notice otherwise.

mod serve_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use serve_support::{workspace_root, Env};

const TOKEN: &str = "python-token";

/// The interpreter, or `None` (after the notice) when it is missing outside CI.
fn python() -> Option<String> {
    let python = std::env::var("AFS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let found = Command::new(&python).arg("--version").output();
    if found.is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    missing(&format!(
        "the Python interpreter {python:?} (AFS_PYTHON, else python3)"
    ));
    None
}

/// Whether `python` can import `module`.
fn has_module(python: &str, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fails under CI, prints a notice otherwise.
fn missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing, and CI is set: the Python package's tests must run");
    }
    eprintln!("notice: {what} is missing; skipping (it runs under CI)");
}

fn package_dir() -> PathBuf {
    workspace_root().join("python/afs-client")
}

/// Installs the package with pip into `site` (from the repository path, as a user would);
/// without flit_core in the environment, pip fetches the build backend itself.
fn pip_install(python: &str, site: &Path) -> bool {
    if !has_module(python, "pip") {
        missing("pip (in the Python environment)");
        return false;
    }
    let isolated = !has_module(python, "flit_core");
    if isolated && std::env::var_os("CI").is_some() {
        panic!(
            "flit_core is not installed in {python}, and CI is set (.ci/python-requirements.txt)"
        );
    }
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(["--no-deps", "--target"])
    .arg(site);
    if !isolated {
        cmd.arg("--no-build-isolation");
    }
    let output = cmd.arg(package_dir()).output().unwrap();
    assert!(output.status.success(), "pip install: {}", text(&output));
    true
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stats(env: &Env, model: &str) -> Value {
    serde_json::from_str(&env.afs(None, &["stats", "--json", "--model", model])).unwrap()
}

#[test]
fn the_python_package_passes_its_live_suite_against_afs_serve() {
    let Some(python) = python() else { return };
    let env = Env::new();
    let site = env.path("site");
    if !pip_install(&python, &site) {
        return;
    }
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
    // A keep-alive time of 1 s lets the suite meet a connection the server closed.
    let server = env.serve(&["--token", TOKEN, "--header-timeout", "1"]);
    let python_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&python);
        cmd.env("PYTHONPATH", &site)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("AFS_URL", server.url())
            .env("AFS_TOKEN", TOKEN)
            .current_dir(workspace_root())
            .args(args);
        cmd
    };

    // The smoke test: route, log, feedback, batch, a refused record, stats, on one connection.
    let output = python_cmd(&["-m", "afs_client", "--url", &server.url(), "--token", TOKEN])
        .args(["--unit", "user-7"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["route"]["model"], "nayru-v1");
    assert_eq!(report["feedback"]["value"], 1);
    assert_eq!(report["batch_ids"].as_array().unwrap().len(), 2);
    assert_eq!(report["refused"]["status"], 400);
    assert_eq!(report["refused"]["field"], "quality_score");
    assert_eq!(report["stats"]["total"], 3);
    assert_eq!(report["connections_opened"], 1);
    let records = env.afs(None, &["records", "--json", "--with-feedback"]);
    let id = report["id"].as_str().unwrap();
    let mine: Value = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["id"] == id)
        .expect("the logged record");
    assert_eq!(mine["user_feedback"], 1);
    assert_eq!(mine["unit"], "user-7");

    // The live suite; every test must run (a skipped one would hide a missing part).
    let tests = package_dir().join("tests");
    let output = python_cmd(&["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .arg("-t")
        .arg(&tests)
        .output()
        .unwrap();
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("Ran 13 tests"), "{log}");
    assert!(!log.contains("skipped"), "{log}");

    // What the suite logged is in the database: the batched logger's records (one refused),
    // and those of the child process that only flushed at exit.
    assert_eq!(stats(&env, "py-batch")["total"], 999);
    assert_eq!(stats(&env, "py-exit-flush")["total"], 300);
    assert_eq!(stats(&env, "py-keepalive")["total"], 10);
    // The conversations, whole; one was given its query and response, the others not.
    let conversations: Vec<Value> = env
        .afs(None, &["records", "--model", "py-conv"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(conversations.len(), 4);
    for r in &conversations {
        assert_eq!(
            (r["query"].as_str(), r["response"].as_str()),
            (Some("2+2?"), Some("4"))
        );
        assert_eq!(r["messages"].as_array().map(Vec::len), Some(5), "{r}");
        assert_eq!(r["messages"][0]["role"], "system");
    }
    assert_eq!(stats(&env, "py-async")["total"], 24);
    assert_eq!(stats(&env, "py-fork")["total"], 7);
    // The full queue's records went to a socket that never answered, not here.
    assert_eq!(stats(&env, "py-full")["total"], 0);
}

#[test]
fn the_python_package_type_checks() {
    let Some(python) = python() else { return };
    if !has_module(&python, "mypy") {
        missing("mypy (in the Python environment)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(&python)
        .args(["-m", "mypy", "--strict", "--cache-dir"])
        .arg(cache.path())
        .arg(package_dir().join("src/afs_client"))
        .current_dir(package_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Success"));
}
