//! Per-unit experiment statistics of the SQLite store in what only SQLite has: rows the
//! Python module inserts, a database migrated from schema version 6 with an experiment
//! running, and the statistics tables after forgetting a unit. The trait-level checks
//! (random sequences, ended experiments, covariates) are in the conformance suite
//! (`afs_store::conformance`, run by `tests/conformance.rs`).

use std::sync::Arc;

use afs_store::conformance::{
    assert_unit_cohorts_close, assert_unit_stats_match_scan, running_experiment_with_records,
    unit_stats_sequence,
};
use afs_store::{Clock, EventNote, ExperimentStore, ManualClock, NewUsage, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore, SCHEMA_VERSION};
use chrono::{DateTime, Duration, Local, TimeZone, Utc};
use rusqlite::{params, Connection};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap()
}

/// xorshift64*: a small seeded generator, so a failing sequence can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const UNITS: [&str; 9] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path), clock).unwrap()
}

/// A store with champion `v1`, challenger `v2` and some records of both arms.
fn running_with_records(path: &std::path::Path, clock: Arc<ManualClock>) -> (SqliteStore, i64) {
    let store = open(path, clock.clone());
    let id = running_experiment_with_records(&store, &clock);
    (store, id)
}

fn check(
    store: &SqliteStore,
    id: i64,
    cut: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    context: &str,
) {
    assert_unit_stats_match_scan(store, id, cut, since, context);
}

/// A row as the Python module writes it: local-time ISO timestamp and no `ts_us`.
fn python_insert(path: &std::path::Path, rng: &mut Rng, now: DateTime<Utc>, n: u64) -> String {
    let id = format!("py{n:010}");
    let at = now - Duration::seconds(rng.below(600) as i64);
    let timestamp = at
        .with_timezone(&Local)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let unit = rng.chance(70).then(|| rng.pick(&UNITS).to_string());
    let model = *rng.pick(&["v1", "v2"]);
    Connection::open(path)
        .unwrap()
        .execute(
            "INSERT INTO usage (id, timestamp, query, response, model, quality_score, unit_id, created_at)
             VALUES (?1, ?2, ?3, 'r', ?4, ?5, ?6, ?2)",
            params![id, timestamp, format!("py {n}"), model, 0.25 + rng.unit() / 2.0, unit],
        )
        .unwrap();
    id
}

/// The conformance suite's random sequences with rows inserted as the Python module does
/// (no `ts_us`, a local-time timestamp: the store's triggers must count them too).
#[test]
fn unit_stats_follow_rows_the_python_module_inserts() {
    for seed in 1..=40 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("afs.db");
        let clock = Arc::new(ManualClock::new(start()));
        let store = open(&path, clock.clone());
        let rng = std::cell::RefCell::new(Rng::new(seed ^ 0x5eed));
        let insert =
            |n: u64, now: DateTime<Utc>| python_insert(&path, &mut rng.borrow_mut(), now, n);
        unit_stats_sequence(&store, &clock, seed, Some(&insert));
    }
}

/// Migration 7 from a version-6 file with an experiment running. The version-6 file is made
/// by opening a new store, dropping every table, trigger and column versions 7 and later
/// added, and setting `user_version` back to 6: the same schema version 6 wrote, with the
/// records and the running experiment already in it.
#[test]
fn migration_from_version_6_builds_the_statistics_of_a_running_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let (store, id) = running_with_records(&path, clock.clone());
    let before = store.unit_stats(id, None).unwrap();
    drop(store);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TRIGGER experiment_usage_insert;
             DROP TRIGGER experiment_usage_delete;
             DROP TRIGGER experiment_usage_values;
             DROP TRIGGER experiment_usage_move;
             DROP TABLE experiment_live;
             DROP TABLE experiment_unit;
             DROP TABLE experiment_loose;
             DROP TABLE experiment_unit_pre;
             DROP TABLE experiment_cohort;
             ALTER TABLE experiment_period DROP COLUMN started_us;
             ALTER TABLE experiment_sequential_state DROP COLUMN state;
             ALTER TABLE usage DROP COLUMN messages;
             PRAGMA user_version = 6;",
        )
        .unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name LIKE 'experiment_unit%' OR name LIKE 'experiment_live%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            tables, 0,
            "the version-6 file has none of version 7's objects"
        );
    }
    let store = open(&path, clock.clone());
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 10);
    let migrated = store.unit_stats(id, None).unwrap();
    assert_unit_cohorts_close(&migrated, &before, "after migration, as before");
    check(&store, id, None, None, "after migration");
    check(
        &store,
        id,
        Some(clock.now() - Duration::minutes(20)),
        None,
        "after migration",
    );
    // And kept current afterwards.
    for n in 0..30u64 {
        let mut r = NewUsage::new(format!("later {n}"), "r", ["v1", "v2"][n as usize % 2]);
        r.unit_id = Some(UNITS[n as usize % UNITS.len()].to_string());
        r.quality_score = Some(0.1 + (n % 8) as f64 / 10.0);
        r.latency_ms = Some(20.0 + n as f64);
        store.log(r).unwrap();
    }
    store.forget_unit("u3").unwrap();
    check(&store, id, None, None, "after migration and more writes");
}

#[test]
fn forgetting_a_unit_leaves_no_row_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let (store, id) = running_with_records(&path, clock.clone());
    store
        .record_unit_covariates(id, start() - Duration::hours(1))
        .unwrap();
    let count = |unit: &str| -> i64 {
        let conn = Connection::open(&path).unwrap();
        conn.query_row(
            "SELECT (SELECT COUNT(*) FROM experiment_unit WHERE unit = ?1)
                  + (SELECT COUNT(*) FROM experiment_unit_pre WHERE unit = ?1)",
            [unit],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(count("u1") > 0, "u1 has statistics before it is forgotten");
    assert!(count("u2") > 0);
    store.forget_unit("u1").unwrap();
    assert_eq!(count("u1"), 0);
    check(
        &store,
        id,
        None,
        Some(start() - Duration::hours(1)),
        "after forgetting u1",
    );
    // In an ended experiment too.
    store.rollback(id, &EventNote::default()).unwrap();
    store.forget_unit("u2").unwrap();
    assert_eq!(count("u2"), 0);
}
