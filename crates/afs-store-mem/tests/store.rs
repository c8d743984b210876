//! `MemStore`'s own contracts: validation and atomicity, the clock, threads, retrain runs
//! and state, the experiment rules it gets from afs-store, and what a look costs.

use std::sync::Arc;
use std::time::Instant;

use afs_store::{
    ErrorKind, EventNote, ExperimentStore, Feedback, FeedbackValue, ManualClock, NewModelVersion,
    NewRun, NewUsage, RecordFilter, RunOutcome, RunStatus, RunStore, StatsWindow, StoreError,
    UsageStore,
};
use afs_store_mem::MemStore;
use chrono::{DateTime, Duration, TimeZone, Utc};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 10, 30, 0).unwrap()
}

fn store() -> (MemStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start()));
    (MemStore::new(clock.clone()), clock)
}

fn field(err: &StoreError) -> &'static str {
    match err {
        StoreError::InvalidInput { field, .. } => field,
        StoreError::InvalidBatchRecord { source, .. } => field(source),
        other => panic!("expected invalid input, got {other}"),
    }
}

#[test]
fn mem_store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MemStore>();
    let (s, _) = store();
    let _: &dyn UsageStore = &s;
    let _: &dyn RunStore = &s;
    let _: &dyn ExperimentStore = &s;
    assert!(s.files().is_empty());
}

#[test]
fn bad_input_is_refused_and_batches_are_all_or_nothing() {
    let (s, clock) = store();
    let err = s
        .log(NewUsage {
            quality_score: Some(1.5),
            ..NewUsage::new("q", "r", "m")
        })
        .unwrap_err();
    assert_eq!(field(&err), "quality_score");
    let small = MemStore::with_max_field_bytes(clock.clone(), 4);
    assert_eq!(
        field(&small.log(NewUsage::new("12345", "r", "m")).unwrap_err()),
        "query"
    );
    let batch = vec![NewUsage::new("q", "r", "m"), NewUsage::new("q", "", "m")];
    match s.log_batch(batch).unwrap_err() {
        StoreError::InvalidBatchRecord { index, source } => {
            assert_eq!((index, field(&source)), (1, "response"));
        }
        other => panic!("{other}"),
    }
    assert!(s.is_empty());
    let id = s.log(NewUsage::new("q", "r", "m")).unwrap();
    // One unknown id: no score is written.
    let err = s
        .update_qualities(&[(id.clone(), 0.5), ("nope".into(), 0.5)])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(s.get(&id).unwrap().quality_score, None);
    assert_eq!(
        field(&s.update_qualities(&[(id.clone(), f64::NAN)]).unwrap_err()),
        "quality_score"
    );
    assert_eq!(
        s.record_feedback("nope", FeedbackValue::Positive, None)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(field(&s.forget_unit("").unwrap_err()), "unit_id");
    assert_eq!(
        field(
            &s.query(&RecordFilter {
                min_quality: Some(f64::NAN),
                ..Default::default()
            })
            .err()
            .unwrap()
        ),
        "min_quality"
    );
    // A clock outside 1970..2199 cannot date a record; a record with its own time can.
    clock.set(Utc.with_ymd_and_hms(1960, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(
        field(&s.log(NewUsage::new("q", "r", "m")).unwrap_err()),
        "clock"
    );
    s.log(NewUsage {
        timestamp: Some(start()),
        ..NewUsage::new("q", "r", "m")
    })
    .unwrap();
}

#[test]
fn times_come_from_the_clock_to_the_microsecond() {
    let (s, clock) = store();
    clock.set(start() + Duration::nanoseconds(1_234_567));
    let id = s
        .log(NewUsage {
            feedback: Some(Feedback {
                value: FeedbackValue::Positive,
                text: None,
                at: None,
            }),
            ..NewUsage::new("q", "r", "m")
        })
        .unwrap();
    let r = s.get(&id).unwrap();
    let us = start() + Duration::microseconds(1234);
    assert_eq!(
        (r.timestamp, r.created_at, r.feedback_at),
        (us, Some(us), Some(us))
    );
    assert_eq!(id.len(), 26);
}

#[test]
fn many_threads_logging_lose_nothing() {
    let (s, _) = store();
    let s = Arc::new(s);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..500 {
                    let id = s
                        .log(NewUsage {
                            quality_score: Some(0.5),
                            unit_id: Some(format!("t{t}")),
                            ..NewUsage::new(format!("q{t} {i}"), "r", "m")
                        })
                        .unwrap();
                    if i % 3 == 0 {
                        s.record_feedback(&id, FeedbackValue::Positive, None)
                            .unwrap();
                    }
                    // Readers alongside writers.
                    if i % 50 == 0 {
                        s.stats(&StatsWindow::default()).unwrap();
                        s.query(&RecordFilter::default()).unwrap().take(10).count();
                    }
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4000);
    let stats = s.stats(&StatsWindow::default()).unwrap();
    assert_eq!(
        (stats.total, stats.n_quality, stats.positive_feedback),
        (4000, 4000, 8 * 167)
    );
    assert_eq!(s.query(&RecordFilter::default()).unwrap().count(), 4000);
}

#[test]
fn one_run_at_a_time_and_state() {
    let (s, clock) = store();
    let run = s
        .begin_run(NewRun {
            trigger_type: "manual".into(),
            trigger: "{}".into(),
            run_dir: "/tmp/r1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.owner_pid, std::process::id());
    let err = s.begin_run(NewRun::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Owned by this process, which holds the store: nothing to recover.
    assert!(s.recover_stale_runs().unwrap().is_empty());
    s.set_run_dataset(&run.id, "/tmp/r1/data.jsonl", "{}", 12)
        .unwrap();
    let outcome = RunOutcome {
        status: RunStatus::Completed,
        model_path: Some("/m".into()),
        metrics: None,
        error: None,
    };
    assert_eq!(
        field(
            &s.finish_run(
                &run.id,
                RunOutcome {
                    status: RunStatus::Running,
                    ..outcome.clone()
                }
            )
            .unwrap_err()
        ),
        "status"
    );
    clock.advance(Duration::minutes(5));
    let done = s.finish_run(&run.id, outcome.clone()).unwrap();
    assert_eq!(done.finished_at, Some(start() + Duration::minutes(5)));
    assert_eq!(done.n_samples, Some(12));
    assert_eq!(
        s.finish_run(&run.id, outcome).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        s.set_run_dataset(&run.id, "p", "{}", 1).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(s.run("nope").unwrap_err().kind(), ErrorKind::NotFound);
    let second = s.begin_run(NewRun::default()).unwrap();
    let runs = s.runs(10).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [second.id.as_str(), run.id.as_str()]
    );
    assert_eq!(
        s.last_run_with_status(RunStatus::Completed)
            .unwrap()
            .map(|r| r.id),
        Some(run.id)
    );
    assert_eq!(s.count_runs(RunStatus::Completed).unwrap(), 1);
    assert_eq!(s.count_runs(RunStatus::Running).unwrap(), 1);
    assert_eq!(s.count_runs(RunStatus::Failed).unwrap(), 0);
    assert_eq!(s.state("k").unwrap(), None);
    s.put_states(&[("k", "1"), ("j", "2")]).unwrap();
    assert_eq!(
        field(&s.put_states(&[("k", "3"), ("", "x")]).unwrap_err()),
        "key"
    );
    assert_eq!(s.state("k").unwrap().as_deref(), Some("1"));
    s.put_state("k", "4").unwrap();
    assert_eq!(s.state("k").unwrap().as_deref(), Some("4"));
}

#[test]
fn experiment_rules_come_from_the_store_core() {
    let (s, clock) = store();
    let note = EventNote::reason("test");
    let v = |name: &str| NewModelVersion::new(name, format!("/m/{name}"));
    assert_eq!(
        s.deploy_challenger(&v("b"), 0.5, 1, &note)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    s.set_champion(&v("a"), &note).unwrap();
    let e = s.deploy_challenger(&v("b"), 0.2, 7, &note).unwrap();
    assert_eq!(
        s.deploy_challenger(&v("c"), 0.2, 7, &note)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        field(
            &s.set_challenger_weight(e.id, 1.5, afs_store::WeightSource::Manual, &note)
                .unwrap_err()
        ),
        "weight"
    );
    clock.advance(Duration::hours(1));
    let e = s
        .set_challenger_weight(e.id, 0.4, afs_store::WeightSource::Bandit, &note)
        .unwrap();
    assert_eq!(e.periods.len(), 2);
    assert_eq!(s.champion().unwrap().unwrap().traffic_weight, 0.6);
    s.rollback(e.id, &note).unwrap();
    assert_eq!(
        s.promote(e.id, &note).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    // Names are never reused.
    assert_eq!(
        s.deploy_challenger(&v("b"), 0.2, 7, &note)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    let events = s.events(&Default::default()).unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(s.count_events(afs_store::EventKind::Rollback).unwrap(), 1);
    assert_eq!(s.count_events(afs_store::EventKind::Promote).unwrap(), 0);
    assert_eq!(s.experiment(99).unwrap_err().kind(), ErrorKind::NotFound);
}

/// What a look costs with many units and records: printed, and bounded loosely so a
/// regression to scanning the log shows.
#[test]
fn a_look_costs_the_units_not_the_records() {
    let (s, clock) = store();
    let note = EventNote::reason("test");
    s.set_champion(&NewModelVersion::new("a", "/a"), &note)
        .unwrap();
    let e = s
        .deploy_challenger(&NewModelVersion::new("b", "/b"), 0.5, 1, &note)
        .unwrap();
    let units = 20_000;
    let records_per_unit = 20;
    let began = Instant::now();
    for round in 0..records_per_unit {
        let batch = (0..units)
            .map(|u| NewUsage {
                quality_score: Some(0.5),
                latency_ms: Some(100.0),
                unit_id: Some(format!("user-{u}")),
                ..NewUsage::new("q", "r", if u % 2 == 0 { "a" } else { "b" })
            })
            .collect();
        s.log_batch(batch).unwrap();
        clock.advance(Duration::minutes(1 + round));
    }
    let logging = began.elapsed();
    let began = Instant::now();
    let looks = 5;
    for _ in 0..looks {
        let cohorts = s.unit_stats(e.id, None).unwrap();
        assert_eq!(cohorts.iter().map(|c| c.units).sum::<u64>(), units as u64);
    }
    let look = began.elapsed() / looks;
    let began = Instant::now();
    let window = StatsWindow {
        since: Some(start()),
        ..Default::default()
    };
    assert_eq!(
        s.stats(&window).unwrap().total,
        (units * records_per_unit as usize) as u64
    );
    let stats = began.elapsed();
    eprintln!(
        "{} records of {units} units: logging {:.0} ns/record, a look {:.1} ms, a window {:.3} ms",
        units * records_per_unit as usize,
        logging.as_nanos() as f64 / (units * records_per_unit as usize) as f64,
        look.as_secs_f64() * 1e3,
        stats.as_secs_f64() * 1e3
    );
    assert!(look.as_secs_f64() < 1.0, "{look:?}");
}
