//! End-to-end tests of the `afs` binary: real process, real SQLite file in a temp dir.

mod common;

use common::redact_ids;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use assert_cmd::Command;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The time every command sees unless a test says otherwise (AFS_NOW).
const NOW: &str = "2025-06-01T12:00:00Z";

/// The result of one run of `afs`.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as one JSON value.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// stdout as JSON lines.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }
}

/// A temp dir with a database path and helpers to run `afs` against it.
struct Env {
    dir: TempDir,
    db: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("afs.db");
        Env { dir, db }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `afs --db <db> ARGS` with a clean environment and the clock pinned to `now`.
    fn command_at(&self, now: &str, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("afs").unwrap();
        cmd.env_remove("AFS_DB")
            .env_remove("AFS_CONFIG")
            .env_remove("AFS_JSON_ENVELOPE")
            .env_remove("RUST_LOG")
            .env("AFS_NOW", now);
        cmd.arg("--db").arg(&self.db).args(args);
        cmd
    }

    fn run_at(&self, now: &str, args: &[&str]) -> Run {
        let output = self.command_at(now, args).output().unwrap();
        Run {
            code: output.status.code().expect("afs was killed by a signal"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_at(NOW, args)
    }

    /// Runs `args`, checks the exit code and that stdout contains `stdout_contains`.
    fn check(&self, args: &[&str], expected_exit: i32, stdout_contains: &str) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, expected_exit, "afs {args:?}: {run:#?}");
        assert!(
            run.stdout.contains(stdout_contains),
            "afs {args:?}: stdout lacks {stdout_contains:?}: {run:#?}"
        );
        run
    }

    /// Runs `args`, checks the exit code and that stderr contains `stderr_contains`.
    fn check_err(&self, args: &[&str], expected_exit: i32, stderr_contains: &str) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, expected_exit, "afs {args:?}: {run:#?}");
        assert!(
            run.stderr.contains(stderr_contains),
            "afs {args:?}: stderr lacks {stderr_contains:?}: {run:#?}"
        );
        run
    }

    /// Logs a record with `extra` flags and returns its id.
    fn log(&self, query: &str, model: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "log",
            "--json",
            "--query",
            query,
            "--response",
            "a response",
            "--model",
            model,
        ];
        args.extend_from_slice(extra);
        let run = self.check(&args, 0, "\"id\"");
        run.json()["id"].as_str().unwrap().to_string()
    }

    /// Imports JSON lines (given as values) and asserts that all were imported.
    fn import(&self, lines: &[Value]) {
        let file = self.path("fixture.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&file, text).unwrap();
        let run = self.check(&["import", "--json", file.to_str().unwrap()], 0, "");
        assert_eq!(run.json()["imported"], lines.len(), "{run:#?}");
        std::fs::remove_file(file).unwrap();
    }

    fn records(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["records"];
        all.extend_from_slice(args);
        let run = self.check(&all, 0, "");
        run.json_lines()
    }

    /// The queries of the records `args` selects, in output order.
    fn queries(&self, args: &[&str]) -> Vec<String> {
        self.records(args)
            .iter()
            .map(|r| r["query"].as_str().unwrap().to_string())
            .collect()
    }
}

fn line(query: &str, model: &str, extra: Value) -> Value {
    let mut value =
        json!({ "query": query, "response": format!("answer to {query}"), "model": model });
    value
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    value
}

#[test]
fn log_records_stats_round_trip() {
    let env = Env::new();
    let id = env.log(
        "What is 65816?",
        "nayru-v1",
        &[
            "--expert",
            "cpu",
            "--latency-ms",
            "120.5",
            "--quality",
            "0.85",
            "--unit",
            "user-1",
            "--tokens",
            "42",
        ],
    );
    assert_eq!(id.len(), 26, "new ids are ULIDs: {id}");
    // Without --json, `log` prints the bare id.
    let plain = env.check(
        &[
            "log",
            "--query",
            "q2",
            "--response",
            "r2",
            "--model",
            "nayru-v2",
        ],
        0,
        "",
    );
    assert_eq!(plain.stdout.trim().len(), 26);

    let records = env.records(&[]);
    assert_eq!(records.len(), 2);
    let first = &records[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_keys = vec![
        "id",
        "timestamp",
        "query",
        "response",
        "model",
        "expert",
        "latency_ms",
        "token_count",
        "quality_score",
        "user_feedback",
        "feedback_text",
        "feedback_at",
        "unit",
        "context_hash",
        "dedupe_hash",
        "created_at",
    ];
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    expected_keys.sort_unstable();
    assert_eq!(keys_sorted, expected_keys);
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["timestamp"], NOW);
    assert_eq!(first["query"], "What is 65816?");
    assert_eq!(first["response"], "a response");
    assert_eq!(first["model"], "nayru-v1");
    assert_eq!(first["expert"], "cpu");
    assert_eq!(first["latency_ms"], 120.5);
    assert_eq!(first["token_count"], 42);
    assert_eq!(first["quality_score"], 0.85);
    assert_eq!(first["user_feedback"], Value::Null);
    assert_eq!(first["unit"], "user-1");
    assert_eq!(first["dedupe_hash"].as_str().unwrap().len(), 64);
    assert_eq!(records[1]["expert"], Value::Null);
    assert_eq!(records[1]["quality_score"], Value::Null);

    let stats = env.check(&["stats", "--json"], 0, "").json();
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["with_feedback"], 0);
    assert_eq!(stats["avg_quality_score"], 0.85);
    assert_eq!(stats["quality_samples"], 1);
    assert_eq!(stats["quality_stddev"], Value::Null);
    assert_eq!(stats["avg_latency_ms"], 120.5);
    assert_eq!(stats["total_tokens"], 42);
    assert_eq!(stats["feedback_rate"], 0.0);
    assert_eq!(stats["positive_rate"], Value::Null);

    let human = env.check(&["stats"], 0, "total").stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("total") && l.trim_end().ends_with(" 2")),
        "{human}"
    );
    assert!(human.contains("avg_quality_score"), "{human}");
}

#[test]
fn feedback_up_down_value_and_replacement() {
    let env = Env::new();
    let id = env.log("q", "m", &[]);
    let feedback_of = || env.records(&[])[0].clone();

    env.check(&["feedback", &id, "--up"], 0, "recorded feedback +1");
    assert_eq!(feedback_of()["user_feedback"], 1);
    assert_eq!(feedback_of()["feedback_at"], NOW);

    env.check(&["feedback", &id, "--down"], 0, "-1");
    assert_eq!(feedback_of()["user_feedback"], -1);

    let run = env.check(
        &["feedback", &id, "--value", "0", "--text", "meh", "--json"],
        0,
        "",
    );
    assert_eq!(
        run.json(),
        json!({ "id": id, "user_feedback": 0, "feedback_text": "meh" })
    );
    assert_eq!(feedback_of()["user_feedback"], 0);
    assert_eq!(feedback_of()["feedback_text"], "meh");

    env.check(&["feedback", &id, "--value", "-1"], 0, "");
    env.check(&["feedback", &id, "--value=1"], 0, "");
    assert_eq!(feedback_of()["user_feedback"], 1);

    // Replacing feedback moves the aggregates: one record, one (positive) feedback.
    let stats = env.check(&["stats", "--json"], 0, "").json();
    assert_eq!(stats["with_feedback"], 1);
    assert_eq!(stats["positive_feedback"], 1);
    assert_eq!(stats["negative_feedback"], 0);
    assert_eq!(stats["neutral_feedback"], 0);
    assert_eq!(stats["feedback_rate"], 1.0);
    assert_eq!(stats["positive_rate"], 1.0);
}

#[test]
fn feedback_errors() {
    let env = Env::new();
    let id = env.log("q", "m", &[]);
    env.check_err(&["feedback", &id, "--value", "2"], 3, "user_feedback");
    env.check_err(&["feedback", &id, "--value", "-2"], 3, "user_feedback");
    env.check_err(
        &["feedback", "01JXXXXXXXXXXXXXXXXXXXXXXX", "--up"],
        4,
        "01JXXXXXXXXXXXXXXXXXXXXXXX",
    );
    env.check_err(&["feedback", &id], 2, "--value");
    env.check_err(
        &["feedback", &id, "--up", "--down"],
        2,
        "cannot be used with",
    );
    env.check_err(
        &["feedback", &id, "--up", "--value", "1"],
        2,
        "cannot be used with",
    );
    env.check_err(&["feedback", &id, "--value", "x"], 2, "invalid value");
    // Nothing above changed the record.
    assert_eq!(env.records(&[])[0]["user_feedback"], Value::Null);

    // With --json, the error on stderr is JSON too.
    let run = env.check_err(&["--json", "feedback", "nope", "--up"], 4, "");
    let err: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(err["kind"], "not_found");
    assert!(err["error"].as_str().unwrap().contains("nope"));
}

#[test]
fn bad_log_input_is_refused_with_the_field_named() {
    let env = Env::new();
    let base = ["log", "--query", "q", "--response", "r", "--model", "m"];
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--quality", "1.5"], 3, "quality_score"),
        (&["--quality", "-0.1"], 3, "quality_score"),
        (&["--quality", "NaN"], 3, "quality_score"),
        (&["--quality", "inf"], 3, "quality_score"),
        (&["--latency-ms", "-1"], 3, "latency_ms"),
        (&["--tokens", "-5"], 3, "token_count"),
        (&["--unit", ""], 3, "unit_id"),
        (&["--quality", "high"], 2, "--quality"),
        (&["--bogus"], 2, "--bogus"),
    ];
    for (extra, code, fragment) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let run = env.check_err(&args, *code, fragment);
        assert!(run.stdout.is_empty(), "{run:#?}");
        if *code == 3 {
            assert!(run.stderr.starts_with("error: invalid "), "{run:#?}");
        }
    }
    env.check_err(
        &["log", "--query", "", "--response", "r", "--model", "m"],
        3,
        "invalid query",
    );
    env.check_err(
        &["log", "--query", "q", "--response", "  ", "--model", "m"],
        3,
        "invalid response",
    );
    env.check_err(
        &["log", "--query", "q", "--response", "r", "--model", ""],
        3,
        "invalid model",
    );
    env.check_err(&["log", "--query", "q", "--response", "r"], 2, "--model");
    // Refused input does not even create the database.
    assert!(!env.db.exists());
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.check_err(&[], 2, "Usage");
    env.check_err(&["frobnicate"], 2, "unrecognized subcommand");
    env.check_err(&["records", "--since", "yesterday"], 2, "yesterday");
    env.check_err(&["records", "--limit=-1"], 2, "--limit");
    env.check_err(&["prune", "--older-than", "0"], 2, "positive");
    env.check_err(&["prune", "--older-than", "-3"], 2, "");
    env.check_err(&["prune"], 2, "--older-than");
    env.check_err(&["forget"], 2, "--unit");
    env.check_err(
        &["records", "--with-feedback", "--without-feedback"],
        2,
        "cannot be used with",
    );
    env.check_err(&["import"], 2, "FILE");
}

#[test]
fn commands_other_than_log_and_import_need_an_existing_database() {
    let env = Env::new();
    for args in [
        &["records"][..],
        &["stats"],
        &["dedupe"],
        &["forget", "--unit", "u"],
        &["feedback", "x", "--up"],
    ] {
        env.check_err(args, 1, "does not exist");
    }
    assert!(!env.db.exists());
}

#[test]
fn database_path_comes_from_afs_db_and_clock_from_afs_now() {
    let env = Env::new();
    let other = env.path("other.db");
    let mut cmd = Command::cargo_bin("afs").unwrap();
    cmd.env("AFS_DB", &other)
        .env("AFS_NOW", "2024-02-03T04:05:06.5+01:00")
        .env_remove("RUST_LOG");
    cmd.args(["log", "--query", "q", "--response", "r", "--model", "m"])
        .assert()
        .success();
    assert!(other.exists());
    assert!(!env.db.exists());

    let out = Command::cargo_bin("afs")
        .unwrap()
        .env("AFS_DB", &other)
        .arg("records")
        .output()
        .unwrap();
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["timestamp"], "2024-02-03T03:05:06.500Z");

    env.check_err(&["stats"], 1, "does not exist");
    let run = env.run_at(
        "not a time",
        &["log", "--query", "q", "--response", "r", "--model", "m"],
    );
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("AFS_NOW"), "{run:#?}");
    // A clock before 1970 (or after 2199) would date records the store cannot keep: refused
    // at startup, and no database is created.
    for now in ["1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z"] {
        let fresh = Env::new();
        let run = fresh.run_at(
            now,
            &["log", "--query", "q", "--response", "r", "--model", "m"],
        );
        assert_eq!(run.code, 3, "{now}: {run:#?}");
        assert!(run.stderr.contains("invalid AFS_NOW"), "{now}: {run:#?}");
        assert!(!fresh.db.exists(), "{now}: the database was created");
    }
}

#[test]
fn verbose_logs_go_to_stderr_and_stdout_stays_clean() {
    let env = Env::new();
    let run = env.check(
        &[
            "-vv",
            "log",
            "--json",
            "--query",
            "q",
            "--response",
            "r",
            "--model",
            "m",
        ],
        0,
        "",
    );
    assert!(run.json()["id"].is_string());
    assert!(
        run.stderr.contains("DEBUG") || run.stderr.contains("INFO"),
        "{run:#?}"
    );
    let quiet = env.check(
        &["log", "--query", "q", "--response", "r", "--model", "m"],
        0,
        "",
    );
    assert!(quiet.stderr.is_empty(), "{quiet:#?}");
}

const IMPORT_FILE: &str = r#"{"query": "good 1", "response": "r", "model": "m1", "quality_score": 0.9, "feedback": 1, "feedback_text": "nice", "unit": "u1", "timestamp": "2025-01-02T03:04:05.123456", "token_count": 10, "latency_ms": 50, "expert": "e", "context_hash": "c"}
{"query": "broken", "response": "r", "model": "m1"
{"query": "good 2", "response": "r", "model": "m2", "timestamp": "2025-01-03T00:00:00+02:00"}

{"query": "no model", "response": "r"}
{"query": "", "response": "r", "model": "m1"}
{"query": "typo", "response": "r", "model": "m1", "qualty_score": 0.5}
{"query": "q", "response": "r", "model": "m1", "quality_score": 1.5}
{"query": "q", "response": "r", "model": "m1", "feedback": 2}
{"query": "q", "response": "r", "model": "m1", "quality_score": "high"}
{"query": "q", "response": "r", "model": "m1", "timestamp": "last tuesday"}
   
[1, 2, 3]
{"query": "good 3", "response": "r", "model": "m1", "quality_score": null, "feedback": -1}
"#;

#[test]
fn import_keeps_good_lines_and_reports_bad_ones() {
    let env = Env::new();
    let file = env.path("usage.jsonl");
    std::fs::write(&file, IMPORT_FILE).unwrap();
    let run = env.run(&[
        "import",
        "--json",
        "--batch-size",
        "2",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("9 of 12 lines rejected"), "{run:#?}");
    let report = run.json();
    assert_eq!(report["imported"], 3);
    assert_eq!(report["rejected"], 9);
    assert!(report.get("errors_truncated").is_none());
    let errors: Vec<(u64, String)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: &[(u64, &str)] = &[
        (2, "malformed JSON"),
        (5, "invalid model: missing required key"),
        (6, "invalid query"),
        (7, "invalid qualty_score: unknown key"),
        (8, "invalid quality_score"),
        (9, "invalid feedback"),
        (10, "invalid quality_score: expected a number"),
        (11, "invalid timestamp"),
        (13, "expected a JSON object"),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for ((line, error), (expected_line, fragment)) in errors.iter().zip(expected) {
        assert_eq!(line, expected_line, "{errors:#?}");
        assert!(
            error.contains(fragment),
            "line {line}: {error:?} lacks {fragment:?}"
        );
    }

    let records = env.records(&[]);
    let queries: Vec<&str> = records
        .iter()
        .map(|r| r["query"].as_str().unwrap())
        .collect();
    assert_eq!(queries, ["good 1", "good 2", "good 3"]);
    let first = &records[0];
    assert_eq!(
        first["timestamp"], "2025-01-02T03:04:05.123456Z",
        "naive ISO times are UTC"
    );
    assert_eq!(first["user_feedback"], 1);
    assert_eq!(first["feedback_text"], "nice");
    assert_eq!(first["unit"], "u1");
    assert_eq!(first["token_count"], 10);
    assert_eq!(first["latency_ms"], 50.0);
    assert_eq!(first["expert"], "e");
    assert_eq!(first["context_hash"], "c");
    assert_eq!(records[1]["timestamp"], "2025-01-02T22:00:00Z");
    assert_eq!(
        records[2]["timestamp"], NOW,
        "no timestamp means the clock's now"
    );
    assert_eq!(records[2]["user_feedback"], -1);

    // The readable report lists the same lines.
    let env = Env::new();
    let run = env.run(&["import", file.to_str().unwrap()]);
    assert_eq!(run.code, 3);
    assert!(
        run.stdout
            .starts_with("imported 3 records; rejected 9 lines\n"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("\n  line 2: malformed JSON"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("\n  line 13: expected a JSON object"),
        "{run:#?}"
    );
}

#[test]
fn import_from_stdin() {
    let env = Env::new();
    let input: String = (0..25)
        .map(|i| {
            format!(
                "{}\n",
                line(&format!("q{i}"), "m", json!({"quality_score": 0.5}))
            )
        })
        .collect();
    let output = env
        .command_at(NOW, &["import", "-", "--json", "--batch-size", "10"])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report,
        json!({ "imported": 25, "rejected": 0, "errors": [] })
    );
    assert_eq!(env.records(&[]).len(), 25);
    // Windows line endings and a BOM are fine; a file without a final newline too.
    let crlf = format!(
        "\u{feff}{}\r\n{}",
        line("a", "m", json!({})),
        line("b", "m", json!({}))
    );
    let output = env
        .command_at(NOW, &["import", "-"])
        .write_stdin(crlf)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "imported 2 records; rejected 0 lines\n"
    );
}

#[test]
fn import_lists_at_most_1000_errors() {
    let env = Env::new();
    let mut input: String = (0..1005).map(|_| "{}\n".to_string()).collect();
    input.push_str(&format!("{}\n", line("ok", "m", json!({}))));
    let output = env
        .command_at(NOW, &["import", "-", "--json"])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["imported"], 1);
    assert_eq!(report["rejected"], 1005);
    assert_eq!(report["errors"].as_array().unwrap().len(), 1000);
    assert_eq!(report["errors_truncated"], true);
    assert_eq!(report["errors"][999]["line"], 1000);
}

#[test]
fn import_of_a_missing_file_fails_without_creating_the_database() {
    let env = Env::new();
    env.check_err(
        &["import", "/nonexistent/usage.jsonl"],
        1,
        "/nonexistent/usage.jsonl",
    );
    assert!(!env.db.exists());
}

/// Six records over three days, two models, with and without quality and feedback.
fn filter_fixture() -> Env {
    let env = Env::new();
    env.import(&[
        line("a", "m1", json!({"timestamp": "2025-05-29T12:00:00Z", "quality_score": 0.9, "feedback": 1, "unit": "u1"})),
        line("b", "m1", json!({"timestamp": "2025-05-30T12:00:00Z", "quality_score": 0.5, "feedback": -1, "expert": "x"})),
        line("c", "m2", json!({"timestamp": "2025-05-31T06:00:00Z", "quality_score": 0.7, "unit": "u1"})),
        line("d", "m2", json!({"timestamp": "2025-05-31T18:00:00Z", "feedback": 0})),
        line("e", "m1", json!({"timestamp": "2025-06-01T11:00:00Z", "quality_score": 0.95, "expert": "x"})),
        line("f", "m2", json!({"timestamp": "2025-06-01T11:30:00Z", "quality_score": 0.2, "feedback": 1})),
    ]);
    env
}

#[test]
fn records_filters() {
    let env = filter_fixture();
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["a", "b", "c", "d", "e", "f"]),
        (&["--model", "m1"], &["a", "b", "e"]),
        (&["--model", "nope"], &[]),
        (&["--expert", "x"], &["b", "e"]),
        (&["--unit", "u1"], &["a", "c"]),
        (&["--min-quality", "0.7"], &["a", "c", "e"]),
        (&["--with-feedback"], &["a", "b", "d", "f"]),
        (&["--without-feedback"], &["c", "e"]),
        (&["--min-feedback", "0"], &["a", "d", "f"]),
        (&["--min-feedback", "1"], &["a", "f"]),
        (&["--min-feedback", "-1"], &["a", "b", "d", "f"]),
        (&["--limit", "2"], &["a", "b"]),
        (&["--limit", "0"], &[]),
        (&["--newest-first"], &["f", "e", "d", "c", "b", "a"]),
        (&["--newest-first", "--limit", "2"], &["f", "e"]),
        // AFS_NOW is 2025-06-01T12:00:00Z.
        (&["--since", "24h"], &["d", "e", "f"]),
        (&["--since", "45m"], &["f"]),
        (&["--since", "2d", "--until", "1d"], &["b", "c"]),
        (&["--since", "2025-05-31T06:00:00Z"], &["c", "d", "e", "f"]),
        (&["--until", "2025-05-31T06:00:00Z"], &["a", "b"]),
        (
            &["--model", "m2", "--min-quality", "0.5", "--since", "3d"],
            &["c"],
        ),
        (
            &["--with-feedback", "--model", "m1", "--newest-first"],
            &["b", "a"],
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(env.queries(args), *expected, "afs records {args:?}");
    }
    env.check_err(&["records", "--min-quality", "1.5"], 3, "quality_score");
    env.check_err(&["records", "--min-quality", "NaN"], 3, "quality_score");
    env.check_err(&["records", "--min-feedback", "2"], 3, "user_feedback");
}

#[test]
fn records_stop_quietly_when_the_reader_goes_away() {
    let env = Env::new();
    let big = "x".repeat(2000);
    let input: String = (0..2000)
        .map(|i| format!("{}\n", line(&format!("q{i} {big}"), "m", json!({}))))
        .collect();
    let output = env
        .command_at(NOW, &["import", "-"])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));

    // Like `afs records | head -1`: about 4 MB of output, the reader takes one line and leaves.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("afs"))
        .args(["--db", env.db.to_str().unwrap(), "records"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("{\"id\":"), "{first}");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn stats_by_model_and_windows() {
    let env = filter_fixture();
    let by_model = env.check(&["stats", "--by-model", "--json"], 0, "").json();
    let models: Vec<&String> = by_model.as_object().unwrap().keys().collect();
    assert_eq!(models, ["m1", "m2"]);
    let m1 = &by_model["m1"];
    let fields: Vec<&str> = m1.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "avg_latency_ms",
            "avg_quality_score",
            "feedback_rate",
            "negative_feedback",
            "negative_rate",
            "neutral_feedback",
            "positive_feedback",
            "positive_rate",
            "quality_samples",
            "quality_stddev",
            "total",
            "total_tokens",
            "with_feedback",
        ]
    );
    assert_eq!(m1["total"], 3);
    assert_eq!(m1["with_feedback"], 2);
    assert_eq!(m1["positive_feedback"], 1);
    assert_eq!(m1["negative_feedback"], 1);
    assert_eq!(m1["neutral_feedback"], 0);
    assert_eq!(m1["quality_samples"], 3);
    close(&m1["avg_quality_score"], (0.9 + 0.5 + 0.95) / 3.0);
    close(&m1["quality_stddev"], 0.246_644_143_115_812_37);
    close(&m1["feedback_rate"], 2.0 / 3.0);
    close(&m1["positive_rate"], 0.5);
    close(&m1["negative_rate"], 0.5);
    assert_eq!(m1["avg_latency_ms"], Value::Null);
    assert_eq!(m1["total_tokens"], 0);
    let m2 = &by_model["m2"];
    assert_eq!(m2["total"], 3);
    assert_eq!(m2["neutral_feedback"], 1);
    assert_eq!(m2["quality_samples"], 2);

    let only_m2 = env
        .check(&["stats", "--by-model", "--json", "--model", "m2"], 0, "")
        .json();
    assert_eq!(only_m2.as_object().unwrap().len(), 1);
    assert_eq!(only_m2["m2"], *m2);

    let recent = env
        .check(&["stats", "--json", "--since", "24h"], 0, "")
        .json();
    assert_eq!(recent["total"], 3);
    let window = env
        .check(
            &[
                "stats",
                "--json",
                "--since",
                "2025-05-30T00:00:00Z",
                "--until",
                "2025-05-31T12:00:00Z",
            ],
            0,
            "",
        )
        .json();
    assert_eq!(window["total"], 2);
    let m1_only = env
        .check(&["stats", "--json", "--model", "m1"], 0, "")
        .json();
    assert_eq!(m1_only, *m1);

    let table = env.check(&["stats", "--by-model"], 0, "").stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("model") && lines[0].contains("avg_quality"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("m1 ") && lines[2].starts_with("m2 "),
        "{table}"
    );
    assert_eq!(
        lines[1].len(),
        lines[0].len(),
        "columns are aligned:\n{table}"
    );

    let empty = env
        .check(&["stats", "--json", "--model", "nope"], 0, "")
        .json();
    assert_eq!(empty["total"], 0);
    assert_eq!(empty["avg_quality_score"], Value::Null);
    assert_eq!(empty["feedback_rate"], 0.0);
    env.check(&["stats", "--by-model", "--model", "nope"], 0, "no records");
}

fn close(value: &Value, expected: f64) {
    let got = value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"));
    assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
}

#[test]
fn dedupe_dry_run_then_real() {
    let env = Env::new();
    env.import(&[
        line("same", "m", json!({"timestamp": "2025-05-01T00:00:00Z"})),
        line("same", "m", json!({"timestamp": "2025-05-02T00:00:00Z"})),
        line("same", "m", json!({"timestamp": "2025-05-03T00:00:00Z"})),
        line("twice", "m", json!({"timestamp": "2025-05-01T00:00:00Z"})),
        line("twice", "m", json!({"timestamp": "2025-05-02T00:00:00Z"})),
        line("once", "m", json!({})),
    ]);
    let dry = env.check(&["dedupe", "--dry-run", "--json"], 0, "").json();
    assert_eq!(
        dry,
        json!({ "duplicate_groups": 2, "removed": 3, "dry_run": true })
    );
    assert_eq!(env.records(&[]).len(), 6, "a dry run removes nothing");
    env.check(
        &["dedupe", "--dry-run"],
        0,
        "found 2 duplicate groups; would remove 3 records (dry run)",
    );

    env.check(
        &["dedupe"],
        0,
        "found 2 duplicate groups; removed 3 records",
    );
    let records = env.records(&[]);
    assert_eq!(records.len(), 3);
    // The newest of each group is kept.
    let same = records.iter().find(|r| r["query"] == "same").unwrap();
    assert_eq!(same["timestamp"], "2025-05-03T00:00:00Z");
    let again = env.check(&["dedupe", "--json"], 0, "").json();
    assert_eq!(
        again,
        json!({ "duplicate_groups": 0, "removed": 0, "dry_run": false })
    );
}

#[test]
fn prune_with_archive() {
    let env = Env::new();
    env.import(&[
        line("old 1", "m", json!({"timestamp": "2025-01-01T00:00:00Z"})),
        line(
            "old 2",
            "m",
            json!({"timestamp": "2025-03-01T00:00:00Z", "feedback": 1}),
        ),
        line("recent", "m", json!({"timestamp": "2025-05-20T00:00:00Z"})),
        line("now", "m", json!({})),
    ]);
    let archive = env.path("archive.jsonl");
    let report = env
        .check(
            &[
                "prune",
                "--older-than",
                "30",
                "--archive",
                archive.to_str().unwrap(),
                "--json",
            ],
            0,
            "",
        )
        .json();
    assert_eq!(report["removed"], 2);
    assert_eq!(report["archived"], 2);
    assert_eq!(report["cutoff"], "2025-05-02T12:00:00Z");
    let archived = std::fs::read_to_string(&archive).unwrap();
    assert_eq!(archived.lines().count(), 2, "{archived}");
    for l in archived.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v.to_string().contains("old "), "{l}");
    }
    assert_eq!(env.queries(&[]), ["recent", "now"]);

    // The archive must not exist already; nothing is deleted then.
    env.check_err(
        &[
            "prune",
            "--older-than",
            "1",
            "--archive",
            archive.to_str().unwrap(),
        ],
        3,
        "already exists",
    );
    assert_eq!(env.queries(&[]), ["recent", "now"]);

    // Fractional days, no archive.
    env.check(
        &["prune", "--older-than", "0.5"],
        0,
        "removed 1 record older than 2025-06-01T00:00:00Z",
    );
    assert_eq!(env.queries(&[]), ["now"]);
    let stats = env.check(&["stats", "--json"], 0, "").json();
    assert_eq!(stats["total"], 1);
    assert_eq!(stats["with_feedback"], 0);
}

#[test]
fn records_output_and_prune_archives_can_be_imported_again() {
    let env = filter_fixture();
    let exported = env.check(&["records"], 0, "").stdout;
    let file = env.path("export.jsonl");
    std::fs::write(&file, &exported).unwrap();

    // Into a new database, at a later time: everything but id and created_at survives.
    let copy = Env::new();
    let run = copy.run_at(
        "2025-07-01T00:00:00Z",
        &["import", "--json", file.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.json()["imported"], 6);
    let without_ids = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .map(|mut r| {
                let object = r.as_object_mut().unwrap();
                object.remove("id");
                object.remove("created_at");
                r
            })
            .collect()
    };
    assert_eq!(
        without_ids(copy.records(&[])),
        without_ids(env.records(&[]))
    );

    // A prune archive goes back in the same way.
    let archive = env.path("archive.jsonl");
    env.check(
        &[
            "prune",
            "--older-than",
            "1.5",
            "--archive",
            archive.to_str().unwrap(),
        ],
        0,
        "removed 2",
    );
    assert_eq!(env.queries(&[]), ["c", "d", "e", "f"]);
    env.check(
        &["import", archive.to_str().unwrap()],
        0,
        "imported 2 records",
    );
    assert_eq!(env.queries(&[]), ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(
        without_ids(env.records(&[])),
        without_ids(copy.records(&[]))
    );
}

#[test]
fn forget_a_unit() {
    let env = Env::new();
    env.log("a", "m", &["--unit", "alice"]);
    env.log("b", "m", &["--unit", "bob"]);
    env.log("c", "m", &["--unit", "alice"]);
    env.log("d", "m", &[]);
    let report = env
        .check(&["forget", "--unit", "alice", "--json"], 0, "")
        .json();
    assert_eq!(report, json!({ "unit": "alice", "removed": 2 }));
    assert_eq!(env.queries(&[]), ["b", "d"]);
    env.check(
        &["forget", "--unit", "alice"],
        0,
        "removed 0 records of unit alice",
    );
    env.check_err(&["forget", "--unit", ""], 3, "unit");
    assert_eq!(env.check(&["stats", "--json"], 0, "").json()["total"], 2);
}

#[test]
fn import_round_trips_through_a_file_written_by_hand() {
    // A larger import crossing several batch boundaries, checked against stats.
    let env = Env::new();
    let file = env.path("many.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..1234 {
        let quality = (i % 10) as f64 / 10.0;
        let feedback = [-1, 0, 1][i % 3];
        writeln!(
            f,
            "{}",
            line(
                &format!("q{i}"),
                ["a", "b"][i % 2],
                json!({"quality_score": quality, "feedback": feedback})
            )
        )
        .unwrap();
    }
    drop(f);
    let report = env
        .check(
            &[
                "import",
                "--json",
                "--batch-size",
                "100",
                file.to_str().unwrap(),
            ],
            0,
            "",
        )
        .json();
    assert_eq!(report["imported"], 1234);
    let stats = env.check(&["stats", "--json"], 0, "").json();
    assert_eq!(stats["total"], 1234);
    assert_eq!(stats["with_feedback"], 1234);
    assert_eq!(stats["positive_feedback"], 411);
    assert_eq!(stats["negative_feedback"], 412);
    assert_eq!(stats["neutral_feedback"], 411);
    assert_eq!(env.records(&["--limit", "5"]).len(), 5);
    assert!(Path::new(&env.db).exists());
}

#[test]
fn human_and_json_outputs() {
    let env = filter_fixture();
    let snapshot = |args: &[&str]| {
        let run = env.run(args);
        format!(
            "$ afs {}\n[exit {}]\n{}",
            args.join(" "),
            run.code,
            redact_ids(&run.stdout)
        )
    };
    let file = env.path("mixed.jsonl");
    std::fs::write(&file, IMPORT_FILE).unwrap();
    let outputs = [
        snapshot(&["stats"]),
        snapshot(&["stats", "--by-model"]),
        snapshot(&["records", "--newest-first", "--limit", "2"]),
        snapshot(&["dedupe", "--dry-run"]),
        snapshot(&["import", file.to_str().unwrap()])
            .replace(file.to_str().unwrap(), "mixed.jsonl"),
    ];
    insta::assert_snapshot!("outputs", outputs.join("\n"));
}

/// `AFS_JSON_ENVELOPE=1` wraps every JSON document in `{"schema_version", "data"}`: a
/// document keyed by model names, each line of JSON lines, and an error on stderr. Without
/// it the same documents are printed as they are.
#[test]
fn the_json_envelope_carries_the_schema_version() {
    let env = Env::new();
    let id = env.log("q", "nayru-v1", &[]);
    let wrapped = |args: &[&str]| {
        let output = env
            .command_at(NOW, args)
            .env("AFS_JSON_ENVELOPE", "1")
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    };

    let plain = env.check(&["stats", "--by-model", "--json"], 0, "").json();
    assert_eq!(plain["nayru-v1"]["total"], 1);
    let run = wrapped(&["stats", "--by-model", "--json"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.json(), json!({"schema_version": 1, "data": plain}));

    let lines = wrapped(&["records", "--json"]).json_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["schema_version"], 1);
    assert_eq!(lines[0]["data"]["id"], id.as_str());

    let run = wrapped(&["--json", "feedback", "nope", "--up"]);
    assert_eq!(run.code, 4, "{run:#?}");
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["schema_version"], 1, "{run:#?}");
    assert_eq!(error["data"]["kind"], "not_found", "{run:#?}");
}

/// A conversation as JSON turns: `(role, content)` pairs.
fn turns(spec: &[(&str, &str)]) -> Value {
    Value::Array(
        spec.iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect(),
    )
}

#[test]
fn conversations_are_logged_imported_shown_and_deduped_whole() {
    let env = Env::new();
    let chat = turns(&[
        ("system", "Be brief."),
        ("user", "What is 65816?"),
        ("assistant", "A CPU."),
        ("user", "Which console?"),
        ("assistant", "call lookup"),
        ("tool", "{\"console\": \"SNES\"}"),
        ("assistant", "The SNES."),
    ]);
    // From the flag, and from a file; query and response are filled in.
    let flag = chat.to_string();
    let logged = env.check(
        &["log", "--json", "--model", "m", "--messages", &flag],
        0,
        "\"id\"",
    );
    let file = env.path("chat.json");
    std::fs::write(&file, &flag).unwrap();
    let at_file = format!("@{}", file.display());
    env.check(&["log", "--model", "m", "--messages", &at_file], 0, "");
    // The same last exchange after another opening, imported without query and response.
    let other = {
        let mut other = chat.clone();
        other[1]["content"] = json!("What is a 6502?");
        other
    };
    env.import(&[json!({"model": "m", "messages": other, "quality_score": 0.9})]);
    // A single-turn record prints as before: no messages key.
    env.log("plain", "m", &[]);

    let records = env.check(&["records"], 0, "").json_lines();
    assert_eq!(records.len(), 4);
    let id = logged.json()["id"].as_str().unwrap().to_string();
    assert_eq!(records[0]["id"], id.as_str());
    for r in &records[..3] {
        assert_eq!(r["query"], "Which console?");
        assert_eq!(r["response"], "The SNES.");
    }
    assert_eq!(records[0]["messages"], chat);
    assert_eq!(records[2]["messages"], other);
    assert!(records[3].get("messages").is_none(), "{}", records[3]);

    // The output of `afs records` imports again as it is.
    let again = Env::new();
    again.import(&records);
    assert_eq!(
        again.check(&["records"], 0, "").json_lines()[2]["messages"],
        other
    );

    // Only the two copies of one conversation are duplicates, not the other opening.
    let dedupe = env.check(&["dedupe", "--json"], 0, "").json();
    assert_eq!(dedupe["removed"], 1, "{dedupe}");

    // Bad conversations are refused naming the turn, from each way in.
    env.check_err(
        &[
            "log",
            "--model",
            "m",
            "--messages",
            r#"[{"role":"bot","content":"x"}]"#,
        ],
        3,
        "--messages: invalid messages[0].role: expected one of system, user, assistant, tool",
    );
    env.check_err(
        &["log", "--model", "m", "--messages", &turns(&[("user", "q"), ("system", "s"), ("assistant", "a")]).to_string()],
        3,
        "invalid messages: messages[1].role is system, but only the first turn may be a system turn",
    );
    env.check_err(
        &[
            "log",
            "--model",
            "m",
            "--query",
            "What is 65816?",
            "--messages",
            &flag,
        ],
        3,
        "invalid query: must be the last user turn of messages",
    );
    let bad = env.path("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{}\n",
            json!({"model": "m", "messages": turns(&[("user", "q"), ("tool", "t"), ("assistant", "a")])}),
            json!({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}),
        ),
    )
    .unwrap();
    let run = env.check_err(&["import", bad.to_str().unwrap()], 3, "");
    assert!(
        run.stdout.contains("line 1: invalid messages: messages[1].role is tool, but a tool turn must follow an assistant turn"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("line 2: invalid messages[1].content: missing required key"),
        "{run:#?}"
    );
}
