//! Helpers shared by the CLI test files: a temp dir holding the database (and the current
//! directory of every run), and runs of the real `afs` binary with a pinned clock.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The time every command sees unless a test says otherwise (AFS_NOW).
pub(crate) const NOW: &str = "2025-06-01T12:00:00Z";

/// The result of one run of `afs`.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// stdout as one JSON value.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// stdout as JSON lines.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }
}

/// A temp dir with a database; every run has it as its current directory.
pub(crate) struct Env {
    pub(crate) dir: TempDir,
    pub(crate) db: PathBuf,
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("afs.db");
        Env { dir, db }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` in the temp dir and returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `afs --db <db> ARGS` run in the temp dir, with a clean environment and the clock
    /// pinned to `now`, as a plain process command (which can be spawned).
    pub(crate) fn std_command_at(&self, now: &str, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("afs"));
        cmd.env_remove("AFS_DB")
            .env_remove("AFS_CONFIG")
            .env_remove("RUST_LOG")
            .env("AFS_NOW", now)
            .current_dir(self.dir.path());
        cmd.arg("--db").arg(&self.db).args(args);
        cmd
    }

    /// [`Env::std_command_at`] for assert_cmd.
    pub(crate) fn command_at(&self, now: &str, args: &[&str]) -> Command {
        Command::from_std(self.std_command_at(now, args))
    }

    pub(crate) fn run_command(mut cmd: Command) -> Run {
        let output = cmd.output().unwrap();
        Run {
            code: output.status.code().expect("afs was killed by a signal"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    pub(crate) fn run_at(&self, now: &str, args: &[&str]) -> Run {
        Self::run_command(self.command_at(now, args))
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_at(NOW, args)
    }

    /// Runs `args` at `now` and checks the exit code.
    pub(crate) fn check_at(&self, now: &str, args: &[&str], expected_exit: i32) -> Run {
        let run = self.run_at(now, args);
        assert_eq!(run.code, expected_exit, "afs {args:?}: {run:#?}");
        run
    }

    /// Runs `args` and checks the exit code.
    pub(crate) fn check(&self, args: &[&str], expected_exit: i32) -> Run {
        self.check_at(NOW, args, expected_exit)
    }

    /// Runs `args`, checks the exit code and that stderr contains every one of `expected`.
    pub(crate) fn check_err(&self, args: &[&str], expected_exit: i32, expected: &[&str]) -> Run {
        let run = self.check(args, expected_exit);
        for part in expected {
            assert!(
                run.stderr.contains(part),
                "afs {args:?}: stderr lacks {part:?}: {run:#?}"
            );
        }
        run
    }

    /// Imports JSON lines (given as values) and asserts that all were imported.
    pub(crate) fn import(&self, lines: &[Value]) {
        self.import_at(NOW, lines);
    }

    pub(crate) fn import_at(&self, now: &str, lines: &[Value]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let file = self.write("fixture.jsonl", &text);
        let run = self.check_at(now, &["import", "--json", file.to_str().unwrap()], 0);
        assert_eq!(run.json()["imported"], lines.len(), "{run:#?}");
        std::fs::remove_file(file).unwrap();
    }
}

/// An import line: `query`, an answer, `model`, plus the keys of `extra`.
pub(crate) fn line(query: &str, model: &str, extra: Value) -> Value {
    let mut value = json!({
        "query": query,
        "response": format!("Here is a careful answer to the question: {query}"),
        "model": model,
    });
    value
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    value
}

/// `n` good records (quality 0.9, thumbs up) of model `m1`, with distinct queries.
pub(crate) fn good_records(n: usize, prefix: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            line(
                &format!("{prefix} question number {i}"),
                "m1",
                json!({"quality_score": 0.9, "feedback": 1, "timestamp": "2025-06-01T11:00:00Z"}),
            )
        })
        .collect()
}

/// Replaces record ids (ULIDs) with a placeholder so snapshots are stable.
pub(crate) fn redact_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let is_ulid_char =
        |c: char| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c));
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| is_ulid_char(**c)).count();
        let bounded = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if run == 26 && bounded && chars[i..i + 26].iter().any(|c| c.is_ascii_uppercase()) {
            out.push_str("[id]");
            i += 26;
        } else {
            let n = run.max(1);
            out.extend(&chars[i..i + n]);
            i += n;
        }
    }
    out
}

/// The path of the example config file at the repository root.
pub(crate) fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../afs.example.toml")
}
