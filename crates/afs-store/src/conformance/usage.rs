//! The `UsageStore` checks: logging and reading back, input checks, batches, feedback and
//! quality updates, queries (filters, order, limits, paging through crowded instants),
//! statistics against a scan of the log, dedupe, prune, forget and many threads logging.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng};

use super::{all_records, fresh, record, utc, Check, Factory, Fixture, TestStore};
use crate::{
    ErrorKind, Feedback, FeedbackFilter, FeedbackValue, Message, NewUsage, Order, Paging,
    RecordFields, RecordFilter, Role, StatsWindow, StoreError, UsageRecord, UsageStats,
};

/// The checks of this area.
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "usage::log_and_get_round_trip_every_field",
            log_and_get_round_trip_every_field,
        ),
        (
            "usage::ids_are_unique_and_sort_by_time",
            ids_are_unique_and_sort_by_time,
        ),
        (
            "usage::bad_input_is_refused_with_the_field_named",
            bad_input_is_refused_with_the_field_named,
        ),
        (
            "usage::a_batch_with_one_bad_record_writes_nothing",
            a_batch_with_one_bad_record_writes_nothing,
        ),
        (
            "usage::quality_scores_set_in_a_batch_are_all_or_nothing",
            quality_scores_set_in_a_batch_are_all_or_nothing,
        ),
        (
            "usage::feedback_replaces_and_aggregates_follow",
            feedback_replaces_and_aggregates_follow,
        ),
        (
            "usage::query_filters_order_and_limit",
            query_filters_order_and_limit,
        ),
        (
            "usage::windowed_statistics_equal_a_scan_of_the_log",
            windowed_statistics_equal_a_scan_of_the_log,
        ),
        (
            "usage::stats_by_hour_keys_are_hour_starts",
            stats_by_hour_keys_are_hour_starts,
        ),
        (
            "usage::dedupe_keeps_the_newest_of_each_pair",
            dedupe_keeps_the_newest_of_each_pair,
        ),
        (
            "usage::prune_archives_before_deleting",
            prune_archives_before_deleting,
        ),
        (
            "usage::forget_unit_removes_only_that_unit",
            forget_unit_removes_only_that_unit,
        ),
        (
            "usage::many_records_at_one_instant_are_all_kept_in_order",
            many_records_at_one_instant_are_all_kept_in_order,
        ),
        ("usage::clock_is_the_one_given", clock_is_the_one_given),
        (
            "usage::batches_spanning_days_and_late_records_keep_daily_totals_exact",
            batches_spanning_days_and_late_records_keep_daily_totals_exact,
        ),
        (
            "usage::feedback_queries_page_through_crowded_instants_exactly_once",
            feedback_queries_page_through_crowded_instants_exactly_once,
        ),
        (
            "usage::training_fields_read_only_what_training_needs",
            training_fields_read_only_what_training_needs,
        ),
        (
            "usage::conversations_round_trip_through_every_read",
            conversations_round_trip_through_every_read,
        ),
        (
            "usage::conversations_that_began_differently_are_not_duplicates",
            conversations_that_began_differently_are_not_duplicates,
        ),
        (
            "usage::bad_conversations_are_refused_with_the_turn_named",
            bad_conversations_are_refused_with_the_turn_named,
        ),
    ]
}

fn start() -> DateTime<Utc> {
    utc(2026, 3, 1, 10, 30, 0)
}

fn log_and_get_round_trip_every_field(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let feedback_time = start() + Duration::minutes(5);
    let new = NewUsage {
        expert: Some("asm".into()),
        latency_ms: Some(12.5),
        token_count: Some(42),
        quality_score: Some(0.85),
        unit_id: Some("user-7".into()),
        context_hash: Some("ctx".into()),
        timestamp: Some(start() - Duration::hours(2)),
        feedback: Some(Feedback {
            value: FeedbackValue::Positive,
            text: Some("great ✓ \"quoted\"".into()),
            at: Some(feedback_time),
        }),
        ..NewUsage::new("What is 65816? 日本語", "CPU for SNES", "nayru-v1")
    };
    let id = f.store.log(new.clone()).unwrap();
    assert_eq!(id.len(), 26);
    let got = f.store.get(&id).unwrap();
    assert_eq!(got.id, id);
    assert_eq!(got.query, new.query);
    assert_eq!(got.response, new.response);
    assert_eq!(got.model, "nayru-v1");
    assert_eq!(got.expert.as_deref(), Some("asm"));
    assert_eq!(got.latency_ms, Some(12.5));
    assert_eq!(got.token_count, Some(42));
    assert_eq!(got.quality_score, Some(0.85));
    assert_eq!(got.unit_id.as_deref(), Some("user-7"));
    assert_eq!(got.context_hash.as_deref(), Some("ctx"));
    assert_eq!(got.timestamp, start() - Duration::hours(2));
    assert_eq!(got.feedback, Some(FeedbackValue::Positive));
    assert_eq!(got.feedback_text.as_deref(), Some("great ✓ \"quoted\""));
    assert_eq!(got.feedback_at, Some(feedback_time));
    assert_eq!(got.created_at, Some(start()));
    assert_eq!(
        got.dedupe_hash,
        Some(crate::dedupe_hash(&new.query, &new.response))
    );
    assert_eq!(
        got.pair_key,
        Some(crate::key::pair_key(&new.query, &new.response))
    );

    // Without a timestamp the clock stamps the record.
    let id2 = f.store.log(record(1)).unwrap();
    assert_eq!(f.store.get(&id2).unwrap().timestamp, start());
}

fn ids_are_unique_and_sort_by_time(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(f.store.log(record(i)).unwrap());
        f.clock
            .advance(Duration::milliseconds(if i % 2 == 0 { 0 } else { 3 }));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
}

fn bad_input_is_refused_with_the_field_named(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let cases: Vec<(NewUsage, &str)> = vec![
        (
            NewUsage {
                quality_score: Some(f64::NAN),
                ..record(0)
            },
            "quality_score",
        ),
        (
            NewUsage {
                quality_score: Some(1.5),
                ..record(0)
            },
            "quality_score",
        ),
        (NewUsage::new("", "r", "m"), "query"),
        (NewUsage::new("q", "", "m"), "response"),
        (NewUsage::new("q", "r", ""), "model"),
        (
            NewUsage::new("x".repeat(1024 * 1024 + 1), "r", "m"),
            "query",
        ),
        (
            NewUsage {
                timestamp: Some(Utc.with_ymd_and_hms(1969, 12, 31, 23, 0, 0).unwrap()),
                ..record(0)
            },
            "timestamp",
        ),
        (
            NewUsage {
                timestamp: Some(Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap()),
                ..record(0)
            },
            "timestamp",
        ),
    ];
    for (bad, field) in cases {
        let err = f.store.log(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    let id = f.store.log(record(0)).unwrap();
    let err = f.store.update_quality(&id, f64::INFINITY).unwrap_err();
    assert!(err.to_string().contains("quality_score"));
    assert_eq!(
        f.store.update_quality("nope", 0.5).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        f.store
            .record_feedback("nope", FeedbackValue::Positive, None)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(f.store.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        f.store.stats(&StatsWindow::default()).unwrap().total,
        1,
        "nothing else was written"
    );
}

fn a_batch_with_one_bad_record_writes_nothing(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let mut batch: Vec<NewUsage> = (0..10).map(record).collect();
    batch[7].quality_score = Some(-0.1);
    let err = f.store.log_batch(batch.clone()).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidBatchRecord { index: 7, .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().total, 0);
    batch[7].quality_score = Some(0.1);
    let ids = f.store.log_batch(batch).unwrap();
    assert_eq!(ids.len(), 10);
    let got: Vec<String> = all_records(f.store.as_ref(), &RecordFilter::default())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, ids, "batch ids come back in input order");
}

fn quality_scores_set_in_a_batch_are_all_or_nothing(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let ids = f.store.log_batch((0..5).map(record).collect()).unwrap();
    let quality = |store: &dyn TestStore| -> Vec<Option<f64>> {
        ids.iter()
            .map(|id| store.get(id).unwrap().quality_score)
            .collect()
    };
    let scores = |values: &[f64]| -> Vec<(String, f64)> {
        ids.iter().cloned().zip(values.iter().copied()).collect()
    };

    // A bad score anywhere: nothing written, its position named.
    let err = f
        .store
        .update_qualities(&scores(&[0.1, 0.2, f64::NAN, 0.4]))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidBatchRecord { index: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("quality_score"), "{err}");
    assert_eq!(quality(f.store.as_ref()), vec![None; 5]);

    // An unknown id after valid ones: the earlier updates are rolled back.
    let mut batch = scores(&[0.1, 0.2]);
    batch.push(("nope".into(), 0.3));
    let err = f.store.update_qualities(&batch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(quality(f.store.as_ref()), vec![None; 5]);
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().n_quality, 0);

    // A good batch: every score set, the aggregates follow; an empty batch changes nothing.
    f.store.update_qualities(&scores(&[0.5, 1.0, 0.0])).unwrap();
    f.store.update_qualities(&[]).unwrap();
    assert_eq!(
        quality(f.store.as_ref()),
        vec![Some(0.5), Some(1.0), Some(0.0), None, None]
    );
    let s = f.store.stats(&StatsWindow::default()).unwrap();
    assert_eq!(s.n_quality, 3);
    assert!((s.sum_quality - 1.5).abs() < 1e-12);
}

fn feedback_replaces_and_aggregates_follow(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let id = f
        .store
        .log(NewUsage {
            quality_score: Some(0.5),
            ..record(0)
        })
        .unwrap();
    let stats = |s: &dyn TestStore| s.stats(&StatsWindow::default()).unwrap();
    assert_eq!(stats(f.store.as_ref()).with_feedback, 0);

    f.clock.advance(Duration::minutes(3));
    f.store
        .record_feedback(&id, FeedbackValue::Positive, Some("nice"))
        .unwrap();
    let s = stats(f.store.as_ref());
    assert_eq!(
        (s.with_feedback, s.positive_feedback, s.negative_feedback),
        (1, 1, 0)
    );
    let r = f.store.get(&id).unwrap();
    assert_eq!(r.feedback_at, Some(start() + Duration::minutes(3)));
    assert_eq!(r.feedback_text.as_deref(), Some("nice"));

    f.store
        .record_feedback(&id, FeedbackValue::Negative, None)
        .unwrap();
    let s = stats(f.store.as_ref());
    assert_eq!(
        (s.with_feedback, s.positive_feedback, s.negative_feedback),
        (1, 0, 1)
    );
    assert_eq!(f.store.get(&id).unwrap().feedback_text, None);

    f.store.update_quality(&id, 0.9).unwrap();
    let s = stats(f.store.as_ref());
    assert_eq!(s.n_quality, 1);
    assert!((s.sum_quality - 0.9).abs() < 1e-12);
}

fn query_filters_order_and_limit(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let mut expected_ids = Vec::new();
    for i in 0..300 {
        let new = NewUsage {
            model: if i % 3 == 0 { "a".into() } else { "b".into() },
            expert: (i % 5 == 0).then(|| "e".to_string()),
            quality_score: (i % 4 != 0).then_some((i % 10) as f64 / 10.0),
            unit_id: Some(format!("u{}", i % 7)),
            timestamp: Some(start() + Duration::minutes(i as i64)),
            ..record(i)
        };
        let id = f.store.log(new).unwrap();
        if i % 2 == 0 {
            f.store
                .record_feedback(
                    &id,
                    if i % 4 == 0 {
                        FeedbackValue::Negative
                    } else {
                        FeedbackValue::Positive
                    },
                    None,
                )
                .unwrap();
        }
        expected_ids.push(id);
    }
    let store = f.store.as_ref();
    let check = |filter: RecordFilter, pred: &dyn Fn(&UsageRecord) -> bool| {
        let got = all_records(store, &filter);
        let mut all = all_records(store, &RecordFilter::default());
        all.retain(|r| pred(r));
        if filter.order == Order::NewestFirst {
            all.reverse();
        }
        if let Some(limit) = filter.limit {
            all.truncate(limit as usize);
        }
        let got_ids: Vec<_> = got.iter().map(|r| &r.id).collect();
        let want_ids: Vec<_> = all.iter().map(|r| &r.id).collect();
        assert_eq!(got_ids, want_ids, "filter {filter:?}");
        assert!(
            !got.is_empty() || filter.limit == Some(0),
            "filter {filter:?} should match something"
        );
    };
    // The unfiltered stream crosses several pages and keeps time order.
    let everything = all_records(store, &RecordFilter::default());
    assert_eq!(
        everything.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        expected_ids
    );

    let t = start() + Duration::minutes(100);
    check(
        RecordFilter {
            since: Some(t),
            ..Default::default()
        },
        &|r| r.timestamp >= t,
    );
    check(
        RecordFilter {
            until: Some(t),
            ..Default::default()
        },
        &|r| r.timestamp < t,
    );
    check(
        RecordFilter {
            model: Some("a".into()),
            ..Default::default()
        },
        &|r| r.model == "a",
    );
    check(
        RecordFilter {
            expert: Some("e".into()),
            ..Default::default()
        },
        &|r| r.expert.as_deref() == Some("e"),
    );
    check(
        RecordFilter {
            unit_id: Some("u3".into()),
            ..Default::default()
        },
        &|r| r.unit_id.as_deref() == Some("u3"),
    );
    check(
        RecordFilter {
            min_quality: Some(0.7),
            ..Default::default()
        },
        &|r| r.quality_score.is_some_and(|q| q >= 0.7),
    );
    // Records without a score pass a quality condition only when asked to (a caller that
    // scores them itself); with feedback required, through the feedback index.
    check(
        RecordFilter {
            min_quality: Some(0.7),
            keep_unscored: true,
            ..Default::default()
        },
        &|r| r.quality_score.is_none_or(|q| q >= 0.7),
    );
    check(
        RecordFilter {
            min_quality: Some(0.7),
            keep_unscored: true,
            feedback: FeedbackFilter::Present,
            since: Some(start() + Duration::minutes(10)),
            ..Default::default()
        },
        &|r| {
            r.quality_score.is_none_or(|q| q >= 0.7)
                && r.feedback.is_some()
                && r.timestamp >= start() + Duration::minutes(10)
        },
    );
    check(
        RecordFilter {
            feedback: FeedbackFilter::Present,
            ..Default::default()
        },
        &|r| r.feedback.is_some(),
    );
    check(
        RecordFilter {
            feedback: FeedbackFilter::Absent,
            ..Default::default()
        },
        &|r| r.feedback.is_none(),
    );
    check(
        RecordFilter {
            feedback: FeedbackFilter::AtLeast(1),
            ..Default::default()
        },
        &|r| r.feedback == Some(FeedbackValue::Positive),
    );
    check(
        RecordFilter {
            min_quality: Some(0.5),
            feedback: FeedbackFilter::AtLeast(1),
            model: Some("b".into()),
            ..Default::default()
        },
        &|r| {
            r.quality_score.is_some_and(|q| q >= 0.5)
                && r.feedback == Some(FeedbackValue::Positive)
                && r.model == "b"
        },
    );
    check(
        RecordFilter {
            order: Order::NewestFirst,
            ..Default::default()
        },
        &|_| true,
    );
    check(
        RecordFilter {
            order: Order::NewestFirst,
            limit: Some(130),
            model: Some("b".into()),
            ..Default::default()
        },
        &|r| r.model == "b",
    );
    check(
        RecordFilter {
            limit: Some(65),
            ..Default::default()
        },
        &|_| true,
    );
    assert_eq!(
        all_records(
            store,
            &RecordFilter {
                limit: Some(0),
                ..Default::default()
            }
        )
        .len(),
        0
    );
}

/// Brute-force statistics of the records a filter selects, for checking the rollups.
pub(super) fn scan_stats(
    store: &dyn TestStore,
    window: &StatsWindow,
) -> BTreeMap<String, UsageStats> {
    let filter = RecordFilter {
        since: window.since,
        until: window.until,
        model: window.model.clone(),
        ..Default::default()
    };
    let mut out: BTreeMap<String, UsageStats> = BTreeMap::new();
    for r in all_records(store, &filter) {
        out.entry(r.model.clone()).or_default().add_record(&r);
    }
    out
}

pub(super) fn assert_stats_close(got: &UsageStats, want: &UsageStats, context: &str) {
    assert!(got.approx_eq(want, 1e-6), "{context}: {got:?} vs {want:?}");
}

/// Logs a random history across ~3 days and several models, with feedback, quality updates
/// and deletions, so rollups see every kind of write.
fn random_history(f: &Fixture, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for i in 0..600 {
        let new = NewUsage {
            model: ["m1", "m2", "m3"][rng.gen_range(0..3)].into(),
            quality_score: rng.gen_bool(0.8).then(|| rng.gen_range(0.0..=1.0)),
            latency_ms: rng.gen_bool(0.9).then(|| rng.gen_range(1.0..500.0)),
            token_count: rng.gen_bool(0.5).then(|| rng.gen_range(1..2000)),
            unit_id: Some(format!("u{}", rng.gen_range(0..20))),
            timestamp: Some(start() + Duration::seconds(rng.gen_range(0..3 * 86_400))),
            ..record(i)
        };
        ids.push(f.store.log(new).unwrap());
    }
    for id in &ids {
        match rng.gen_range(0..6) {
            0 => f
                .store
                .record_feedback(id, FeedbackValue::Positive, None)
                .unwrap(),
            1 => f
                .store
                .record_feedback(id, FeedbackValue::Negative, None)
                .unwrap(),
            2 => f
                .store
                .record_feedback(id, FeedbackValue::Neutral, None)
                .unwrap(),
            3 => f
                .store
                .update_quality(id, rng.gen_range(0.0..=1.0))
                .unwrap(),
            _ => {}
        }
    }
    f.store.forget_unit("u3").unwrap();
}

/// Every statistics call on each window equals a scan of the log.
fn assert_windows_match_scans(store: &dyn TestStore, windows: &[StatsWindow]) {
    for window in windows {
        let want = scan_stats(store, window);
        let got = store.stats_by_model(window).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{window:?}"
        );
        for (model, w) in &want {
            assert_stats_close(&got[model], w, &format!("{window:?} {model}"));
        }
        let mut want_total = UsageStats::default();
        want.values().for_each(|s| want_total.add(s));
        assert_stats_close(
            &store.stats(window).unwrap(),
            &want_total,
            &format!("{window:?} total"),
        );
        let by_hour = store.stats_by_hour(window).unwrap();
        let mut hour_total = UsageStats::default();
        by_hour.values().for_each(|s| hour_total.add(s));
        assert_stats_close(&hour_total, &want_total, &format!("{window:?} by hour"));
        assert_eq!(
            store
                .count_quality_samples(window.since, window.model.as_deref())
                .unwrap(),
            scan_stats(
                store,
                &StatsWindow {
                    until: None,
                    ..window.clone()
                }
            )
            .values()
            .map(|s| s.n_quality)
            .sum::<u64>()
        );
    }
}

fn windowed_statistics_equal_a_scan_of_the_log(factory: &dyn Factory) {
    let f = fresh(factory, start());
    random_history(&f, 7);
    let store = f.store.as_ref();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut windows = vec![StatsWindow::default()];
    for _ in 0..40 {
        let a = start() + Duration::seconds(rng.gen_range(-3600..4 * 86_400));
        let b = a + Duration::seconds(rng.gen_range(1..2 * 86_400));
        let model = rng.gen_bool(0.3).then(|| "m2".to_string());
        windows.push(StatsWindow {
            since: rng.gen_bool(0.9).then_some(a),
            until: rng.gen_bool(0.7).then_some(b),
            model,
        });
    }
    // Windows on exact hour boundaries and inside one hour.
    let hour = Utc.with_ymd_and_hms(2026, 3, 2, 4, 0, 0).unwrap();
    windows.push(StatsWindow {
        since: Some(hour),
        until: Some(hour + Duration::hours(5)),
        model: None,
    });
    windows.push(StatsWindow {
        since: Some(hour + Duration::minutes(10)),
        until: Some(hour + Duration::minutes(50)),
        model: None,
    });
    assert_windows_match_scans(store, &windows);
    // More changes with no bulk operation after them: records logged within one minute
    // (the SQLite store keeps their rollup contributions pending until the minute turns)
    // and feedback on old records. Statistics must include them at once.
    f.clock
        .set(start() + Duration::days(2) + Duration::seconds(17));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for i in 0..40 {
        let id = f
            .store
            .log(NewUsage {
                model: ["m1", "m2", "m4"][i % 3].into(),
                quality_score: Some(rng.gen_range(0.0..=1.0)),
                latency_ms: Some(10.0),
                ..record(1000 + i)
            })
            .unwrap();
        if i % 4 == 0 {
            f.store
                .record_feedback(&id, FeedbackValue::Positive, None)
                .unwrap();
        }
    }
    let old: Vec<UsageRecord> = all_records(store, &RecordFilter::default());
    for r in old.iter().step_by(7) {
        f.store
            .record_feedback(&r.id, FeedbackValue::Negative, Some("late"))
            .unwrap();
    }
    windows.push(StatsWindow {
        since: Some(start() + Duration::days(2)),
        until: Some(start() + Duration::days(2) + Duration::minutes(1)),
        model: None,
    });
    assert_windows_match_scans(store, &windows);
    // Rebuilding from the log gives the same figures as incremental maintenance.
    let before = store.stats_by_model(&StatsWindow::default()).unwrap();
    store.rebuild_rollups().unwrap();
    let after = store.stats_by_model(&StatsWindow::default()).unwrap();
    for (model, s) in &before {
        assert_stats_close(&after[model], s, model);
    }
}

fn stats_by_hour_keys_are_hour_starts(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    for minutes in [5, 50, 65, 190] {
        f.store
            .log(NewUsage {
                timestamp: Some(t0 + Duration::minutes(minutes)),
                ..record(minutes as usize)
            })
            .unwrap();
    }
    let by_hour = f.store.stats_by_hour(&StatsWindow::default()).unwrap();
    let got: Vec<(DateTime<Utc>, u64)> = by_hour.iter().map(|(k, v)| (*k, v.total)).collect();
    assert_eq!(
        got,
        vec![
            (t0, 2),
            (t0 + Duration::hours(1), 1),
            (t0 + Duration::hours(3), 1)
        ]
    );
}

fn dedupe_keeps_the_newest_of_each_pair(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let mut newest = Vec::new();
    for copy in 0..3 {
        for i in 0..4 {
            let id = f
                .store
                .log(NewUsage {
                    timestamp: Some(start() + Duration::minutes(copy * 10 + i as i64)),
                    ..record(i)
                })
                .unwrap();
            if copy == 2 {
                newest.push(id);
            }
        }
    }
    let unique = f.store.log(record(99)).unwrap();
    let dry = f.store.dedupe(true).unwrap();
    assert_eq!(
        (dry.duplicate_groups, dry.removed, dry.dry_run),
        (4, 8, true)
    );
    assert_eq!(
        f.store.stats(&StatsWindow::default()).unwrap().total,
        13,
        "dry run deletes nothing"
    );
    let real = f.store.dedupe(false).unwrap();
    assert_eq!(
        (real.duplicate_groups, real.removed, real.dry_run),
        (4, 8, false)
    );
    let mut left: Vec<String> = all_records(f.store.as_ref(), &RecordFilter::default())
        .into_iter()
        .map(|r| r.id)
        .collect();
    left.sort();
    let mut want = newest;
    want.push(unique);
    want.sort();
    assert_eq!(left, want);
    assert_eq!(f.store.dedupe(false).unwrap().removed, 0);
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().total, 5);
}

fn prune_archives_before_deleting(factory: &dyn Factory) {
    let f = fresh(factory, start());
    for i in 0..20 {
        f.store
            .log(NewUsage {
                timestamp: Some(start() - Duration::days(20 - i as i64)),
                ..record(i)
            })
            .unwrap();
    }
    let cutoff = start() - Duration::days(10);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("old.jsonl");
    let report = f.store.prune(cutoff, Some(&archive)).unwrap();
    assert_eq!((report.removed, report.archived), (10, 10));
    let text = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["query"], "query 0");
    assert!(lines
        .iter()
        .all(|l| l["timestamp"].as_str().unwrap() < "2026-02-19"));
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().total, 10);
    assert!(all_records(f.store.as_ref(), &RecordFilter::default())
        .iter()
        .all(|r| r.timestamp >= cutoff));

    // An archive path that already exists is refused and nothing is deleted.
    let err = f.store.prune(start(), Some(&archive)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("old.jsonl"), "{err}");
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().total, 10);
    assert_eq!(
        std::fs::read_to_string(&archive).unwrap(),
        text,
        "existing file untouched"
    );

    let report = f.store.prune(start(), None).unwrap();
    assert_eq!((report.removed, report.archived), (10, 0));
}

fn forget_unit_removes_only_that_unit(factory: &dyn Factory) {
    let f = fresh(factory, start());
    for i in 0..30 {
        f.store
            .log(NewUsage {
                unit_id: Some(format!("user-{}", i % 3)),
                quality_score: Some(0.5),
                ..record(i)
            })
            .unwrap();
    }
    assert_eq!(f.store.forget_unit("user-1").unwrap(), 10);
    assert_eq!(f.store.forget_unit("user-1").unwrap(), 0);
    let left = all_records(f.store.as_ref(), &RecordFilter::default());
    assert_eq!(left.len(), 20);
    assert!(left.iter().all(|r| r.unit_id.as_deref() != Some("user-1")));
    assert_eq!(
        f.store.stats(&StatsWindow::default()).unwrap().n_quality,
        20
    );
    assert_eq!(
        f.store.forget_unit("").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

fn many_records_at_one_instant_are_all_kept_in_order(factory: &dyn Factory) {
    // A frozen clock: 1,500 records carry the same timestamp, logged singly and in a batch.
    let f = fresh(factory, start());
    for i in 0..700 {
        f.store.log(record(i)).unwrap();
    }
    f.store
        .log_batch((700..1500).map(record).collect())
        .unwrap();
    let all = all_records(f.store.as_ref(), &RecordFilter::default());
    assert_eq!(all.len(), 1500);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.query, record(i).query, "record {i} out of order");
        assert!((r.timestamp - start()).num_milliseconds().abs() <= 1);
    }
    let newest = all_records(
        f.store.as_ref(),
        &RecordFilter {
            order: Order::NewestFirst,
            limit: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(newest[0].query, record(1499).query);
    let window = StatsWindow {
        since: Some(start() - Duration::seconds(1)),
        until: Some(start() + Duration::seconds(1)),
        model: None,
    };
    assert_eq!(f.store.stats(&window).unwrap().total, 1500);
}

fn clock_is_the_one_given(factory: &dyn Factory) {
    let f = fresh(factory, start());
    assert_eq!(f.store.clock().now(), start());
    f.clock.advance(Duration::days(1));
    assert_eq!(f.store.clock().now(), start() + Duration::days(1));
}

fn batches_spanning_days_and_late_records_keep_daily_totals_exact(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let day = Duration::days(1);
    let at = |d: i64, h: i64| start() + day * d as i32 + Duration::hours(h);
    // Day 0, then a batch spanning days 0-4, then late records for days 1 and 3, then day 6.
    f.store
        .log(NewUsage {
            timestamp: Some(at(0, 1)),
            quality_score: Some(0.5),
            ..record(0)
        })
        .unwrap();
    let batch: Vec<NewUsage> = (0..40)
        .map(|i| NewUsage {
            timestamp: Some(at(i / 8, i % 8)),
            quality_score: Some(0.25),
            ..record(100 + i as usize)
        })
        .collect();
    let ids = f.store.log_batch(batch).unwrap();
    f.store
        .log(NewUsage {
            timestamp: Some(at(1, 3)),
            latency_ms: Some(10.0),
            ..record(200)
        })
        .unwrap();
    f.store
        .log(NewUsage {
            timestamp: Some(at(3, 2)),
            token_count: Some(7),
            ..record(201)
        })
        .unwrap();
    f.store
        .log(NewUsage {
            timestamp: Some(at(6, 0)),
            ..record(202)
        })
        .unwrap();
    // Updates and deletes of old and recent rows.
    f.store
        .record_feedback(&ids[3], FeedbackValue::Positive, None)
        .unwrap();
    f.store.update_quality(&ids[30], 0.9).unwrap();
    f.store.prune(at(1, 0), None).unwrap();
    let store = f.store.as_ref();
    for window in [
        StatsWindow::default(),
        StatsWindow {
            since: Some(at(1, 2)),
            until: Some(at(5, 1)),
            model: None,
        },
        StatsWindow {
            since: Some(at(2, 0)),
            until: None,
            model: Some("m1".into()),
        },
        StatsWindow {
            since: None,
            until: Some(at(4, 0)),
            model: None,
        },
    ] {
        let want = scan_stats(store, &window);
        let got = store.stats_by_model(&window).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{window:?}"
        );
        for (model, w) in &want {
            assert_stats_close(&got[model], w, &format!("{window:?}"));
        }
    }
    let before = store.stats(&StatsWindow::default()).unwrap();
    store.rebuild_rollups().unwrap();
    assert_stats_close(
        &store.stats(&StatsWindow::default()).unwrap(),
        &before,
        "after rebuild",
    );
}

fn feedback_queries_page_through_crowded_instants_exactly_once(factory: &dyn Factory) {
    // Records with feedback are read through their index in pages that end only where the
    // time changes: instants holding more records than a page must be returned whole, once.
    let f = fresh(factory, start());
    let value_of = |i: usize| match i % 3 {
        0 => FeedbackValue::Positive,
        1 => FeedbackValue::Negative,
        _ => FeedbackValue::Neutral,
    };
    let mut want_up = Vec::new();
    let mut i = 0;
    for crowd in [1usize, 900, 3, 2500, 70, 1] {
        let batch: Vec<NewUsage> = (i..i + crowd)
            .map(|k| NewUsage {
                feedback: Some(Feedback {
                    value: value_of(k),
                    text: None,
                    at: None,
                }),
                ..record(k)
            })
            .collect();
        want_up.extend(
            (i..i + crowd)
                .filter(|k| k % 3 == 0)
                .map(|k| record(k).query),
        );
        f.store.log_batch(batch).unwrap();
        i += crowd;
        f.clock.advance(Duration::microseconds(1));
    }
    let queries = |filter: RecordFilter| -> Vec<String> {
        all_records(f.store.as_ref(), &filter)
            .into_iter()
            .map(|r| r.query)
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let up = RecordFilter {
        feedback: FeedbackFilter::AtLeast(1),
        ..Default::default()
    };
    // Oldest first is by time, then insertion order (`Order`), whatever the feedback values
    // of an instant's records.
    let oldest = queries(up.clone());
    assert_eq!(oldest, want_up);
    let mut newest = queries(RecordFilter {
        order: Order::NewestFirst,
        ..up.clone()
    });
    assert_eq!(sorted(newest.clone()), sorted(want_up.clone()));
    assert_eq!(
        newest.iter().rev().cloned().collect::<Vec<_>>(),
        want_up,
        "newest first is the reverse of oldest first"
    );
    // Newest first is the same order reversed, instant by instant.
    newest.reverse();
    let instant_of = |q: &String| q[6..].parse::<usize>().unwrap();
    let crowd_of = |k: usize| [1usize, 901, 904, 3404, 3474, 3475].partition_point(|&e| e <= k);
    assert_eq!(
        newest
            .iter()
            .map(|q| crowd_of(instant_of(q)))
            .collect::<Vec<_>>(),
        oldest
            .iter()
            .map(|q| crowd_of(instant_of(q)))
            .collect::<Vec<_>>()
    );
    // Limits that end inside a crowded instant stop exactly there.
    for limit in [1u64, 64, 300, 1000, want_up.len() as u64 - 1] {
        let got = queries(RecordFilter {
            limit: Some(limit),
            ..up.clone()
        });
        assert_eq!(got, oldest[..limit as usize], "limit {limit}");
    }
    // Any feedback: every record, once.
    let present = queries(RecordFilter {
        feedback: FeedbackFilter::Present,
        ..Default::default()
    });
    assert_eq!(present.len(), i);
    assert_eq!(present, (0..i).map(|k| record(k).query).collect::<Vec<_>>());
    // Bulk paging (pages of the largest size from the start, here ending inside the crowd
    // of 2,500) returns the same records in the same order, through the index or the table.
    let through_table = RecordFilter::default();
    for (name, filter, growing) in [
        ("up", up.clone(), oldest.clone()),
        (
            "present",
            RecordFilter {
                feedback: FeedbackFilter::Present,
                ..Default::default()
            },
            present.clone(),
        ),
        (
            "table",
            through_table.clone(),
            queries(through_table.clone()),
        ),
        (
            "table newest",
            RecordFilter {
                order: Order::NewestFirst,
                ..through_table
            },
            queries(RecordFilter {
                order: Order::NewestFirst,
                ..RecordFilter::default()
            }),
        ),
        (
            "present limit 2100",
            RecordFilter {
                limit: Some(2100),
                feedback: FeedbackFilter::Present,
                ..Default::default()
            },
            present[..2100].to_vec(),
        ),
    ] {
        let bulk = queries(RecordFilter {
            paging: Paging::Bulk,
            ..filter
        });
        assert_eq!(bulk, growing, "{name}");
    }
}

fn training_fields_read_only_what_training_needs(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let new = NewUsage {
        expert: Some("asm".into()),
        latency_ms: Some(12.5),
        token_count: Some(42),
        quality_score: Some(0.85),
        unit_id: Some("user-7".into()),
        context_hash: Some("ctx".into()),
        feedback: Some(Feedback {
            value: FeedbackValue::Positive,
            text: Some("great".into()),
            at: None,
        }),
        ..record(1)
    };
    f.store.log(new.clone()).unwrap();
    let filter = |fields| RecordFilter {
        fields,
        ..Default::default()
    };
    let all = all_records(f.store.as_ref(), &filter(RecordFields::All));
    let lean = all_records(f.store.as_ref(), &filter(RecordFields::Training));
    assert_eq!(all.len(), 1);
    assert_eq!(lean.len(), 1);
    let (all, lean) = (&all[0], &lean[0]);
    assert_eq!(
        *lean,
        UsageRecord {
            id: all.id.clone(),
            timestamp: all.timestamp,
            query: new.query.clone(),
            response: new.response.clone(),
            model: new.model.clone(),
            quality_score: Some(0.85),
            feedback: Some(FeedbackValue::Positive),
            pair_key: Some(crate::key::pair_key(&new.query, &new.response)),
            expert: None,
            latency_ms: None,
            token_count: None,
            feedback_text: None,
            feedback_at: None,
            unit_id: None,
            context_hash: None,
            dedupe_hash: None,
            created_at: None,
            messages: None,
        }
    );
    assert_eq!(all.expert.as_deref(), Some("asm"));
    assert_eq!(all.pair_key, lean.pair_key);
    // Through the feedback index too.
    let lean_fb = all_records(
        f.store.as_ref(),
        &RecordFilter {
            feedback: FeedbackFilter::AtLeast(1),
            ..filter(RecordFields::Training)
        },
    );
    assert_eq!(lean_fb, vec![lean.clone()]);
}

/// A conversation of `n_exchanges` user/assistant exchanges after a system prompt, whose
/// first user turn says `opening` and whose last exchange is the same for every opening.
fn conversation(opening: &str, n_exchanges: usize) -> Vec<Message> {
    let mut messages = vec![Message::new(Role::System, "You are terse. ✓")];
    for i in 0..n_exchanges {
        let user = if i == 0 {
            opening.to_owned()
        } else {
            format!("follow-up {i} \"quoted\"\nline")
        };
        messages.push(Message::new(Role::User, user));
        if i + 1 == n_exchanges {
            messages.push(Message::new(Role::Assistant, "calling a tool"));
            messages.push(Message::new(Role::Tool, "{\"result\": 42}"));
        }
        messages.push(Message::new(Role::Assistant, format!("answer {i}")));
    }
    messages
}

fn conversations_round_trip_through_every_read(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let one = NewUsage {
        quality_score: Some(0.9),
        feedback: Some(Feedback {
            value: FeedbackValue::Positive,
            text: None,
            at: None,
        }),
        ..NewUsage::conversation(conversation("hello 日本語", 3), "m1")
    };
    assert_eq!(one.query, "follow-up 2 \"quoted\"\nline");
    assert_eq!(one.response, "answer 2");
    let id = f.store.log(one.clone()).unwrap();
    let got = f.store.get(&id).unwrap();
    assert_eq!(got.messages, one.messages);
    assert_eq!(
        (got.query.as_str(), got.response.as_str()),
        ("follow-up 2 \"quoted\"\nline", "answer 2")
    );
    assert_eq!(got.dedupe_hash, Some(one.dedupe_hash()));
    assert_eq!(got.pair_key, Some(one.pair_key()));
    assert_ne!(
        got.pair_key,
        Some(crate::key::pair_key(&one.query, &one.response))
    );

    let batch = vec![
        NewUsage::conversation(conversation("batch a", 1), "m1"),
        record(1),
        NewUsage::conversation(conversation("batch b", 2), "m2"),
    ];
    let ids = f.store.log_batch(batch.clone()).unwrap();
    for (id, new) in ids.iter().zip(&batch) {
        let got = f.store.get(id).unwrap();
        assert_eq!(got.messages, new.messages, "record {id}");
        assert_eq!(got.query, new.query);
    }
    assert_eq!(f.store.get(&ids[1]).unwrap().messages, None);

    let mut want: Vec<Option<Vec<Message>>> = vec![one.messages.clone()];
    want.extend(batch.iter().map(|n| n.messages.clone()));
    for fields in [RecordFields::All, RecordFields::Training] {
        for paging in [Paging::Growing, Paging::Bulk] {
            let read: Vec<_> = all_records(
                f.store.as_ref(),
                &RecordFilter {
                    fields,
                    paging,
                    ..Default::default()
                },
            )
            .into_iter()
            .map(|r| r.messages)
            .collect();
            assert_eq!(read, want, "{fields:?} {paging:?}");
        }
    }
    // Through the feedback index, newest first, too.
    let liked = all_records(
        f.store.as_ref(),
        &RecordFilter {
            feedback: FeedbackFilter::AtLeast(1),
            order: Order::NewestFirst,
            fields: RecordFields::Training,
            ..Default::default()
        },
    );
    assert_eq!(liked.len(), 1);
    assert_eq!(liked[0].messages, one.messages);
}

fn conversations_that_began_differently_are_not_duplicates(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let a = NewUsage::conversation(conversation("opening a", 2), "m1");
    let b = NewUsage::conversation(conversation("opening b", 2), "m1");
    assert_eq!((&a.query, &a.response), (&b.query, &b.response));
    // The same last exchange logged alone, and a one-exchange conversation of it.
    let plain = NewUsage::new(a.query.clone(), a.response.clone(), "m1");
    let plain_as_turns = NewUsage::conversation(
        vec![
            Message::new(Role::User, a.query.clone()),
            Message::new(Role::Assistant, a.response.clone()),
        ],
        "m1",
    );
    for new in [&a, &b, &a, &plain, &plain_as_turns] {
        f.store.log(new.clone()).unwrap();
        f.clock.advance(Duration::seconds(1));
    }
    // `a` twice, and `plain` with its one-exchange twin (the newer, which is kept).
    let report = f.store.dedupe(false).unwrap();
    assert_eq!((report.duplicate_groups, report.removed), (2, 2));
    let left: Vec<_> = all_records(f.store.as_ref(), &RecordFilter::default())
        .into_iter()
        .map(|r| r.messages)
        .collect();
    assert_eq!(left, vec![b.messages, a.messages, plain_as_turns.messages]);
}

fn bad_conversations_are_refused_with_the_turn_named(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let mut out_of_order = conversation("hi", 2);
    out_of_order.swap(0, 1);
    let cases: Vec<(NewUsage, &str)> = vec![
        (
            NewUsage::conversation(out_of_order, "m1"),
            "messages[1].role is system",
        ),
        (
            NewUsage {
                messages: Some(conversation("hi", 1)),
                ..record(0)
            },
            "invalid query",
        ),
        (
            NewUsage::conversation(vec![Message::new(Role::User, "q")], "m1"),
            "end with an assistant turn",
        ),
    ];
    for (bad, want) in cases {
        let err = f.store.log(bad.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(want), "{err} should say {want}");
        let err = f.store.log_batch(vec![record(0), bad]).unwrap_err();
        assert!(err.to_string().contains(want), "{err} should say {want}");
    }
    assert_eq!(f.store.stats(&StatsWindow::default()).unwrap().total, 0);
}
