//! What per-unit experiment statistics cost (schema v7):
//! `cargo run --release -p afs-store --example unit_stats_cost [records] [units]`.
//!
//! Builds a log with 200k records of history and `records` (default 1M) records of a running
//! experiment over `units` (default 100k) sticky units, a tenth of them in both arms and 5%
//! without a unit id, records covariates, then times `unit_stats` (with and without a
//! maturity cut an hour before the end) and single-record logging from 1 and 4 threads while
//! the experiment runs (and, for comparison, of a model outside it).

use std::sync::Arc;
use std::time::Instant;

use afs_store::{
    EventNote, ExperimentStore, Feedback, FeedbackValue, ManualClock, NewModelVersion, NewUsage,
    UsageStore,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn record(i: u64, units: u64, model: &str, at: DateTime<Utc>) -> NewUsage {
    let mut r = NewUsage::new(format!("query {i}"), "a response of some length", model);
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    if h % 20 != 0 {
        r.unit_id = Some(format!("user-{:06}", h % units));
    }
    r.quality_score = Some((h % 1000) as f64 / 1000.0);
    r.latency_ms = Some(20.0 + (h % 500) as f64);
    if h % 10 < 3 {
        r.feedback = Some(Feedback {
            value: if h % 7 < 5 {
                FeedbackValue::Positive
            } else {
                FeedbackValue::Negative
            },
            text: None,
            at: None,
        });
    }
    r.timestamp = Some(at);
    r
}

/// The arm of unit-hash `h`: sticky, with a tenth of the units in both.
fn model_of(i: u64, units: u64) -> &'static str {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let unit = h % units;
    if unit % 10 == 0 {
        if i % 2 == 0 {
            "v1"
        } else {
            "v2"
        }
    } else if unit % 2 == 0 {
        "v1"
    } else {
        "v2"
    }
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn log_rate(
    store: &SqliteStore,
    threads: u64,
    n: u64,
    units: u64,
    model: Option<&str>,
    from: DateTime<Utc>,
) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for k in 0..n / threads {
                    let i = 10_000_000 + t * n + k;
                    let at = from + Duration::microseconds((k * threads + t) as i64 * 10);
                    let m = model.unwrap_or_else(|| model_of(i, units));
                    store.log(record(i, units, m, at)).expect("log");
                }
            });
        }
    });
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n_records: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let units: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("u.db")), clock.clone()).expect("open");
    store
        .set_champion(&NewModelVersion::new("v1", "/m/v1"), &EventNote::default())
        .expect("champion");

    let started = Instant::now();
    let history = 200_000u64;
    for chunk in (0..history).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|&i| record(i, units, "v0", t0 + Duration::milliseconds(i as i64 * 10)))
            .collect();
        store.log_batch(batch).expect("history");
    }
    clock.set(t0 + Duration::hours(1));
    let experiment = store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.5,
            1,
            &EventNote::default(),
        )
        .expect("deploy");
    let start = experiment.started_at;
    let mut last = start;
    for chunk in (0..n_records).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                last = start + Duration::milliseconds(i as i64 * 10);
                record(history + i, units, model_of(history + i, units), last)
            })
            .collect();
        store.log_batch(batch).expect("experiment records");
    }
    clock.set(last + Duration::seconds(1));
    let covariates = store
        .record_unit_covariates(experiment.id, t0)
        .expect("covariates");
    println!(
        "built: {history} history + {n_records} experiment records, {covariates} units with covariates, in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let stats = store.unit_stats(experiment.id, None).expect("unit_stats");
    let total_units: u64 = stats.iter().map(|c| c.units).sum();
    let moved: u64 = stats.iter().map(|c| c.units - c.assigned).sum();
    println!(
        "cohorts {}, units {total_units} ({moved} moved), records {}",
        stats.len(),
        stats.iter().map(|c| c.records).sum::<u64>()
    );
    // Records are 10 ms apart: an hour holds 360k records, 108k of them with feedback.
    for (label, cut) in [
        ("no cut", None),
        (
            "cut 1 min before the end",
            Some(last - Duration::minutes(1)),
        ),
        ("cut 1 h before the end", Some(last - Duration::hours(1))),
    ] {
        let times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                store.unit_stats(experiment.id, cut).expect("unit_stats");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!(
            "unit_stats ({label}): median {:.2} ms, max {:.2} ms over 20 calls",
            median(times.clone()),
            times.iter().copied().fold(0.0, f64::max)
        );
    }

    let from = last + Duration::seconds(2);
    for threads in [1, 4] {
        let rate = log_rate(
            &store,
            threads,
            20_000,
            units,
            None,
            from + Duration::hours(threads as i64),
        );
        println!("log, experiment models ({threads} threads): {rate:.0} records/s");
        let rate = log_rate(
            &store,
            threads,
            20_000,
            units,
            Some("other"),
            from + Duration::hours(10 + threads as i64),
        );
        println!("log, a model outside the experiment ({threads} threads): {rate:.0} records/s");
    }
}
