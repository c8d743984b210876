//! `afs migrate` with the real binary: a database with records (feedback, quality, units),
//! a champion, a running experiment with decisions and covariates, a retrain run and
//! controller state is copied SQLite → SQLite everywhere, and SQLite → PostgreSQL → SQLite
//! when a test cluster is available (`AFS_TEST_PG_URL`); every read command gives the same
//! output on the copy; a non-empty destination is refused and left unchanged; feedback for
//! an id of the source works on the copy.

use std::path::Path;
use std::process::{Command, Output};

use afs_store_postgres::testing::{cluster_url, TestDatabase};
use serde_json::Value;

/// Runs `afs ARGS` at `now` in `dir` (no config file) and returns its output.
fn afs(dir: &Path, now: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afs"))
        .args(args)
        .current_dir(dir)
        .env("AFS_NOW", now)
        .env_remove("AFS_DB")
        .env_remove("AFS_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Runs `afs ARGS` and checks its exit code; returns stdout.
fn check(dir: &Path, now: &str, args: &[&str], code: i32) -> String {
    let out = afs(dir, now, args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "afs {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

const T0: &str = "2025-06-01T00:00:00Z";
const DEPLOY: &str = "2025-06-02T00:00:00Z";
const LATER: &str = "2025-06-03T00:00:00Z";
const END: &str = "2025-06-04T00:00:00Z";

/// One JSON line of `afs import`.
fn line(model: &str, i: usize, time: &str, unit: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "query": format!("question {i} for {model}"),
        "response": format!("answer {i}"),
        "model": model,
        "timestamp": time,
        "latency_ms": 10.0 + i as f64 * 0.37,
        "token_count": 20 + i,
    });
    if i % 3 != 0 {
        v["quality_score"] = serde_json::json!(0.1 + (i % 9) as f64 / 10.0);
    }
    if i % 4 == 1 {
        v["feedback"] = serde_json::json!(if i % 8 == 1 { 1 } else { -1 });
        v["feedback_text"] = serde_json::json!(format!("comment {i}"));
    }
    if let Some(unit) = unit {
        v["unit"] = serde_json::json!(unit);
    }
    v.to_string()
}

/// Builds the source database `src.db` in `dir`: history before the experiment (the
/// covariates' look-back), a champion, a running experiment with two decisions, records of
/// both arms, feedback given later, a retrain run and the state the trigger keeps.
fn build_source(dir: &Path) {
    let mut before = String::new();
    for i in 0..60 {
        let minute = i % 60;
        let time = format!("2025-06-01T10:{minute:02}:{:02}.123456Z", i % 7);
        before.push_str(&line(
            "champ-v1",
            i,
            &time,
            Some(&format!("user-{}", i % 12)),
        ));
        before.push('\n');
    }
    // Conversations travel whole (the `records` view compares their turns).
    for (i, opening) in ["Hi", "Hello"].into_iter().enumerate() {
        let turns = serde_json::json!([
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": opening},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]);
        let record = serde_json::json!({"model": "champ-v1", "messages": turns, "quality_score": 0.8,
            "unit": "user-1", "timestamp": format!("2025-06-01T10:30:0{i}.5Z")});
        before.push_str(&format!("{record}\n"));
    }
    std::fs::write(dir.join("before.jsonl"), before).unwrap();
    check(dir, T0, &["--db", "src.db", "import", "before.jsonl"], 0);
    check(
        dir,
        T0,
        &[
            "--db",
            "src.db",
            "ab",
            "set-champion",
            "champ-v1",
            "--path",
            "/m/champ",
        ],
        0,
    );
    check(
        dir,
        DEPLOY,
        &[
            "--db", "src.db", "ab", "deploy", "chal-v2", "--path", "/m/chal", "--weight", "0.5",
        ],
        0,
    );
    let mut during = String::new();
    for i in 0..200 {
        let model = if i % 2 == 0 { "champ-v1" } else { "chal-v2" };
        let time = format!("2025-06-02T{:02}:{:02}:00Z", 1 + i / 60, i % 60);
        let unit = (i % 5 != 0).then(|| format!("user-{}", i % 17));
        during.push_str(&line(model, i, &time, unit.as_deref()));
        during.push('\n');
    }
    // Two records in one microsecond: their order must survive.
    during.push_str(&line(
        "chal-v2",
        900,
        "2025-06-02T05:00:00.000001Z",
        Some("user-1"),
    ));
    during.push('\n');
    during.push_str(&line(
        "chal-v2",
        901,
        "2025-06-02T05:00:00.000001Z",
        Some("user-2"),
    ));
    during.push('\n');
    std::fs::write(dir.join("during.jsonl"), during).unwrap();
    check(dir, LATER, &["--db", "src.db", "import", "during.jsonl"], 0);
    check(dir, LATER, &["--db", "src.db", "ab", "check", "--json"], 0);
    // Feedback given after logging (feedback_at later than the record).
    let first = check(
        dir,
        LATER,
        &["--db", "src.db", "records", "--limit", "1"],
        0,
    );
    let id = serde_json::from_str::<Value>(first.trim()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    check(dir, LATER, &["--db", "src.db", "feedback", &id, "--up"], 0);
    check(
        dir,
        "2025-06-03T01:00:00Z",
        &["--db", "src.db", "ab", "check"],
        0,
    );
    // A retrain run (its trainer writes a model and reports it).
    std::fs::write(
        dir.join("train.sh"),
        "#!/bin/sh\necho weights > \"$2/model.bin\"\necho \"{\\\"model_path\\\": \\\"$2/model.bin\\\"}\"\n",
    )
    .unwrap();
    let train = format!(
        "sh {} {{data}} {{output_dir}}",
        dir.join("train.sh").display()
    );
    check(
        dir,
        "2025-06-03T02:00:00Z",
        &[
            "--db",
            "src.db",
            "retrain",
            "--force",
            "--output-dir",
            "runs",
            "--min-samples",
            "1",
            "--train-cmd",
            &train,
        ],
        0,
    );
}

/// The outputs that must be identical on a copy.
fn views(dir: &Path, db: &str) -> Vec<(String, String)> {
    let views: &[&[&str]] = &[
        &["records"],
        &["records", "--newest-first", "--with-feedback"],
        &["stats", "--json"],
        &["stats", "--by-model", "--json"],
        &["stats", "--since", "2025-06-02T01:30:00Z", "--json"],
        &["ab", "history", "--json"],
        &["ab", "status", "--json"],
        &["ab", "compare", "--json"],
        &["runs", "--json"],
        &["trigger", "check", "--json"],
    ];
    views
        .iter()
        .map(|args| {
            let mut full = vec!["--db", db];
            full.extend_from_slice(args);
            (args.join(" "), check(dir, END, &full, 0))
        })
        .collect()
}

/// Whether two JSON values are equal, numbers within 1e-12 relative: sums of floats come
/// out of two databases in different orders, so their last bits may differ.
fn close(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| close(x, y)))
        }
        _ => x == y,
    }
}

/// Every view is identical on `b`; with `exact` false, numbers of JSON output may differ in
/// their last bits (another backend).
fn assert_same_views(dir: &Path, a: &str, b: &str, exact: bool) {
    for ((what, x), (_, y)) in views(dir, a).into_iter().zip(views(dir, b)) {
        if exact || !what.contains("--json") {
            assert_eq!(x, y, "`afs {what}` differs between {a} and {b}");
            continue;
        }
        let parse = |text: &str| -> Vec<Value> {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (xs, ys) = (parse(&x), parse(&y));
        assert!(
            xs.len() == ys.len() && xs.iter().zip(&ys).all(|(x, y)| close(x, y)),
            "`afs {what}` differs between {a} and {b}:\n{x}\n{y}"
        );
    }
}

fn migrate(dir: &Path, from: &str, to: &str) -> Value {
    let out = check(
        dir,
        END,
        &[
            "migrate", "--from", from, "--to", to, "--json", "--batch", "37",
        ],
        0,
    );
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["verified"], true, "{summary}");
    summary
}

#[test]
fn a_database_is_copied_with_its_ids_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    build_source(dir);

    let summary = migrate(dir, "src.db", "copy.db");
    assert_eq!(summary["records"], 264);
    assert_eq!(summary["versions"], 2);
    assert_eq!(summary["experiments"], 1, "{summary}");
    assert_eq!(summary["runs"], 1);
    assert!(summary["running_experiment"].is_i64(), "{summary}");
    assert!(summary["events"].as_u64().unwrap() >= 4, "{summary}");
    assert!(
        summary["covariate_units"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(summary["state_keys"].as_u64().unwrap() > 0, "{summary}");
    assert_same_views(dir, "src.db", "copy.db", false);

    // A destination that holds anything is refused (exit 5) and left as it was.
    let before = check(dir, END, &["--db", "copy.db", "records"], 0);
    let out = afs(
        dir,
        END,
        &["migrate", "--from", "src.db", "--to", "copy.db"],
    );
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(check(dir, END, &["--db", "copy.db", "records"], 0), before);
    // The same database on both sides is refused too, and a missing source.
    let out = afs(dir, END, &["migrate", "--from", "src.db", "--to", "src.db"]);
    assert_eq!(out.status.code(), Some(3));
    let out = afs(dir, END, &["migrate", "--from", "none.db", "--to", "x.db"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.join("x.db").exists());

    // Feedback for an id handed out by the source works on the copy, and the copy keeps
    // logging and judging.
    let old = check(dir, END, &["--db", "src.db", "records", "--limit", "1"], 0);
    let id = serde_json::from_str::<Value>(old.trim()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for db in ["src.db", "copy.db"] {
        check(dir, END, &["--db", db, "feedback", &id, "--down"], 0);
        check(
            dir,
            END,
            &[
                "--db",
                db,
                "log",
                "--query",
                "q",
                "--response",
                "r",
                "--model",
                "chal-v2",
            ],
            0,
        );
    }
    let stats = |db: &str| check(dir, END, &["--db", db, "stats", "--by-model", "--json"], 0);
    let (a, b) = (stats("src.db"), stats("copy.db"));
    let parse = |t: &str| serde_json::from_str::<Value>(t.trim()).unwrap();
    assert!(close(&parse(&a), &parse(&b)), "{a}\n{b}");
}

#[test]
fn a_database_goes_to_postgres_and_back() {
    let Some(cluster) = cluster_url() else {
        eprintln!("AFS_TEST_PG_URL is not set: skipping the PostgreSQL round trip");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    build_source(dir);
    let database = TestDatabase::create(&cluster);
    let pg = database.url.as_str();

    let to_pg = migrate(dir, "src.db", pg);
    assert_same_views(dir, "src.db", pg, false);
    let back = migrate(dir, pg, "back.db");
    assert_eq!(to_pg["records"], back["records"]);
    assert_eq!(to_pg["covariate_units"], back["covariate_units"]);
    assert_same_views(dir, "src.db", "back.db", false);

    // PostgreSQL, once written, is refused as a destination.
    let out = afs(dir, END, &["migrate", "--from", "src.db", "--to", pg]);
    assert_eq!(out.status.code(), Some(5));
}
