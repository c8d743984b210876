//! Tests specific to the SQLite store: migrating a database written by the Python module,
//! schema versions, and several processes logging into one file.

use std::process::{Command, Stdio};
use std::sync::Arc;

use afs_store::{
    FeedbackValue, ManualClock, NewUsage, RecordFilter, StatsWindow, SystemClock, UsageStore,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore, SCHEMA_VERSION};
use chrono::{DateTime, Duration, Local, NaiveDateTime, TimeZone, Utc};
use rusqlite::{params, Connection};

/// The `usage` table exactly as the Python module creates it, with the indexes it adds.
const SEED_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    query TEXT NOT NULL,
    response TEXT NOT NULL,
    model TEXT NOT NULL,
    expert TEXT,
    latency_ms REAL,
    token_count INTEGER,
    quality_score REAL,
    user_feedback INTEGER,
    feedback_text TEXT,
    context_hash TEXT,
    dedupe_hash TEXT,
    created_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_timestamp ON usage(timestamp);
CREATE INDEX IF NOT EXISTS idx_model ON usage(model);
CREATE INDEX IF NOT EXISTS idx_quality ON usage(quality_score);
CREATE INDEX IF NOT EXISTS idx_feedback ON usage(user_feedback);
CREATE INDEX IF NOT EXISTS idx_dedupe ON usage(dedupe_hash);
";

/// `datetime.now().isoformat()`: local time, microseconds, no offset.
fn python_isoformat(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

struct SeedRow {
    id: String,
    at: DateTime<Utc>,
    quality: Option<f64>,
    feedback: Option<i64>,
}

/// Writes a database the way the Python module does and returns what it wrote.
fn write_seed_db(path: &std::path::Path, n: usize) -> Vec<SeedRow> {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SEED_SCHEMA).unwrap();
    let base = Utc.with_ymd_and_hms(2025, 6, 1, 8, 0, 0).unwrap() + Duration::microseconds(123_456);
    let mut rows = Vec::new();
    for i in 0..n {
        // uuid4().hex[:12]
        let id = format!("{:012x}", 0x5eed_0000_0000u64 + i as u64 * 7919);
        let at = base + Duration::minutes(37 * i as i64);
        let quality = (i % 5 != 0).then_some((i % 10) as f64 / 10.0);
        let feedback = match i % 6 {
            0 => Some(1),
            1 => Some(-1),
            2 => Some(0),
            _ => None,
        };
        let query = format!("seed query {i}");
        let response = format!("seed response {i}");
        let md5ish = format!("{:032x}", i * 31);
        conn.execute(
            "INSERT INTO usage (id, timestamp, query, response, model, expert, latency_ms, token_count,
             quality_score, user_feedback, feedback_text, context_hash, dedupe_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                id,
                python_isoformat(at),
                query,
                response,
                if i % 2 == 0 { "nayru-v1" } else { "nayru-v2" },
                (i % 3 == 0).then_some("asm"),
                Some(100.0 + i as f64),
                Some(20 + i as i64),
                quality,
                feedback,
                (feedback == Some(-1)).then_some("wrong"),
                Some("ctx"),
                md5ish,
                python_isoformat(at),
            ],
        )
        .unwrap();
        rows.push(SeedRow {
            id,
            at,
            quality,
            feedback,
        });
    }
    rows
}

/// Rows whose rowid does not follow their time (the store keeps `rowid >> 10 == ts_us`, so
/// that a time range is a rowid range).
fn rows_out_of_time_order(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM usage WHERE ts_us IS NULL OR (rowid >> 10) <> ts_us",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_python_module_database_migrates_in_place_with_every_row_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let seed = write_seed_db(&path, 200);
    // A duplicate pair written by the Python module, to check dedupe spans old rows.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO usage (id, timestamp, query, response, model, created_at)
             SELECT 'dup000000001', timestamp, query, response, model, created_at FROM usage WHERE id = ?1",
            [&seed[3].id],
        )
        .unwrap();
    }

    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let store = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
    let all: Vec<_> = store
        .query(&RecordFilter::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 201);
    for row in &seed {
        let got = store.get(&row.id).unwrap();
        assert_eq!(got.id.len(), 12);
        assert_eq!(
            got.timestamp, row.at,
            "local-time timestamp of {} read back as UTC",
            row.id
        );
        assert_eq!(got.quality_score, row.quality);
        assert_eq!(got.feedback.map(FeedbackValue::as_i64), row.feedback);
        assert_eq!(got.context_hash.as_deref(), Some("ctx"));
        assert_eq!(got.created_at, Some(row.at));
        // The Python module wrote no pair key; readers compute it for such rows.
        assert_eq!(got.pair_key, None);
    }
    // The seed's own columns keep their text: the timestamp is still the Python's string.
    let conn = Connection::open(&path).unwrap();
    let (raw, version): (String, i64) = conn
        .query_row(
            "SELECT timestamp, (SELECT user_version FROM pragma_user_version) FROM usage WHERE id = ?1",
            [&seed[0].id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(raw, python_isoformat(seed[0].at));
    assert_eq!(version, SCHEMA_VERSION);
    // Rows were renumbered in time order; the Python module's own indexes are still there.
    assert_eq!(rows_out_of_time_order(&path), 0);
    let seed_indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seed_indexes, 5);

    let stats = store.stats(&StatsWindow::default()).unwrap();
    assert_eq!(stats.total, 201);
    assert_eq!(
        stats.positive_feedback,
        seed.iter().filter(|r| r.feedback == Some(1)).count() as u64
    );
    assert_eq!(
        stats.n_quality,
        seed.iter().filter(|r| r.quality.is_some()).count() as u64
    );
    let per_model = store.stats_by_model(&StatsWindow::default()).unwrap();
    assert_eq!(per_model["nayru-v1"].total, 100);
    assert_eq!(per_model["nayru-v2"].total, 101);

    // Windows work on the migrated times.
    let since = seed[100].at;
    assert_eq!(
        store
            .stats(&StatsWindow {
                since: Some(since),
                ..Default::default()
            })
            .unwrap()
            .total,
        100
    );

    // Old and new rows live together; feedback on an old id works; dedupe spans both.
    store
        .record_feedback(&seed[5].id, FeedbackValue::Positive, Some("late"))
        .unwrap();
    let new_id = store
        .log(NewUsage::new("new query", "new response", "nayru-v3"))
        .unwrap();
    assert_eq!(
        store.get(&new_id).unwrap().pair_key,
        Some(afs_store::key::pair_key("new query", "new response"))
    );
    let report = store.dedupe(false).unwrap();
    assert_eq!(report.removed, 1);
    drop(store);

    // Reopening is a no-op migration.
    let store = SqliteStore::open(SqliteConfig::new(&path), clock).unwrap();
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 201);
}

/// The Python module wrote local time; the machine running these tests may well be on UTC,
/// which would hide a wrong conversion. Run the seed tests again under a zone with an offset.
#[test]
fn seed_migration_under_a_non_utc_time_zone() {
    if std::env::var("TZ").as_deref() == Ok("Asia/Kolkata") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for test in [
        "a_python_module_database_migrates_in_place_with_every_row_kept",
        "rows_inserted_by_the_python_module_after_migration_are_dated_and_counted",
        "naive_timestamps_are_local_time",
    ] {
        let out = Command::new(&exe)
            .args(["--exact", test, "--test-threads=1"])
            .env("TZ", "Asia/Kolkata")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{test} failed under TZ=Asia/Kolkata:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{test} did not run"
        );
    }
}

#[test]
fn rows_inserted_by_the_python_module_after_migration_are_dated_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    write_seed_db(&path, 3);
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    let at = Utc.with_ymd_and_hms(2025, 12, 24, 18, 30, 15).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO usage (id, timestamp, query, response, model, quality_score, created_at)
             VALUES ('abcdef123456', ?1, 'q', 'r', 'py-model', 0.5, ?1)",
            [python_isoformat(at)],
        )
        .unwrap();
    let got = store.get("abcdef123456").unwrap();
    assert!(
        (got.timestamp - at).num_milliseconds().abs() <= 1,
        "{} vs {at}",
        got.timestamp
    );
    let stats = store.stats_by_model(&StatsWindow::default()).unwrap();
    assert_eq!(stats["py-model"].n_quality, 1);
    // The trigger moved the row to a rowid of its time, so time ranges find it.
    assert_eq!(rows_out_of_time_order(&path), 0);
    let around = store
        .query(&RecordFilter {
            since: Some(at - Duration::seconds(1)),
            until: Some(at + Duration::seconds(1)),
            ..Default::default()
        })
        .unwrap()
        .map(|r| r.unwrap().id)
        .collect::<Vec<_>>();
    assert_eq!(around, vec!["abcdef123456".to_string()]);
}

#[test]
fn seed_rows_crowding_one_microsecond_all_migrate_in_order() {
    // 1,100 rows the Python module wrote with a timestamp nobody can read: they all date
    // to the epoch, more than one microsecond of rowids holds.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    write_seed_db(&path, 5);
    {
        let conn = Connection::open(&path).unwrap();
        for i in 0..1100 {
            conn.execute(
                "INSERT INTO usage (id, timestamp, query, response, model) \
                 VALUES (?1, 'garbled', ?2, 'r', 'old')",
                params![format!("{i:012}"), format!("q{i}")],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    assert_eq!(rows_out_of_time_order(&path), 0);
    let old: Vec<_> = store
        .query(&RecordFilter {
            model: Some("old".into()),
            ..Default::default()
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(old.len(), 1100);
    // The order they were written in is kept; the last 76 moved one microsecond on.
    assert!(old
        .iter()
        .enumerate()
        .all(|(i, r)| r.query == format!("q{i}")));
    assert_eq!(old[1023].timestamp.timestamp_micros(), 0);
    assert_eq!(old[1024].timestamp.timestamp_micros(), 1);
    let stats = store.stats_by_model(&StatsWindow::default()).unwrap();
    assert_eq!(stats["old"].total, 1100);
    assert_eq!(stats.values().map(|s| s.total).sum::<u64>(), 1105);
}

#[test]
fn pending_rollup_deltas_stay_few_and_prune_empties_the_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let start = Utc.with_ymd_and_hms(2026, 2, 1, 9, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let store = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
    for i in 0..300 {
        clock.set(start + Duration::seconds(7 * i));
        let model = ["a", "b"][i as usize % 2];
        store
            .log(NewUsage::new(format!("q{i}"), "r", model))
            .unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    // 35 minutes of logging: only the current minute, hour and day of each model pending.
    assert!(
        count("usage_rollup_recent") <= 6,
        "{}",
        count("usage_rollup_recent")
    );
    assert!(count("usage_rollup_minute") >= 30);
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 300);
    let report = store.prune(start + Duration::days(1), None).unwrap();
    assert_eq!(report.removed, 300);
    for table in [
        "usage_rollup_recent",
        "usage_rollup_minute",
        "usage_rollup",
        "usage_rollup_day",
    ] {
        assert_eq!(count(table), 0, "{table} after pruning everything");
    }
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 0);
}

#[test]
fn a_database_from_a_newer_afs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn naive_timestamps_are_local_time() {
    // The parse used for seed rows agrees with chrono's own local-time conversion.
    let naive = NaiveDateTime::parse_from_str("2025-03-04T05:06:07.891011", "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap();
    let want = Local
        .from_local_datetime(&naive)
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(SEED_SCHEMA).unwrap();
    conn.execute(
        "INSERT INTO usage (id, timestamp, query, response, model) VALUES ('a1b2c3d4e5f6', '2025-03-04T05:06:07.891011', 'q', 'r', 'm')",
        [],
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    assert_eq!(store.get("a1b2c3d4e5f6").unwrap().timestamp, want);
}

const CHILD_ENV: &str = "AFS_STORE_TEST_CHILD_DB";
const PER_CHILD: usize = 400;

/// Runs only inside a child process started by `several_processes_logging_lose_nothing`.
#[test]
fn child_logger() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let tag = std::env::var("AFS_STORE_TEST_CHILD_TAG").unwrap();
    let store = SqliteStore::open(SqliteConfig::new(path), Arc::new(SystemClock)).unwrap();
    for i in 0..PER_CHILD {
        let mut new = NewUsage::new(
            format!("{tag} query {i}"),
            "response",
            format!("model-{tag}"),
        );
        new.quality_score = Some(0.5);
        if i % 40 == 0 {
            store.log_batch(vec![new.clone(), new]).unwrap();
        } else {
            store.log(new).unwrap();
        }
    }
}

#[test]
fn several_processes_logging_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let exe = std::env::current_exe().unwrap();
    // Processes start at once, so they also race to create and migrate the file.
    let children: Vec<_> = (0..4)
        .map(|t| {
            Command::new(&exe)
                .args(["--exact", "child_logger", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &path)
                .env("AFS_STORE_TEST_CHILD_TAG", t.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a child logger failed");
    }
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    let per_model = store.stats_by_model(&StatsWindow::default()).unwrap();
    let expected = (PER_CHILD + PER_CHILD / 40) as u64;
    assert_eq!(per_model.len(), 4);
    for (model, stats) in per_model {
        assert_eq!(stats.total, expected, "{model}");
        assert_eq!(stats.n_quality, expected, "{model}");
    }
    let scanned = store.query(&RecordFilter::default()).unwrap().count() as u64;
    assert_eq!(scanned, 4 * expected);
}

/// Continuous single-record logging must not grow the WAL without bound: the background
/// checkpoints can never finish while commits keep coming, so the writer checkpoints too.
#[test]
fn the_wal_stays_bounded_under_continuous_logging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    let text = "some response text ".repeat(60);
    for i in 0..8000 {
        store
            .log(NewUsage::new(format!("query {i}"), text.clone(), "m"))
            .unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("wal.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    // Each commit appends three or four 8 KiB frames: without checkpoints that finish, 8,000
    // commits leave a WAL of ~230 MB. The checkpoint thread rewinds it at ~64 MB when it gets
    // the CPU; the writer itself does at 80 MB (as SQLite counts the WAL's frames) when not.
    assert!(
        wal < 100 * 1024 * 1024,
        "WAL grew to {} MB",
        wal / (1024 * 1024)
    );
}
