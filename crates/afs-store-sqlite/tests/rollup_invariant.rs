//! The rollup invariant, as a property: after any sequence of log, feedback, quality
//! update, dedupe, prune and forget, with values anywhere in their accepted ranges (the
//! bounds included), every statistic the store reports equals a scan of the log, and every
//! deletion succeeds.

use std::collections::BTreeMap;
use std::sync::Arc;

use afs_store::{
    Feedback, FeedbackValue, ManualClock, NewUsage, RecordFilter, StatsWindow, UsageRecord,
    UsageStats, UsageStore, MAX_LATENCY_MS, MAX_TOKEN_COUNT,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 23, 0, 0).unwrap()
}

/// One step of a sequence. Indexes pick among the records logged so far (modulo).
#[derive(Debug, Clone)]
enum Op {
    /// Logs a record `minutes` after the start (the clock moves there if it is later).
    Log {
        minutes: u32,
        model: u8,
        unit: u8,
        latency: Option<f64>,
        tokens: Option<i64>,
        quality: Option<f64>,
        feedback: Option<i8>,
        text: u8,
    },
    Feedback {
        index: usize,
        value: i8,
    },
    Quality {
        index: usize,
        quality: f64,
    },
    Qualities {
        first: usize,
        quality: f64,
    },
    Dedupe,
    Prune {
        minutes: u32,
    },
    Forget {
        unit: u8,
    },
}

fn latency() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(0.0)),
        Just(Some(MAX_LATENCY_MS)),
        (0.0..=MAX_LATENCY_MS).prop_map(Some),
        (0.0..2_000.0f64).prop_map(Some),
    ]
}

fn tokens() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(MAX_TOKEN_COUNT)),
        (0..=MAX_TOKEN_COUNT).prop_map(Some),
    ]
}

fn quality() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            0..3_000u32,
            0..3u8,
            0..5u8,
            latency(),
            tokens(),
            proptest::option::of(quality()),
            proptest::option::of(-1..=1i8),
            0..4u8,
        )
            .prop_map(|(minutes, model, unit, latency, tokens, quality, feedback, text)| {
                Op::Log { minutes, model, unit, latency, tokens, quality, feedback, text }
            }),
        2 => (any::<usize>(), -1..=1i8).prop_map(|(index, value)| Op::Feedback { index, value }),
        2 => (any::<usize>(), quality()).prop_map(|(index, quality)| Op::Quality { index, quality }),
        1 => (any::<usize>(), quality()).prop_map(|(first, quality)| Op::Qualities { first, quality }),
        1 => Just(Op::Dedupe),
        1 => (0..3_000u32).prop_map(|minutes| Op::Prune { minutes }),
        1 => (0..5u8).prop_map(|unit| Op::Forget { unit }),
    ]
}

fn feedback_value(v: i8) -> FeedbackValue {
    FeedbackValue::from_i64(i64::from(v)).unwrap()
}

/// The statistics of `records` by definition: a scan.
fn scan<'a>(records: impl Iterator<Item = &'a UsageRecord>) -> UsageStats {
    UsageStats::of_records(records)
}

/// Float sums agree to rounding: relative to the largest magnitude summed (`scale`).
fn close(got: f64, want: f64, scale: f64) -> bool {
    got.is_finite() && (got - want).abs() <= 1e-9 * scale.max(1.0)
}

fn assert_same(got: &UsageStats, want: &UsageStats, context: &str) {
    // Everything but the float sums, which are compared below.
    let counts = |s: &UsageStats| UsageStats {
        sum_quality: 0.0,
        sum_quality_sq: 0.0,
        sum_latency_ms: 0.0,
        sum_latency_ms_sq: 0.0,
        ..*s
    };
    assert_eq!(
        counts(got),
        counts(want),
        "{context}: counts and token sums"
    );
    let lat_scale = want.n_latency as f64 * MAX_LATENCY_MS;
    for (name, g, w, scale) in [
        (
            "sum_quality",
            got.sum_quality,
            want.sum_quality,
            want.n_quality as f64,
        ),
        (
            "sum_quality_sq",
            got.sum_quality_sq,
            want.sum_quality_sq,
            want.n_quality as f64,
        ),
        (
            "sum_latency_ms",
            got.sum_latency_ms,
            want.sum_latency_ms,
            lat_scale,
        ),
        (
            "sum_latency_ms_sq",
            got.sum_latency_ms_sq,
            want.sum_latency_ms_sq,
            lat_scale * MAX_LATENCY_MS,
        ),
    ] {
        assert!(close(g, w, scale), "{context}: {name} {g} != scan {w}");
    }
}

fn all_records(store: &SqliteStore) -> Vec<UsageRecord> {
    store
        .query(&RecordFilter::default())
        .unwrap()
        .collect::<afs_store::Result<Vec<_>>>()
        .unwrap()
}

fn check_invariant(store: &SqliteStore, now: DateTime<Utc>) {
    let records = all_records(store);
    let starts = [
        None,
        Some(start()),
        Some(start() + Duration::minutes(61)),
        Some(start() + Duration::seconds(90 * 60 + 17)),
        Some(now - Duration::hours(24)),
        Some(now - Duration::seconds(30)),
    ];
    // Ends: none, now (after the newest record, or at it), before it, and in a minute.
    let ends = [
        None,
        Some(now),
        Some(now + Duration::seconds(1)),
        Some(now - Duration::seconds(3)),
        Some(start() + Duration::minutes(45)),
    ];
    for (since, until) in starts
        .iter()
        .flat_map(|s| ends.iter().map(move |u| (*s, *u)))
    {
        let in_window = |r: &&UsageRecord| {
            since.is_none_or(|s| r.timestamp >= s) && until.is_none_or(|u| r.timestamp < u)
        };
        let window = StatsWindow {
            since,
            until,
            ..StatsWindow::default()
        };
        let context = format!("since {since:?} until {until:?}");
        assert_same(
            &store.stats(&window).unwrap(),
            &scan(records.iter().filter(in_window)),
            &context,
        );
        let mut want: BTreeMap<String, Vec<&UsageRecord>> = BTreeMap::new();
        for r in records.iter().filter(in_window) {
            want.entry(r.model.clone()).or_default().push(r);
        }
        let got = store.stats_by_model(&window).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{context}: models"
        );
        for (model, rs) in &want {
            assert_same(
                &got[model],
                &scan(rs.iter().copied()),
                &format!("{context}, model {model}"),
            );
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone()).unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut now = start();
    for op in ops {
        match op {
            Op::Log {
                minutes,
                model,
                unit,
                latency,
                tokens,
                quality,
                feedback,
                text,
            } => {
                let at = start() + Duration::minutes(i64::from(minutes)) + Duration::seconds(7);
                if at > now {
                    now = at;
                    clock.set(now);
                }
                let record = NewUsage {
                    latency_ms: latency,
                    token_count: tokens,
                    quality_score: quality,
                    unit_id: Some(format!("user-{unit}")),
                    timestamp: Some(at),
                    feedback: feedback.map(|v| Feedback {
                        value: feedback_value(v),
                        text: None,
                        at: None,
                    }),
                    ..NewUsage::new(format!("q{text}"), "r", format!("model-{model}"))
                };
                ids.push(store.log(record).unwrap());
            }
            Op::Feedback { index, value } if !ids.is_empty() => {
                let id = &ids[index % ids.len()];
                // The record may have been deleted since; then NotFound is right.
                let _ = store.record_feedback(id, feedback_value(value), None);
            }
            Op::Quality { index, quality } if !ids.is_empty() => {
                let _ = store.update_quality(&ids[index % ids.len()], quality);
            }
            Op::Qualities { first, quality } if !ids.is_empty() => {
                let live: Vec<String> = all_records(&store).into_iter().map(|r| r.id).collect();
                let scores: Vec<(String, f64)> = live
                    .iter()
                    .skip(first % live.len().max(1))
                    .take(3)
                    .map(|id| (id.clone(), quality))
                    .collect();
                store.update_qualities(&scores).unwrap();
            }
            Op::Dedupe => {
                store.dedupe(false).unwrap();
            }
            Op::Prune { minutes } => {
                let cutoff = start() + Duration::minutes(i64::from(minutes));
                store.prune(cutoff, None).unwrap();
            }
            Op::Forget { unit } => {
                store.forget_unit(&format!("user-{unit}")).unwrap();
            }
            _ => {}
        }
        check_invariant(&store, now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_statistic_equals_a_scan_after_any_sequence(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

/// The defect this guards against: values at the top of their ranges made the sums
/// overflow, after which deleting a record failed on every try.
#[test]
fn records_at_the_bounds_can_always_be_forgotten() {
    let ops = (0..6)
        .map(|i| Op::Log {
            minutes: i,
            model: 0,
            unit: (i % 2) as u8,
            latency: Some(MAX_LATENCY_MS),
            tokens: Some(MAX_TOKEN_COUNT),
            quality: Some(1.0),
            feedback: Some(1),
            text: 0,
        })
        .chain([
            Op::Forget { unit: 0 },
            Op::Dedupe,
            Op::Prune { minutes: 100 },
        ])
        .collect();
    run(ops);
}

/// Another program (the Python module) writes rows afs never validated. A latency of 1e300
/// makes the rollups' sum of squares infinite; deleting that row subtracted infinity from
/// infinity, which SQLite stores as NULL, and every `forget`, `prune` and `dedupe` after it
/// failed. Deletion now recomputes the buckets it touched from the rows that remain.
#[test]
fn deleting_a_row_whose_values_overflowed_the_sums_succeeds_and_leaves_exact_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let store = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
    let keep = NewUsage {
        latency_ms: Some(120.0),
        token_count: Some(7),
        unit_id: Some("keep".into()),
        timestamp: Some(start()),
        ..NewUsage::new("q", "r", "m")
    };
    store.log(keep.clone()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (i, unit) in ["huge", "huge", "other"].iter().enumerate() {
        conn.execute(
            "INSERT INTO usage (id, timestamp, query, response, model, latency_ms, token_count,
                                unit_id, created_at)
             VALUES (?1, ?2, ?3, 'r', 'm', 1e300, 9223372036854775807, ?4, ?2)",
            rusqlite::params![
                format!("py{i}"),
                (start() + Duration::seconds(5)).to_rfc3339(),
                format!("py {i}"),
                unit
            ],
        )
        .unwrap();
    }
    // The huge rows' pending contributions are folded into the rollup tables, then a
    // feedback on one of them moves +inf and -inf through a pending row.
    store
        .log(NewUsage {
            timestamp: Some(start() + Duration::hours(2)),
            ..keep.clone()
        })
        .unwrap();
    clock.set(start() + Duration::hours(3));
    store.forget_unit("huge").unwrap();
    store.dedupe(false).unwrap();
    store.prune(start() + Duration::seconds(1), None).unwrap();
    store.forget_unit("other").unwrap();
    let records = all_records(&store);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_same(
        &store.stats(&StatsWindow::default()).unwrap(),
        &scan(records.iter()),
        "after deleting every out-of-range row",
    );
}
