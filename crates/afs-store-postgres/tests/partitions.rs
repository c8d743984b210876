//! The log's monthly partitions: made around the clock's month and as time goes on, and
//! dropped whole by `prune` (archived first when asked), with the statistics still equal to
//! a scan of what remains.

use std::sync::Arc;

use afs_store::{
    EventNote, ExperimentStore, ManualClock, NewModelVersion, NewUsage, RecordFilter, StatsWindow,
    UsageStats, UsageStore,
};
use afs_store_postgres::testing::{cluster_url, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore};
use chrono::{DateTime, TimeZone, Utc};
use postgres::NoTls;

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
}

fn record(i: usize, t: DateTime<Utc>) -> NewUsage {
    NewUsage {
        timestamp: Some(t),
        quality_score: Some(0.5 + (i % 5) as f64 / 10.0),
        unit_id: Some(format!("u{}", i % 3)),
        ..NewUsage::new(format!("q{i}"), format!("r{i}"), "m1")
    }
}

fn partitions(url: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, NoTls).unwrap();
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'afs_usage'::regclass ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

/// The statistics of everything, from the rollups and from a scan of the records.
fn stats_and_scan(store: &PgStore) -> (UsageStats, UsageStats) {
    let records: Vec<_> = store
        .query(&RecordFilter::default())
        .unwrap()
        .collect::<afs_store::Result<_>>()
        .unwrap();
    (
        store.stats(&StatsWindow::default()).unwrap(),
        UsageStats::of_records(&records),
    )
}

#[test]
fn prune_drops_whole_months_and_the_statistics_stay_exact() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let clock = Arc::new(ManualClock::new(at(2026, 3, 15)));
    let store = PgStore::open(PgConfig::new(&database.url), clock.clone()).unwrap();
    assert_eq!(
        partitions(&database.url),
        [
            "afs_usage_default",
            "afs_usage_p202602",
            "afs_usage_p202603",
            "afs_usage_p202604",
            "afs_usage_p202605"
        ]
    );
    let times = [
        at(2025, 6, 1),  // an old import: the default partition
        at(2026, 2, 10), // February: dropped whole
        at(2026, 3, 5),  // March, before the cutoff: deleted row by row
        at(2026, 3, 14), // March, after the cutoff: kept
    ];
    let batch: Vec<NewUsage> = (0..40).map(|i| record(i, times[i % 4])).collect();
    let ids = store.log_batch(batch).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive.jsonl");
    let report = store.prune(at(2026, 3, 10), Some(&archive)).unwrap();
    assert_eq!((report.removed, report.archived), (30, 30));
    let parts = partitions(&database.url);
    assert!(
        !parts.contains(&"afs_usage_p202602".to_string()),
        "{parts:?}"
    );
    assert!(
        parts.contains(&"afs_usage_p202603".to_string()),
        "{parts:?}"
    );
    // The archive holds exactly the removed records, in time order.
    let text = std::fs::read_to_string(&archive).unwrap();
    let archived: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived.len(), 30);
    let stamps: Vec<String> = archived
        .iter()
        .map(|v| v["timestamp"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "the archive is in time order");
    let mut archived_ids: Vec<&str> = archived.iter().map(|v| v["id"].as_str().unwrap()).collect();
    archived_ids.sort();
    let mut expected: Vec<&str> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 3)
        .map(|(_, id)| id.as_str())
        .collect();
    expected.sort();
    assert_eq!(archived_ids, expected);
    // What remains, and the rollups agree with a scan (the dropped month's buckets are gone).
    let (stats, scan) = stats_and_scan(&store);
    assert_eq!(stats.total, 10);
    assert_eq!(stats.total, scan.total);
    assert_eq!(stats.n_quality, scan.n_quality);
    assert!((stats.sum_quality - scan.sum_quality).abs() < 1e-9);
    let by_hour = store.stats_by_hour(&StatsWindow::default()).unwrap();
    assert_eq!(by_hour.values().map(|s| s.total).sum::<u64>(), 10);

    // Time goes on: logging makes the next months' partitions.
    clock.set(at(2026, 6, 20));
    store.log(record(99, at(2026, 6, 20))).unwrap();
    let parts = partitions(&database.url);
    assert!(
        parts.contains(&"afs_usage_p202608".to_string()),
        "{parts:?}"
    );
}

#[test]
fn a_month_with_a_running_experiments_records_is_deleted_row_by_row() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let clock = Arc::new(ManualClock::new(at(2026, 3, 2)));
    let store = PgStore::open(PgConfig::new(&database.url), clock.clone()).unwrap();
    store
        .set_champion(
            &NewModelVersion::new("m1", "/m1"),
            &EventNote::reason("first"),
        )
        .unwrap();
    store
        .deploy_challenger(
            &NewModelVersion::new("m2", "/m2"),
            0.5,
            7,
            &EventNote::reason("test"),
        )
        .unwrap();
    clock.set(at(2026, 5, 20));
    let batch: Vec<NewUsage> = (0..12)
        .map(|i| {
            record(
                i,
                [at(2026, 3, 10), at(2026, 4, 10), at(2026, 5, 10)][i % 3],
            )
        })
        .collect();
    store.log_batch(batch).unwrap();
    let report = store.prune(at(2026, 5, 1), None).unwrap();
    assert_eq!(report.removed, 8);
    // March and April hold records the running experiment counts: not dropped whole.
    let parts = partitions(&database.url);
    assert!(
        parts.contains(&"afs_usage_p202603".to_string()),
        "{parts:?}"
    );
    assert!(
        parts.contains(&"afs_usage_p202604".to_string()),
        "{parts:?}"
    );
    let (stats, scan) = stats_and_scan(&store);
    assert_eq!((stats.total, scan.total), (4, 4));
}

#[test]
fn restoring_a_record_whose_id_exists_is_a_conflict_across_partitions() {
    use afs_store::{ErrorKind, RestoreStore};
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let clock = Arc::new(ManualClock::new(at(2026, 3, 15)));
    let store = PgStore::open(PgConfig::new(&database.url), clock).unwrap();
    let id = store.log(record(1, at(2026, 3, 15))).unwrap();
    let mut copy = store.get(&id).unwrap();
    // The same id in another month's partition is still the same record.
    copy.timestamp = at(2026, 4, 2);
    let err = store.restore_records(&[copy]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 1);
}
