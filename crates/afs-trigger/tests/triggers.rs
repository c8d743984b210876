//! Trigger policies against a real SQLite store with a manual clock; the store is reopened
//! between steps to show that every piece of state survives a restart.

use std::path::PathBuf;
use std::sync::Arc;

use afs_store::{Clock, FeedbackValue, ManualClock, NewUsage, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_trigger::{
    record_retrain_started, record_retrain_succeeded, reset_after_promotion, RetrainTrigger,
    TriggerConfig, TriggerType,
};
use chrono::{DateTime, Duration, TimeZone, Utc};

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: Arc<ManualClock>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("afs.db");
        Env {
            _dir: dir,
            path,
            clock: Arc::new(ManualClock::new(t0())),
        }
    }

    /// A freshly opened store: what a restarted process sees.
    fn open(&self) -> SqliteStore {
        SqliteStore::open(SqliteConfig::new(&self.path), self.clock.clone()).unwrap()
    }

    /// Logs `n` records over the last hour with quality `q` and the given feedback.
    fn traffic(&self, n: usize, q: f64, feedback: Option<FeedbackValue>) {
        let store = self.open();
        let now = self.clock.now();
        let batch: Vec<NewUsage> = (0..n)
            .map(|i| NewUsage {
                quality_score: Some(q),
                timestamp: Some(now - Duration::seconds(3600 * (i as i64 + 1) / (n as i64 + 1))),
                ..NewUsage::new(format!("q{i} {now}"), "r", "m")
            })
            .collect();
        let ids = store.log_batch(batch).unwrap();
        if let Some(value) = feedback {
            for id in ids {
                store.record_feedback(&id, value, None).unwrap();
            }
        }
    }

    fn hours(&self, h: i64) {
        self.clock.advance(Duration::hours(h));
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 12, 0, 0).unwrap()
}

fn only(config: TriggerConfig) -> RetrainTrigger {
    RetrainTrigger::new(config).unwrap()
}

fn none_enabled() -> TriggerConfig {
    TriggerConfig {
        enable_sample_count: false,
        enable_scheduled: false,
        enable_quality_drop: false,
        enable_error_rate: false,
        enable_page_hinkley: false,
        ..TriggerConfig::default()
    }
}

fn check(env: &Env, trigger: &RetrainTrigger) -> (bool, Option<TriggerType>, String) {
    let r = trigger.check(&env.open(), false).unwrap();
    (r.triggered, r.trigger_type, r.reason)
}

#[test]
fn sample_count_counts_since_the_last_successful_retrain_and_cooldown_survives_restarts() {
    let env = Env::new();
    let trigger = only(TriggerConfig {
        enable_sample_count: true,
        min_new_samples: 100,
        cooldown_hours: 24.0,
        ..none_enabled()
    });
    env.traffic(99, 0.8, None);
    assert!(!check(&env, &trigger).0);
    env.traffic(1, 0.8, None);
    assert_eq!(check(&env, &trigger).1, Some(TriggerType::SampleCount));

    // A retrain starts and succeeds; in a new process, the cooldown holds.
    let store = env.open();
    let started = store.clock().now();
    record_retrain_started(&store).unwrap();
    record_retrain_succeeded(&store, started).unwrap();
    drop(store);
    env.hours(1);
    env.traffic(150, 0.8, None);
    let (triggered, _, reason) = check(&env, &trigger);
    assert!(!triggered);
    assert!(
        reason.contains("cooldown") && reason.contains("sample_count"),
        "{reason}"
    );

    // After the cooldown the new samples (150 since the retrain, not 250) trigger.
    env.hours(24);
    let r = trigger.check(&env.open(), false).unwrap();
    assert!(r.triggered, "{}", r.reason);
    assert_eq!(r.metrics["sample_count.new_samples"], 150.0);

    // A forced check triggers even in a cooldown.
    record_retrain_started(&env.open()).unwrap();
    let forced = trigger.check(&env.open(), true).unwrap();
    assert_eq!(
        (forced.triggered, forced.trigger_type),
        (true, Some(TriggerType::Manual))
    );
}

#[test]
fn schedule_counts_from_the_first_check_unless_told_to_fire_at_once() {
    let env = Env::new();
    let weekly = only(TriggerConfig {
        enable_scheduled: true,
        schedule_interval_hours: 168.0,
        cooldown_hours: 0.0,
        ..none_enabled()
    });
    assert!(
        !check(&env, &weekly).0,
        "the very first run does not trigger by default"
    );
    env.hours(167);
    assert!(!check(&env, &weekly).0);
    env.hours(1);
    assert_eq!(check(&env, &weekly).1, Some(TriggerType::Scheduled));
    record_retrain_started(&env.open()).unwrap();
    env.hours(100);
    assert!(
        !check(&env, &weekly).0,
        "the interval restarts at the retrain"
    );

    let env = Env::new();
    let eager = only(TriggerConfig {
        enable_scheduled: true,
        schedule_on_first_run: true,
        ..none_enabled()
    });
    assert_eq!(check(&env, &eager).1, Some(TriggerType::Scheduled));
}

#[test]
fn quality_drop_uses_a_stored_baseline_that_resets_on_promotion() {
    let env = Env::new();
    let trigger = only(TriggerConfig {
        enable_quality_drop: true,
        quality_drop_threshold: 0.1,
        quality_window_hours: 24.0,
        min_quality_samples: 50,
        cooldown_hours: 0.0,
        ..none_enabled()
    });
    env.traffic(30, 0.8, None);
    let (triggered, _, reason) = check(&env, &trigger);
    assert!(!triggered && reason.contains("only 30"), "{reason}");
    env.traffic(30, 0.8, None);
    let (_, _, reason) = check(&env, &trigger);
    assert!(reason.contains("baseline set to 0.8000"), "{reason}");

    // A day later quality is 0.75 (6% lower): no trigger; the baseline was not recomputed
    // from history on restart.
    env.hours(25);
    env.traffic(60, 0.75, None);
    assert!(!check(&env, &trigger).0);
    // Then 0.7 (12.5% below 0.8): trigger.
    env.hours(25);
    env.traffic(60, 0.7, None);
    let (triggered, kind, reason) = check(&env, &trigger);
    assert!(triggered, "{reason}");
    assert_eq!(kind, Some(TriggerType::QualityDrop));

    // A promotion resets the baseline: the new model's 0.7 becomes the reference.
    reset_after_promotion(&env.open()).unwrap();
    let (triggered, _, reason) = check(&env, &trigger);
    assert!(
        !triggered && reason.contains("baseline set to 0.7000"),
        "{reason}"
    );
}

#[test]
fn error_rate_divides_by_feedback_events_and_waits_for_enough_of_them() {
    let env = Env::new();
    let trigger = only(TriggerConfig {
        enable_error_rate: true,
        error_rate_threshold: 0.2,
        error_rate_window_hours: 24.0,
        min_feedback_events: 20,
        cooldown_hours: 0.0,
        ..none_enabled()
    });
    // 1,000 records, 15 with feedback of which 10 negative: too few events to judge.
    env.traffic(985, 0.8, None);
    env.traffic(5, 0.8, Some(FeedbackValue::Positive));
    env.traffic(10, 0.8, Some(FeedbackValue::Negative));
    let (triggered, _, reason) = check(&env, &trigger);
    assert!(
        !triggered && reason.contains("only 15 feedback events"),
        "{reason}"
    );
    // 25 events, 10 negative = 40% of feedback (the seed's 1% of all records would hide it).
    env.traffic(10, 0.8, Some(FeedbackValue::Positive));
    let r = trigger.check(&env.open(), false).unwrap();
    assert!(r.triggered, "{}", r.reason);
    assert!((r.metrics["error_rate.error_rate"] - 0.4).abs() < 1e-9);
    // Two days later the window is empty again.
    env.hours(48);
    assert!(!check(&env, &trigger).0);
}

#[test]
fn page_hinkley_state_persists_across_restarts_and_catches_a_drop() {
    let env = Env::new();
    let trigger = only(TriggerConfig {
        enable_page_hinkley: true,
        cooldown_hours: 0.0,
        ..none_enabled()
    });
    // Two stable days at 0.8 with hourly checks, reopening the store every hour.
    for _ in 0..48 {
        env.hours(1);
        env.traffic(40, 0.8, None);
        let (triggered, _, reason) = check(&env, &trigger);
        assert!(!triggered, "{reason}");
    }
    let r = trigger.check(&env.open(), false).unwrap();
    assert_eq!(
        r.metrics["quality_change.ph_samples"],
        48.0 * 40.0,
        "each hour fed exactly once"
    );
    // Quality drops to 0.65: detected within a few hours.
    let mut hours = 0;
    loop {
        env.hours(1);
        env.traffic(40, 0.65, None);
        hours += 1;
        if check(&env, &trigger).0 {
            break;
        }
        assert!(hours < 6, "drop not detected after {hours} h");
    }
}

#[test]
fn a_check_with_nothing_enabled_says_so() {
    let env = Env::new();
    let (triggered, kind, reason) = check(&env, &only(none_enabled()));
    assert!(!triggered && kind.is_none());
    assert!(reason.contains("no trigger policy"), "{reason}");
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    for (config, field) in [
        (
            TriggerConfig {
                quality_drop_threshold: 1.5,
                ..TriggerConfig::default()
            },
            "quality_drop_threshold",
        ),
        (
            TriggerConfig {
                schedule_interval_hours: 0.0,
                ..TriggerConfig::default()
            },
            "schedule_interval_hours",
        ),
        (
            TriggerConfig {
                cooldown_hours: f64::NAN,
                ..TriggerConfig::default()
            },
            "cooldown_hours",
        ),
        (
            TriggerConfig {
                error_rate_threshold: -0.1,
                ..TriggerConfig::default()
            },
            "error_rate_threshold",
        ),
    ] {
        let err = RetrainTrigger::new(config).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}
