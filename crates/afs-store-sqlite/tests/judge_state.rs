//! Migration 9 (a judge's own state beside the sequential state) from a version-8 file with
//! an experiment running and sequential states stored: the file opens, migrates, keeps its
//! states (with no judge state), and stores a judge's own state from then on. The
//! trait-level checks of the field are in the conformance suite.

use std::sync::Arc;

use afs_store::{
    Decision, EventNote, ExperimentStore, ManualClock, NewModelVersion, SequentialState,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore, SCHEMA_VERSION};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::Connection;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap()
}

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path), clock).unwrap()
}

fn columns(path: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT name FROM pragma_table_info('experiment_sequential_state') ORDER BY cid")
        .unwrap();
    let names = statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    names
}

fn version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// The version-8 file is made by opening a new store, recording a look of the default judge,
/// dropping the columns versions 9 and 10 added and setting `user_version` back to 8: the schema
/// version 8 wrote, with its rows.
#[test]
fn a_version_8_database_migrates_and_keeps_its_sequential_states() {
    assert_eq!(SCHEMA_VERSION, 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let store = open(&path, clock.clone());
    store
        .set_champion(&NewModelVersion::new("v1", "/m/v1"), &EventNote::reason(""))
        .unwrap();
    let id = store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.5,
            7,
            &EventNote::reason(""),
        )
        .unwrap()
        .id;
    let msprt = SequentialState {
        metric: "quality".into(),
        n_looks: 2,
        baseline: 0.7,
        tau: 0.035,
        theta0: 0.0,
        p_better: 0.2,
        p_worse: 1.0,
        cs_lower: -0.01,
        cs_upper: 0.04,
        started_at: start(),
        updated_at: start() + Duration::hours(1),
        state: None,
    };
    store
        .record_decision(
            id,
            Decision::KeepTesting,
            std::slice::from_ref(&msprt),
            &EventNote::reason("look"),
            false,
        )
        .unwrap();
    drop(store);
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "ALTER TABLE experiment_sequential_state DROP COLUMN state;
             ALTER TABLE usage DROP COLUMN messages;
             PRAGMA user_version = 8;",
        )
        .unwrap();
    assert!(!columns(&path).contains(&"state".to_string()));

    let store = open(&path, clock.clone());
    assert_eq!(version(&path), SCHEMA_VERSION);
    assert_eq!(columns(&path).last().map(String::as_str), Some("state"));
    assert_eq!(
        store.sequential_states(id).unwrap(),
        std::slice::from_ref(&msprt),
        "the states of version 8 read back, with no judge state"
    );
    let json = r#"{"alpha": [3, 5], "beta": [4, 2], "looks": 3}"#;
    let bayes = SequentialState::custom(
        "bayes.positive_rate",
        3,
        json,
        start(),
        start() + Duration::hours(2),
    );
    store
        .record_decision(
            id,
            Decision::KeepTesting,
            std::slice::from_ref(&bayes),
            &EventNote::reason("look"),
            false,
        )
        .unwrap();
    drop(store);
    // And once more after reopening the migrated file.
    let store = open(&path, clock);
    assert_eq!(store.sequential_states(id).unwrap(), [bayes, msprt]);
}

/// `afs migrate`'s copy (SQLite → SQLite) keeps a judge's own state.
#[test]
fn restore_keeps_a_judges_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let source = open(&dir.path().join("a.db"), clock.clone());
    let dest = open(&dir.path().join("b.db"), clock);
    afs_store::conformance::restore_keeps_sequential_states(&source, &dest);
}
