//! Which windows read records one by one. The test plants rows the rollups do not know of
//! (inserted with `ts_us` set, so no trigger adds them): a window that counts them scanned
//! the log; one that does not read only the rollups. Windows whose start is on a minute
//! boundary and whose end is after the newest record must never scan, however many records
//! arrived in the current minute: that is what keeps trigger checks and `afs stats --since
//! 24h` at the same cost after a burst.

use std::sync::Arc;

use afs_store::{ManualClock, NewUsage, StatsWindow, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

#[test]
fn minute_aligned_windows_ending_after_the_newest_record_never_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let minute = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap();
    let now = minute + Duration::seconds(50);
    let clock = Arc::new(ManualClock::new(now));
    let store = SqliteStore::open(SqliteConfig::new(&path), clock).unwrap();
    // A day of history, one record an hour, and 201 records in the current minute.
    for h in 1..=24 {
        store
            .log(NewUsage {
                timestamp: Some(minute - Duration::hours(h) + Duration::seconds(7)),
                ..NewUsage::new("old", "r", "m")
            })
            .unwrap();
    }
    for k in 0..200 {
        store
            .log(NewUsage {
                timestamp: Some(minute + Duration::milliseconds(k * 100)),
                ..NewUsage::new(format!("new {k}"), "r", "m")
            })
            .unwrap();
    }
    store
        .log(NewUsage {
            timestamp: Some(minute + Duration::seconds(45)),
            ..NewUsage::new("newest", "r", "m")
        })
        .unwrap();
    // Planted: ten rows in the current minute and ten a day ago, 30 s into their minute,
    // which the rollups never saw.
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (i, at) in (0..10)
        .map(|k| minute + Duration::seconds(30) + Duration::microseconds(k))
        .chain((0..10).map(|k| {
            minute - Duration::hours(24) + Duration::seconds(30) + Duration::microseconds(k)
        }))
        .enumerate()
    {
        conn.execute(
            "INSERT INTO usage (rowid, id, timestamp, query, response, model, ts_us)
             VALUES (?1 * 1024 + 512, ?2, ?3, 'planted', 'r', 'm', ?1)",
            rusqlite::params![micros(at), format!("planted{i}"), at.to_rfc3339()],
        )
        .unwrap();
    }
    let total = |since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>| {
        store
            .stats(&StatsWindow {
                since,
                until,
                model: None,
            })
            .unwrap()
            .total
    };
    let day_ago = minute - Duration::hours(24);
    // Rollups only: the planted rows are not counted (the window's end is after the newest
    // record, the one at 45 s).
    assert_eq!(total(Some(day_ago), Some(now)), 24 + 201);
    assert_eq!(total(Some(day_ago), None), 24 + 201);
    assert_eq!(total(Some(minute), Some(now + Duration::hours(1))), 201);
    // A start inside a minute scans that minute's records: the planted ones a day ago count
    // (and the history record at 7 s into that minute is before the start).
    assert_eq!(
        total(Some(day_ago + Duration::seconds(10)), Some(now)),
        23 + 201 + 10
    );
    // An end inside the current minute, before the newest record, scans it too.
    assert_eq!(
        total(Some(minute), Some(minute + Duration::seconds(40))),
        200 + 10
    );
}
