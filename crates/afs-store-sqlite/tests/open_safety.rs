//! The store opens only its own databases and the Python module's `usage.db`: any other file
//! is refused without a byte changed, and no file is created beside it.

use std::path::Path;
use std::sync::Arc;

use afs_store::{ErrorKind, NewUsage, StoreError, SystemClock, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use rusqlite::Connection;

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn open(path: &Path) -> afs_store::Result<SqliteStore> {
    SqliteStore::open(SqliteConfig::new(path), Arc::new(SystemClock))
}

/// Opening `path` (made by `make`) fails, naming what the file is, and leaves the directory
/// exactly as it was.
fn assert_refused_untouched(make: impl FnOnce(&Path), expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    make(&path);
    let before = snapshot(dir.path());
    let err = open(&path).expect_err("a foreign file was opened");
    assert!(
        matches!(err, StoreError::NotAfsDatabase { .. }),
        "unexpected error: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::Database);
    let message = err.to_string();
    assert!(message.contains(expected), "{message}");
    assert!(message.len() < 400, "the message is short: {message}");
    assert_eq!(snapshot(dir.path()), before, "the file was changed");
}

#[test]
fn another_applications_database_is_refused_untouched() {
    assert_refused_untouched(
        |path| {
            Connection::open(path)
                .unwrap()
                .execute_batch(
                    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);
                     INSERT INTO accounts (name) VALUES ('ada');",
                )
                .unwrap();
        },
        "tables of another application (accounts)",
    );
}

#[test]
fn a_usage_table_of_another_shape_is_refused_untouched() {
    assert_refused_untouched(
        |path| {
            Connection::open(path)
                .unwrap()
                .execute_batch(
                    "PRAGMA journal_mode = DELETE;
                     CREATE TABLE usage (day TEXT, kwh REAL);
                     INSERT INTO usage VALUES ('mon', 3.5);",
                )
                .unwrap();
        },
        "its usage table is not afs's",
    );
}

#[test]
fn a_usage_table_beside_unknown_tables_at_version_zero_is_refused_untouched() {
    assert_refused_untouched(
        |path| {
            let conn = Connection::open(path).unwrap();
            conn.execute_batch(
                "CREATE TABLE usage (id TEXT PRIMARY KEY, timestamp TEXT NOT NULL,
                    query TEXT NOT NULL, response TEXT NOT NULL, model TEXT NOT NULL,
                    expert TEXT, latency_ms REAL, token_count INTEGER, quality_score REAL,
                    user_feedback INTEGER, feedback_text TEXT, context_hash TEXT,
                    dedupe_hash TEXT, created_at TEXT);
                 CREATE TABLE invoices (id INTEGER PRIMARY KEY);",
            )
            .unwrap();
        },
        "tables afs does not know (invoices)",
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    assert_refused_untouched(
        |path| std::fs::write(path, "name,amount\nada,3\n".repeat(100)).unwrap(),
        "not an SQLite database",
    );
    assert_refused_untouched(
        |path| std::fs::write(path, "SQLite").unwrap(),
        "not an SQLite database",
    );
}

#[test]
fn the_python_modules_database_an_empty_file_and_afs_own_open() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("usage.db");
    Connection::open(&seed)
        .unwrap()
        .execute_batch(
            "CREATE TABLE usage (id TEXT PRIMARY KEY, timestamp TEXT NOT NULL,
                query TEXT NOT NULL, response TEXT NOT NULL, model TEXT NOT NULL,
                expert TEXT, latency_ms REAL, token_count INTEGER, quality_score REAL,
                user_feedback INTEGER, feedback_text TEXT, context_hash TEXT,
                dedupe_hash TEXT, created_at TEXT);
             CREATE INDEX idx_model ON usage (model);
             INSERT INTO usage (id, timestamp, query, response, model)
             VALUES ('abc123def456', '2025-01-01T10:00:00', 'q', 'r', 'm');",
        )
        .unwrap();
    let store = open(&seed).unwrap();
    assert_eq!(store.get("abc123def456").unwrap().model, "m");
    drop(store);
    // Opened again: now afs's own database.
    open(&seed).unwrap();

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let store = open(&empty).unwrap();
    store.log(NewUsage::new("q", "r", "m")).unwrap();
}
