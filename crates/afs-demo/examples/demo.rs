//! Runs the demo on a SQLite database and prints its timeline:
//! `cargo run --release -p afs-demo --example demo -- [SEED] [DAYS] [REQUESTS_PER_HOUR]`.

use std::sync::Arc;
use std::time::Instant;

use afs_demo::DemoConfig;
use afs_store::SystemClock;
use afs_store_sqlite::{SqliteConfig, SqliteStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(42);
    let days = args.next().map(|s| s.parse()).transpose()?.unwrap_or(28);
    let defaults = DemoConfig::default();
    let requests_per_hour = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(defaults.requests_per_hour);
    let dir = tempfile::tempdir()?;
    let config = DemoConfig {
        db_path: dir.path().join("afs-demo.db"),
        output_dir: dir.path().join("output"),
        seed,
        days,
        requests_per_hour,
        ..defaults
    };
    let started = Instant::now();
    let summary = afs_demo::run(
        &config,
        |clock| SqliteStore::open(SqliteConfig::new(&config.db_path), clock),
        &mut |event| println!("{event}"),
    )?;
    println!();
    for line in summary.lines() {
        println!("{line}");
    }
    println!("ran in {:.2} s", started.elapsed().as_secs_f64());

    // What `afs status` shows on the database the demo left.
    let store = SqliteStore::open(SqliteConfig::new(&config.db_path), Arc::new(SystemClock))?;
    println!();
    for line in afs_loop::status_summary(&store)?.lines() {
        println!("{line}");
    }
    Ok(())
}
