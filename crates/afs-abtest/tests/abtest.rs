//! `AbTest` over a real SQLite store in a temp dir, with a manual clock: the operations,
//! routing, scheduled checks, recorded decisions and their application.

use std::sync::Arc;

use afs_abtest::{
    AbTest, AbTestConfig, AbTestError, Arm, HashRouter, Metric, MetricVerdict, Router,
};
use afs_store::{
    Clock, Decision, ErrorKind, EventFilter, EventKind, ExperimentStatus, ExperimentStore,
    Feedback, FeedbackValue, ManualClock, NewModelVersion, NewUsage, UsageStore, VersionStatus,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};

struct Fixture {
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    ab: AbTest<SqliteStore>,
    dir: tempfile::TempDir,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 2, 0, 0, 0).unwrap()
}

fn fixture(config: AbTestConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone()).unwrap(),
    );
    let ab = AbTest::new(store.clone(), config).unwrap();
    Fixture {
        store,
        clock,
        ab,
        dir,
    }
}

/// A fixture with champion `v1` and challenger `v2` deployed at 10% with seed 7.
fn running(config: AbTestConfig) -> Fixture {
    running_at(config, 0.1)
}

/// A fixture with champion `v1` and challenger `v2` deployed at `weight` with seed 7.
fn running_at(config: AbTestConfig, weight: f64) -> Fixture {
    let f = fixture(config);
    f.ab.set_champion(&NewModelVersion::new("v1", "/models/v1"), "first model")
        .unwrap();
    let version = NewModelVersion {
        run_id: Some("run-1".into()),
        ..NewModelVersion::new("v2", "/models/v2")
    };
    f.ab.deploy_challenger_with_seed(&version, Some(weight), 7, "retrained")
        .unwrap();
    f
}

/// How one model behaves in the synthetic traffic below.
#[derive(Clone, Copy)]
struct Behaviour {
    quality: f64,
    latency_ms: Option<f64>,
    positive_share: f64,
}

const GOOD: Behaviour = Behaviour {
    quality: 0.70,
    latency_ms: Some(800.0),
    positive_share: 0.7,
};

/// Logs `n` requests of `model` during the current hour: quality alternating ±0.1 around
/// the mean, latency ±100 ms, every fifth request rated (thumbs up for the first
/// `positive_share` of each ten ratings).
fn log(f: &Fixture, model: &str, n: usize, b: Behaviour) {
    let now = f.clock.now();
    let records = (0..n)
        .map(|i| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            let feedback = (i % 5 == 0).then(|| {
                let positive = ((i / 5) % 10) as f64 / 10.0 < b.positive_share;
                Feedback {
                    value: if positive {
                        FeedbackValue::Positive
                    } else {
                        FeedbackValue::Negative
                    },
                    text: None,
                    at: None,
                }
            });
            NewUsage {
                quality_score: Some((b.quality + 0.1 * sign).clamp(0.0, 1.0)),
                latency_ms: b.latency_ms.map(|l| l + 100.0 * sign),
                timestamp: Some(now + Duration::seconds((i % 3000) as i64)),
                feedback,
                ..NewUsage::new(format!("query {i}"), "response", model)
            }
        })
        .collect();
    f.store.log_batch(records).unwrap();
}

/// Simulates `hours` hours: logs each hour, moves the clock, checks. Returns the decisions.
fn run_hours(
    f: &Fixture,
    hours: usize,
    champion: Behaviour,
    challenger: Behaviour,
    per_hour: (usize, usize),
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for _ in 0..hours {
        log(f, "v1", per_hour.0, champion);
        log(f, "v2", per_hour.1, challenger);
        f.clock.advance(Duration::hours(1));
        let outcome = f.ab.check().unwrap();
        let Some(comparison) = outcome.comparison else {
            break;
        };
        decisions.push(comparison.decision);
        if outcome.applied.is_some() {
            break;
        }
    }
    decisions
}

#[test]
fn a_better_challenger_is_promoted_after_the_minimum_duration_with_its_reason_recorded() {
    // An even split, so the sparse thumbs-down guardrail can be shown within its margin in
    // two days (each arm gets 100 ratings an hour).
    let f = running_at(AbTestConfig::default(), 0.5);
    let better = Behaviour {
        quality: 0.78,
        ..GOOD
    };
    let decisions = run_hours(&f, 100, GOOD, better, (500, 500));
    assert_eq!(decisions.last(), Some(&Decision::Promote), "{decisions:?}");
    assert_eq!(
        decisions.len(),
        48,
        "promoted at the first look allowed by the 48 h minimum"
    );
    assert!(decisions[..47].iter().all(|d| *d == Decision::KeepTesting));

    let status = f.ab.status().unwrap();
    assert_eq!(status.champion.as_ref().unwrap().name, "v2");
    assert_eq!(status.champion.unwrap().run_id.as_deref(), Some("run-1"));
    assert!(status.experiment.is_none() && status.challenger.is_none());
    let v1 = f.store.model_version("v1").unwrap();
    assert_eq!(v1.status, VersionStatus::Retired);
    let experiment = f.store.experiments().unwrap().pop().unwrap();
    assert_eq!(experiment.status, ExperimentStatus::Promoted);

    // Every look is a decision row with its statistics; the promotion row carries them too.
    let decisions_logged = f
        .store
        .events(&EventFilter {
            kinds: vec![EventKind::Decision],
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(decisions_logged.len(), 48);
    let history = f.ab.history(Some(2)).unwrap();
    assert_eq!(history[0].kind, EventKind::Promote);
    assert_eq!(history[0].decision, Some(Decision::Promote));
    assert_eq!(history[1].kind, EventKind::Decision);
    let reason = &history[0].reason;
    assert!(
        reason.contains("challenger v2 is better: quality +0.080"),
        "{reason}"
    );
    assert!(
        reason.contains("guardrails within their margins"),
        "{reason}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(history[0].statistics.as_deref().unwrap()).unwrap();
    assert_eq!(stats["decision"], "promote");
    assert_eq!(stats["metrics"][0]["metric"], "quality");
    assert_eq!(stats["metrics"][0]["verdict"], "better");
    assert!(stats["metrics"][0]["p_better"].as_f64().unwrap() < 0.05);
    assert_eq!(stats["requests"]["challenger"], 24_000);
    assert!(stats["seed"]["weighted_improvement"].as_f64().is_some());
}

#[test]
fn a_harmful_challenger_is_rolled_back_without_waiting() {
    let f = running(AbTestConfig::default());
    let worse = Behaviour {
        quality: 0.60,
        ..GOOD
    };
    let decisions = run_hours(&f, 48, GOOD, worse, (900, 100));
    assert_eq!(decisions.last(), Some(&Decision::Rollback));
    assert!(decisions.len() <= 3, "{decisions:?}");
    assert_eq!(f.ab.status().unwrap().champion.unwrap().name, "v1");
    assert_eq!(
        f.store.model_version("v2").unwrap().status,
        VersionStatus::Retired
    );
    let last = &f.ab.history(Some(1)).unwrap()[0];
    assert_eq!(
        (last.kind, last.decision),
        (EventKind::Rollback, Some(Decision::Rollback))
    );
    assert!(
        last.reason.contains("quality -0.100") && last.reason.contains("worse than the champion"),
        "{}",
        last.reason
    );
}

#[test]
fn a_slow_challenger_breaks_the_latency_guardrail() {
    let f = running(AbTestConfig::default());
    let slow = Behaviour {
        latency_ms: Some(1200.0),
        ..GOOD
    };
    let decisions = run_hours(&f, 24, GOOD, slow, (900, 100));
    assert_eq!(decisions.last(), Some(&Decision::Rollback));
    let reason = &f.ab.history(Some(1)).unwrap()[0].reason;
    assert!(
        reason.contains("latency_ms +400 ms") && reason.contains("worse than its 10% margin"),
        "{reason}"
    );
}

#[test]
fn with_auto_promotion_off_a_promote_decision_is_recorded_but_not_applied() {
    let f = running_at(
        AbTestConfig {
            enable_auto_promotion: false,
            ..AbTestConfig::default()
        },
        0.5,
    );
    let better = Behaviour {
        quality: 0.78,
        ..GOOD
    };
    let decisions = run_hours(&f, 50, GOOD, better, (500, 500));
    assert_eq!(
        decisions.len(),
        50,
        "nothing was applied, so every hour was checked"
    );
    assert_eq!(
        &decisions[46..],
        [
            Decision::KeepTesting,
            Decision::Promote,
            Decision::Promote,
            Decision::Promote
        ]
    );
    assert!(f.ab.status().unwrap().experiment.is_some(), "still running");
    let last = &f.ab.history(Some(1)).unwrap()[0];
    assert_eq!(
        (last.kind, last.decision),
        (EventKind::Decision, Some(Decision::Promote))
    );
    assert!(
        last.reason
            .ends_with("(not applied: automatic action is disabled)"),
        "{}",
        last.reason
    );
    // The operator promotes; the event keeps their reason and the judge's view.
    f.ab.promote("reviewed by the on-call engineer").unwrap();
    let last = &f.ab.history(Some(1)).unwrap()[0];
    assert_eq!(last.kind, EventKind::Promote);
    assert!(
        last.reason.starts_with(
            "reviewed by the on-call engineer (the judge said: promote: challenger v2 is better"
        ),
        "{}",
        last.reason
    );
}

#[test]
fn routing_is_sticky_and_raising_the_weight_only_moves_champion_units() {
    let f = running(AbTestConfig::default());
    let router = HashRouter::seeded(1);
    let units: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
    let before: Vec<Arm> = units
        .iter()
        .map(|u| f.ab.route(&router, Some(u)).unwrap().arm)
        .collect();
    let table = f.ab.routing_table().unwrap();
    assert_eq!(table.model(Arm::Challenger), "v2");
    for (unit, arm) in units.iter().zip(&before) {
        assert_eq!(router.route(&table, Some(unit)), *arm, "sticky");
    }
    let share =
        before.iter().filter(|a| **a == Arm::Challenger).count() as f64 / units.len() as f64;
    assert!((share - 0.1).abs() < 0.01, "{share}");

    f.clock.advance(Duration::hours(5));
    let experiment = f.ab.set_weight(0.5, "ramp up").unwrap();
    assert_eq!((experiment.seed, experiment.periods.len()), (7, 2));
    let after = f.ab.routing_table().unwrap();
    for (unit, old) in units.iter().zip(&before) {
        let new = router.route(&after, Some(unit));
        assert!(
            !(*old == Arm::Challenger && new == Arm::Champion),
            "{unit} moved back"
        );
    }
    let route = f.ab.route(&router, Some("user-1")).unwrap();
    assert_eq!(route.model, after.model(route.arm));
}

#[test]
fn weight_changes_give_per_period_expected_counts() {
    let f = running(AbTestConfig::default());
    for _ in 0..10 {
        log(&f, "v1", 900, GOOD);
        log(&f, "v2", 100, GOOD);
        f.clock.advance(Duration::hours(1));
    }
    f.ab.set_weight(0.5, "ramp up").unwrap();
    for _ in 0..10 {
        log(&f, "v1", 500, GOOD);
        log(&f, "v2", 500, GOOD);
        f.clock.advance(Duration::hours(1));
    }
    let c = f.ab.compare().unwrap().unwrap();
    assert_eq!(c.srm.expected_challenger_share, Some(0.3));
    assert!(!c.srm.mismatch, "{:?}", c.srm);
    assert_ne!(c.decision, Decision::Hold);
    let periods =
        f.ab.period_stats(&f.ab.status().unwrap().experiment.unwrap())
            .unwrap();
    assert_eq!(
        periods
            .iter()
            .map(|p| (p.champion.total, p.challenger.total))
            .collect::<Vec<_>>(),
        [(9000, 1000), (5000, 5000)]
    );
}

#[test]
fn a_sample_ratio_mismatch_holds_and_says_so() {
    let f = running(AbTestConfig::default());
    // The weight says 10%, the logs say 20%: routing or logging is broken.
    let decisions = run_hours(
        &f,
        6,
        GOOD,
        Behaviour {
            quality: 0.9,
            ..GOOD
        },
        (800, 200),
    );
    assert!(
        decisions.iter().all(|d| *d == Decision::Hold),
        "{decisions:?}"
    );
    assert!(f.ab.status().unwrap().experiment.is_some());
    let last = &f.ab.history(Some(1)).unwrap()[0];
    assert!(
        last.reason.starts_with(
            "sample ratio mismatch: challenger got 20.00% of requests, expected 10.00%"
        ),
        "{}",
        last.reason
    );
}

#[test]
fn no_data_is_never_success() {
    let f = running(AbTestConfig::default());
    f.clock.advance(Duration::hours(100));
    let c = f.ab.check().unwrap().comparison.unwrap();
    assert_eq!(c.decision, Decision::KeepTesting);
    assert!(
        c.reason
            .starts_with("waiting for samples: champion has 0 and challenger 0"),
        "{}",
        c.reason
    );
    assert_eq!(c.metrics[0].verdict, MetricVerdict::NoData);

    // Traffic without latency: the latency guardrail cannot pass, so no promotion.
    let no_latency = Behaviour {
        quality: 0.8,
        latency_ms: None,
        ..GOOD
    };
    let decisions = run_hours(
        &f,
        10,
        Behaviour {
            latency_ms: None,
            ..GOOD
        },
        no_latency,
        (900, 100),
    );
    assert!(
        decisions.iter().all(|d| *d == Decision::KeepTesting),
        "{decisions:?}"
    );
    let c = f.ab.compare().unwrap().unwrap();
    assert_eq!(
        c.metric(Metric::Latency).unwrap().verdict,
        MetricVerdict::NoData
    );
    assert!(
        c.reason
            .contains("no latency_ms data for v1; no data never counts as passing"),
        "{}",
        c.reason
    );
}

#[test]
fn compare_is_read_only_and_check_persists_the_sequential_state_across_restarts() {
    let f = running(AbTestConfig::default());
    run_hours(&f, 5, GOOD, GOOD, (900, 100));
    let events = f.store.events(&EventFilter::default()).unwrap().len();
    f.ab.compare().unwrap().unwrap();
    f.ab.compare().unwrap().unwrap();
    assert_eq!(
        f.store.events(&EventFilter::default()).unwrap().len(),
        events,
        "compare writes nothing"
    );
    let experiment_id = f.ab.status().unwrap().experiment.unwrap().id;
    let states = f.store.sequential_states(experiment_id).unwrap();
    let quality = states.iter().find(|s| s.metric == "quality").unwrap();
    assert_eq!(
        quality.n_looks, 5,
        "every look updates the test once each arm has 100 scores"
    );

    let path = f.dir.path().join("afs.db");
    let clock = f.clock.clone();
    drop(f.ab);
    drop(f.store);
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap());
    let ab = AbTest::new(store.clone(), AbTestConfig::default()).unwrap();
    clock.advance(Duration::hours(1));
    ab.check().unwrap();
    let states = store.sequential_states(experiment_id).unwrap();
    let reopened = states.iter().find(|s| s.metric == "quality").unwrap();
    assert_eq!(reopened.n_looks, 6);
    assert_eq!(
        (reopened.baseline, reopened.tau, reopened.started_at),
        (quality.baseline, quality.tau, quality.started_at)
    );
}

#[test]
fn bad_calls_name_what_is_wrong() {
    let f = fixture(AbTestConfig::default());
    assert!(matches!(f.ab.routing_table(), Err(AbTestError::NoChampion)));
    let deploy =
        f.ab.deploy_challenger(&NewModelVersion::new("v2", "/m"), None, "")
            .unwrap_err();
    assert_eq!(deploy.kind(), ErrorKind::Conflict, "{deploy}");
    f.ab.set_champion(&NewModelVersion::new("v1", "/m"), "")
        .unwrap();
    assert_eq!(f.ab.route(&HashRouter::new(), None).unwrap().model, "v1");
    assert!(matches!(
        f.ab.set_weight(0.5, ""),
        Err(AbTestError::NoRunningExperiment)
    ));
    assert!(matches!(
        f.ab.promote(""),
        Err(AbTestError::NoRunningExperiment)
    ));
    assert!(matches!(
        f.ab.rollback(""),
        Err(AbTestError::NoRunningExperiment)
    ));
    assert!(f.ab.check().unwrap().comparison.is_none());
    assert!(f.ab.compare().unwrap().is_none());
    let err =
        f.ab.deploy_challenger(&NewModelVersion::new("v2", "/m"), Some(1.5), "")
            .unwrap_err();
    assert!(
        matches!(
            err,
            AbTestError::InvalidInput {
                field: "weight",
                ..
            }
        ),
        "{err}"
    );
    f.ab.deploy_challenger(&NewModelVersion::new("v2", "/m"), None, "")
        .unwrap();
    assert_eq!(
        f.ab.status().unwrap().experiment.unwrap().challenger_weight,
        0.1,
        "seed default"
    );
    let err = f.ab.set_weight(f64::NAN, "").unwrap_err();
    assert!(
        matches!(
            err,
            AbTestError::InvalidInput {
                field: "weight",
                ..
            }
        ),
        "{err}"
    );
    let err =
        f.ab.deploy_challenger(&NewModelVersion::new("v3", "/m"), None, "")
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    f.ab.rollback("changed my mind").unwrap();
    let err =
        f.ab.deploy_challenger(&NewModelVersion::new("v2", "/m"), None, "")
            .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "names are never reused: {err}"
    );
    let err = AbTest::new(
        f.store.clone(),
        AbTestConfig {
            alpha: 2.0,
            ..AbTestConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config alpha: 2 is not within (0, 1)"
    );
}
