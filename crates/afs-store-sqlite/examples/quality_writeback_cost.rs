//! What writing quality scores back costs (issue 15):
//! `cargo run --release -p afs-store --example quality_writeback_cost [records] [scores]`.
//!
//! Builds a log of `records` (default 100k) records over 75 days without quality scores,
//! then times `update_qualities` of `scores` (default 1,443) records spread over the log,
//! set from NULL, then the same records set again; and, for comparison, `log_batch` of as
//! many new records. Then the same three on a store opened afresh and closed after the
//! write, as one `afs` command does: the close checkpoints the write-ahead log into the
//! database file, which the in-process figures leave to the background checkpointer.

use std::sync::Arc;
use std::time::Instant;

use afs_store::{ManualClock, NewUsage, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{Duration, TimeZone, Utc};

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let scores: usize = args.next().map_or(1_443, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let span = Duration::days(75);
    let clock = Arc::new(ManualClock::new(start + span));
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("q.db")), clock).unwrap();
    let step = span.num_microseconds().unwrap() / records as i64;
    let mut ids = Vec::with_capacity(records as usize);
    for chunk in (0..records).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<NewUsage> = chunk
            .iter()
            .map(|&i| NewUsage {
                timestamp: Some(start + Duration::microseconds(step * i as i64)),
                latency_ms: Some(100.0),
                ..NewUsage::new(format!("query {i}"), "a response", format!("m{}", i % 3))
            })
            .collect();
        ids.extend(store.log_batch(batch).unwrap());
    }
    let every = (ids.len() / scores).max(1);
    let chosen: Vec<(String, f64)> = ids
        .iter()
        .step_by(every)
        .take(scores)
        .enumerate()
        .map(|(k, id)| (id.clone(), (k % 100) as f64 / 100.0))
        .collect();
    let t = Instant::now();
    store.update_qualities(&chosen).unwrap();
    let from_null = t.elapsed();
    let again: Vec<(String, f64)> = chosen.iter().map(|(id, q)| (id.clone(), 1.0 - q)).collect();
    let t = Instant::now();
    store.update_qualities(&again).unwrap();
    let replace = t.elapsed();
    let new: Vec<NewUsage> = (0..chosen.len())
        .map(|i| NewUsage {
            timestamp: Some(start + span - Duration::seconds(i as i64)),
            quality_score: Some(0.5),
            ..NewUsage::new(format!("new {i}"), "a response", "m0")
        })
        .collect();
    let t = Instant::now();
    store.log_batch(new).unwrap();
    let logged = t.elapsed();
    if std::env::var_os("QUALITY_PROBE").is_some() {
        // Where the time goes, on the raw connection.
        let mut conn = rusqlite::Connection::open(dir.path().join("q.db")).unwrap();
        for (label, flag, commit) in [
            ("triggers, commit", false, true),
            ("no triggers, commit", true, true),
            ("no triggers, rollback", true, false),
        ] {
            let tx = conn.transaction().unwrap();
            let t = Instant::now();
            if flag {
                tx.execute("INSERT INTO usage_bulk_write (id) VALUES (1)", [])
                    .unwrap();
            }
            {
                let mut stmt = tx
                    .prepare("UPDATE usage SET quality_score = ?1 WHERE id = ?2")
                    .unwrap();
                for (id, q) in &chosen {
                    stmt.execute(rusqlite::params![q * 0.5, id]).unwrap();
                }
            }
            let updates = t.elapsed();
            if flag {
                tx.execute("DELETE FROM usage_bulk_write", []).unwrap();
            }
            if commit {
                tx.commit().unwrap();
            } else {
                tx.rollback().unwrap();
            }
            println!(
                "  {label}: updates {:.1} ms, total {:.1} ms",
                updates.as_secs_f64() * 1e3,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    drop(store);
    let reopen = || {
        let clock = Arc::new(ManualClock::new(start + span));
        SqliteStore::open(SqliteConfig::new(dir.path().join("q.db")), clock).unwrap()
    };
    let whole = |f: &dyn Fn(&SqliteStore)| {
        let store = reopen();
        let t = Instant::now();
        f(&store);
        drop(store);
        t.elapsed()
    };
    let again_null: Vec<(String, f64)> = ids
        .iter()
        .skip(every / 2)
        .step_by(every)
        .take(scores)
        .map(|id| (id.clone(), 0.25))
        .collect();
    let whole_null = whole(&|s| s.update_qualities(&again_null).unwrap());
    let whole_replace = whole(&|s| s.update_qualities(&chosen).unwrap());
    let whole_log = whole(&|s| {
        let new: Vec<NewUsage> = (0..chosen.len())
            .map(|i| NewUsage {
                timestamp: Some(start + span - Duration::milliseconds(i as i64)),
                quality_score: Some(0.5),
                ..NewUsage::new(format!("newer {i}"), "a response", "m0")
            })
            .collect();
        s.log_batch(new).unwrap();
    });
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / chosen.len() as f64;
    println!(
        "{} scores on a {records}-record log: from NULL {:.1} ms ({:.1} us each), replacing {:.1} ms ({:.1} us each); log_batch of as many records {:.1} ms ({:.1} us each)",
        chosen.len(),
        from_null.as_secs_f64() * 1e3,
        per(from_null),
        replace.as_secs_f64() * 1e3,
        per(replace),
        logged.as_secs_f64() * 1e3,
        per(logged),
    );
    println!(
        "  opened afresh, write and close: from NULL {:.1} ms ({:.1} us each), replacing {:.1} ms ({:.1} us each); log_batch {:.1} ms ({:.1} us each)",
        whole_null.as_secs_f64() * 1e3,
        per(whole_null),
        whole_replace.as_secs_f64() * 1e3,
        per(whole_replace),
        whole_log.as_secs_f64() * 1e3,
        per(whole_log),
    );
}
