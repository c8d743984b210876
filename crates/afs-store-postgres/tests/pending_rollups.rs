//! Single-record logging leaves its rollup contributions pending (schema version 3), and the
//! logging connections fold them a few times a second. Under what production does (several
//! hosts logging into one database at once, feedback and quality written back meanwhile,
//! records forgotten in the middle of it), every statistic still equals a count of the
//! records, before and after the last fold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_store::{
    FeedbackValue, NewUsage, RecordFilter, StatsWindow, SystemClock, UsageRecord, UsageStats,
    UsageStore,
};
use afs_store_postgres::testing::{cluster_url, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore};
use chrono::Utc;
use postgres::NoTls;

fn open(url: &str) -> PgStore {
    PgStore::open(PgConfig::new(url), Arc::new(SystemClock)).unwrap()
}

/// The same statistics, up to float rounding.
fn assert_close(what: &str, got: &UsageStats, want: &UsageStats) {
    assert!(got.approx_eq(want, 1e-6), "{what}: {got:?} vs {want:?}");
}

/// Every statistic the store gives, against the same figures counted from its records:
/// the whole log per model and per hour, and a window starting inside the first minute
/// (whole minutes and hours from the rollups, the partial minute scanned).
fn assert_exact(store: &PgStore, started: chrono::DateTime<Utc>) {
    let records: Vec<UsageRecord> = store
        .query(&RecordFilter::default())
        .unwrap()
        .collect::<afs_store::Result<_>>()
        .unwrap();
    let all = StatsWindow::default();
    assert_close(
        "everything",
        &store.stats(&all).unwrap(),
        &UsageStats::of_records(&records),
    );
    let mut by_model: BTreeMap<String, Vec<UsageRecord>> = BTreeMap::new();
    for r in &records {
        by_model.entry(r.model.clone()).or_default().push(r.clone());
    }
    let got = store.stats_by_model(&all).unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        by_model.keys().collect::<Vec<_>>()
    );
    for (model, rs) in &by_model {
        assert_close(model, &got[model], &UsageStats::of_records(rs));
    }
    let hours: u64 = store
        .stats_by_hour(&all)
        .unwrap()
        .values()
        .map(|s| s.total)
        .sum();
    assert_eq!(hours, records.len() as u64, "per hour");
    let since = started + chrono::Duration::milliseconds(300);
    let later: Vec<UsageRecord> = records
        .iter()
        .filter(|r| r.timestamp >= since)
        .cloned()
        .collect();
    let window = StatsWindow {
        since: Some(since),
        ..StatsWindow::default()
    };
    assert_close(
        "since a time inside a minute",
        &store.stats(&window).unwrap(),
        &UsageStats::of_records(&later),
    );
}

#[test]
fn two_hosts_logging_while_records_are_scored_and_forgotten_keep_every_statistic_exact() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    // Two handles, each with its own logging connection: two hosts of one database.
    let hosts = [open(&database.url), open(&database.url)];
    let started = Utc::now();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for (h, host) in hosts.iter().enumerate() {
            for t in 0..2 {
                let stop = &stop;
                scope.spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        i += 1;
                        let record = NewUsage {
                            quality_score: (i % 3 != 0).then_some((i % 10) as f64 / 10.0),
                            latency_ms: Some(100.0 + i as f64),
                            token_count: Some(i as i64),
                            unit_id: Some(format!("u{}", i % 20)),
                            ..NewUsage::new(format!("q{h}{t}{i}"), "r", ["m1", "m2"][t])
                        };
                        let id = host.log(record).unwrap();
                        // Written back afterwards, as a service's feedback and a judge's
                        // scores are: updates of records whose deltas may still be pending.
                        if i % 7 == 0 {
                            host.record_feedback(&id, FeedbackValue::Positive, None)
                                .unwrap();
                        }
                        if i % 11 == 0 {
                            host.update_quality(&id, 0.25).unwrap();
                        }
                    }
                });
            }
        }
        // Meanwhile records are forgotten (deletes sum their buckets again from the log).
        let (forgetter, stop) = (&hosts[1], &stop);
        scope.spawn(move || {
            for k in 0..5 {
                std::thread::sleep(Duration::from_millis(300));
                forgetter.forget_unit(&format!("u{k}")).unwrap();
            }
            // Past a few folds (every 500 ms) before logging stops.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Release);
        });
    });
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let count = |client: &mut postgres::Client, sql: &str| -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    };
    let logged = count(&mut client, "SELECT count(*) FROM afs_usage");
    assert!(logged > 100, "only {logged} records logged");
    let folded = count(
        &mut client,
        "SELECT coalesce(sum(n), 0)::int8 FROM afs_usage_minute",
    );
    assert!(folded > 0, "no fold ran while logging");
    // Before the last fold (some deltas are likely pending) and after it.
    assert_exact(&hosts[0], started);
    count(&mut client, "SELECT afs_usage_fold_pending()");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM afs_usage_pending"),
        0
    );
    assert_exact(&hosts[0], started);
    // The rollups equal what a rebuild derives from the log.
    let rollups = "SELECT count(*)::int8 FROM (SELECT * FROM afs_usage_minute \
        UNION ALL SELECT * FROM afs_usage_hour) r";
    let sums = "SELECT coalesce(sum(n), 0)::int8 FROM afs_usage_hour";
    let before = (count(&mut client, rollups), count(&mut client, sums));
    hosts[0].rebuild_rollups().unwrap();
    assert_eq!(
        (count(&mut client, rollups), count(&mut client, sums)),
        before
    );
    assert_eq!(before.1, logged);
}

#[test]
fn a_quiet_spell_leaves_the_deltas_pending_and_the_next_group_folds_them() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = open(&database.url);
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let pending = |client: &mut postgres::Client| -> i64 {
        client
            .query_one(
                "SELECT coalesce(sum(n), 0)::int8 FROM afs_usage_pending",
                &[],
            )
            .unwrap()
            .get(0)
    };
    for i in 0..3 {
        store.log(NewUsage::new(format!("q{i}"), "r", "m")).unwrap();
    }
    // A fold runs before a group's insert, so the last record's delta is still pending
    // (the others too, unless the logging connection's first half second had passed).
    assert!((1..=3).contains(&pending(&mut client)));
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 3);
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    assert!(quiet.elapsed() >= Duration::from_millis(500));
    store.log(NewUsage::new("q3", "r", "m")).unwrap();
    assert_eq!(
        pending(&mut client),
        1,
        "the three earlier deltas were folded"
    );
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 4);
}
