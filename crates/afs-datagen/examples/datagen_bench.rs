//! Throughput and memory of `generate` on a synthetic log (for `cargo xtask bench`).
//!
//! ```text
//! cargo run --release -p afs-datagen --example datagen_bench -- fill  DB N
//! cargo run --release -p afs-datagen --example datagen_bench -- run   DB OUT [--near] [--no-redact]
//!     [--no-write-back] [--format F] [--repeat N]
//! ```
//!
//! `fill` logs N synthetic records (about 600 bytes each: 80% with feedback, 1 in 10 an
//! exact duplicate, 1 in 20 carrying personal data) into a new store. `run` generates a
//! training file from it with the default config (exact dedupe, redaction) and prints one
//! JSON line: records, seconds, samples written, and the peak RSS of this process
//! (`VmHWM`), which the fill does not inflate because it runs in another process.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use afs_datagen::{generate, Format, GeneratorConfig, HeuristicScorer, NearDedupeConfig};
use afs_store::{Feedback, FeedbackValue, NewUsage, SystemClock, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{Duration, TimeZone, Utc};

const WORDS: [&str; 48] = [
    "memory",
    "cache",
    "thread",
    "socket",
    "buffer",
    "parser",
    "token",
    "vector",
    "matrix",
    "kernel",
    "driver",
    "compiler",
    "register",
    "pointer",
    "stack",
    "queue",
    "latency",
    "throughput",
    "index",
    "query",
    "schema",
    "column",
    "shard",
    "replica",
    "leader",
    "follower",
    "commit",
    "rollback",
    "snapshot",
    "segment",
    "page",
    "block",
    "inode",
    "mutex",
    "channel",
    "future",
    "stream",
    "batch",
    "window",
    "gradient",
    "tensor",
    "layer",
    "weight",
    "bias",
    "epoch",
    "loss",
    "optimizer",
    "the",
];

/// A small deterministic generator so the synthetic log is the same on every machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn sentence(&mut self, words: usize) -> String {
        let mut s = String::with_capacity(words * 8);
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
        }
        s
    }
}

fn fill(db: &Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    if db.exists() {
        return Err(format!("{} exists; fill writes a new store", db.display()).into());
    }
    let store = SqliteStore::open(SqliteConfig::new(db), Arc::new(SystemClock))?;
    let mut rng = Lcg(42);
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut previous: Option<(String, String)> = None;
    let t0 = Instant::now();
    let mut i = 0u64;
    while i < n {
        let chunk = (n - i).min(10_000);
        let mut batch = Vec::with_capacity(chunk as usize);
        for _ in 0..chunk {
            let (query, mut response) = match (&previous, rng.next() % 10) {
                (Some((q, r)), 0) => (q.clone(), r.clone()),
                _ => {
                    let query_words = 8 + (rng.next() % 12) as usize;
                    let query = format!("How does the {} work?", rng.sentence(query_words));
                    let response_words = 60 + (rng.next() % 40) as usize;
                    (query, rng.sentence(response_words))
                }
            };
            if rng.next() % 20 == 0 {
                response.push_str(" Contact ops@example.com or 555-123-4567 from 10.0.0.1.");
            }
            let feedback = match rng.next() % 10 {
                0..=6 => Some(FeedbackValue::Positive),
                7 => Some(FeedbackValue::Negative),
                _ => None,
            };
            previous = Some((query.clone(), response.clone()));
            batch.push(NewUsage {
                quality_score: Some(0.5 + (rng.next() % 500) as f64 / 1000.0),
                timestamp: Some(start + Duration::seconds(i as i64)),
                feedback: feedback.map(|value| Feedback {
                    value,
                    text: None,
                    at: None,
                }),
                ..NewUsage::new(
                    query,
                    response,
                    if rng.next() % 2 == 0 { "m1" } else { "m2" },
                )
            });
            i += 1;
        }
        store.log_batch(batch)?;
    }
    eprintln!("filled {n} records in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run(db: &Path, out: &Path, flags: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::open(SqliteConfig::new(db), Arc::new(SystemClock))?;
    let mut config = GeneratorConfig::default();
    let mut repeat = 1usize;
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        match flag.as_str() {
            "--near" => config.near_dedupe = Some(NearDedupeConfig::default()),
            "--no-redact" => config.redact = false,
            "--no-write-back" => config.write_back_scores = false,
            "--repeat" => repeat = flags.next().ok_or("--repeat needs a value")?.parse()?,
            "--format" => {
                config.format = flags
                    .next()
                    .ok_or("--format needs a value")?
                    .parse::<Format>()?
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let records = store.stats(&Default::default())?.total;
    let mut times = Vec::with_capacity(repeat);
    let mut result = None;
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        result = Some(generate(&store, &config, out, &HeuristicScorer, None)?);
        times.push(t0.elapsed().as_secs_f64());
        // As in `cargo xtask bench`: each run writes a new file, not one over the last run's
        // (renaming over a 14 MB file frees its pages, ~5 ms, inside the timed rename).
        if repeat > 1 {
            let _ = std::fs::remove_file(out);
            let _ = std::fs::remove_file(afs_datagen::manifest_path(out));
        }
    }
    let result = result.expect("at least one run");
    let in_order = times.clone();
    times.sort_by(f64::total_cmp);
    // The median run when repeated (the lower middle one for an even count).
    let seconds = times[(times.len() - 1) / 2];
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "seconds": seconds,
            "runs": times.len(),
            "each_seconds": in_order,
            "records_per_second": records as f64 / seconds,
            "final_count": result.final_count,
            "duplicates_removed": result.duplicates_removed,
            "near_duplicates_removed": result.near_duplicates_removed,
            "redactions": result.redactions.total(),
            "peak_rss_kib": peak_rss_kib(),
        })
    );
    Ok(())
}

/// Only streams the records (the store's share of a run).
fn scan(db: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::open(SqliteConfig::new(db), Arc::new(SystemClock))?;
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    for record in store.query(&Default::default())? {
        let record = record?;
        n += 1;
        bytes += record.query.len() + record.response.len();
    }
    let seconds = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"records": n, "text_bytes": bytes, "seconds": seconds, "peak_rss_kib": peak_rss_kib()})
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fill") if args.len() == 3 => fill(Path::new(&args[1]), args[2].parse()?),
        Some("scan") if args.len() == 2 => scan(Path::new(&args[1])),
        Some("run") if args.len() >= 3 => run(Path::new(&args[1]), Path::new(&args[2]), &args[3..]),
        _ => Err(
            "usage: datagen_bench fill DB N | run DB OUT [--near] [--no-redact] [--no-write-back] [--format F] [--repeat N]"
                .into(),
        ),
    }
}
