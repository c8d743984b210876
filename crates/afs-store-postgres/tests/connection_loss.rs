//! A server that drops afs's connections (a restart, a failover, an administrator's
//! `pg_terminate_backend`): the store carries on where that is safe, on new connections.

use std::sync::Arc;

use afs_store::{FeedbackValue, NewUsage, StatsWindow, SystemClock, UsageStore};
use afs_store_postgres::testing::{cluster_url, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore};
use postgres::NoTls;

/// Ends every session on the database but the caller's; returns how many.
fn drop_connections(url: &str) -> i64 {
    let mut admin = postgres::Client::connect(url, NoTls).unwrap();
    let ended: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
            &[],
        )
        .unwrap()
        .get(0);
    // The server ends them asynchronously; wait until they are gone.
    for _ in 0..200 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ended
}

#[test]
fn every_kind_of_call_works_again_after_the_server_dropped_the_pool() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = PgStore::open(PgConfig::new(&database.url), Arc::new(SystemClock)).unwrap();
    // Fill the pools: a log, a batch, a read, feedback.
    let id = store.log(NewUsage::new("q", "r", "m")).unwrap();
    store
        .log_batch(vec![NewUsage::new("q2", "r2", "m")])
        .unwrap();
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 2);

    assert!(
        drop_connections(&database.url) > 0,
        "the pool held connections"
    );
    // Each call after the loss finds a dead pooled connection, which the pool replaces
    // (or the transaction tries again on a new one).
    store
        .log_batch(vec![NewUsage::new("q3", "r3", "m")])
        .unwrap();
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 3);
    store
        .record_feedback(&id, FeedbackValue::Positive, None)
        .unwrap();
    store.log(NewUsage::new("q4", "r4", "m")).unwrap();
    let stats = store.stats(&StatsWindow::default()).unwrap();
    assert_eq!((stats.total, stats.positive_feedback), (4, 1));

    // Twice more, between calls of each kind.
    for round in 0..2 {
        drop_connections(&database.url);
        store
            .log(NewUsage::new(format!("again {round}"), "r", "m"))
            .unwrap();
        drop_connections(&database.url);
        store.get(&id).unwrap();
    }
    assert_eq!(store.stats(&StatsWindow::default()).unwrap().total, 6);
}
