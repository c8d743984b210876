//! Quick probe of single-record logging speed (`cargo run --release -p afs-store --example log_rate`).

use std::sync::Arc;
use std::time::Instant;

use afs_store::{NewUsage, SystemClock, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        SqliteConfig::new(dir.path().join("p.db")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let text = "lorem ipsum dolor sit amet ".repeat(48);
    let n = 20_000;
    // Threads logging at once: the first argument, default 1.
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let records: Vec<Vec<NewUsage>> = (0..threads)
        .map(|t| {
            (0..n / threads)
                .map(|i| {
                    let mut r = NewUsage::new(
                        format!("{t} {i} {}", &text[..300]),
                        format!("{i} {text}"),
                        "m1",
                    );
                    r.quality_score = Some(0.5);
                    r.unit_id = Some(format!("u{}", i % 1000));
                    r.latency_ms = Some(12.0);
                    r
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for share in records {
            let store = &store;
            scope.spawn(move || {
                for r in share {
                    store.log(r).unwrap();
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!("log ({threads} threads): {:.0} rec/s", n as f64 / secs);
    let wal = std::fs::metadata(dir.path().join("p.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("wal after single logs: {} KB", wal / 1024);
    let started = Instant::now();
    let batch: Vec<NewUsage> = (0..n)
        .map(|i| NewUsage {
            quality_score: Some(0.5),
            ..NewUsage::new(
                format!("b{i} {}", &text[..300]),
                format!("{i} {text}"),
                "m1",
            )
        })
        .collect();
    for chunk in batch.chunks(5000) {
        store.log_batch(chunk.to_vec()).unwrap();
    }
    println!(
        "batch: {:.0} rec/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
}
