//! The judge of this crate running inside afs: `AbTest::with_judge` on a real SQLite store,
//! users routed sticky by the store's routing snapshot and the default router, hourly looks
//! whose judge state the store keeps, and a clearly better challenger promoted, a clearly
//! worse one rolled back.

use std::collections::HashMap;
use std::sync::Arc;

use afs_abtest::{AbTest, AbTestConfig, Arm, HashRouter, Router};
use afs_example_plugins::{BetaBinomialJudge, BetaState};
use afs_store::rng::SplitMix64;
use afs_store::{
    Decision, ExperimentStatus, ExperimentStore, Feedback, FeedbackValue, ManualClock,
    NewModelVersion, NewUsage, UsageStore,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{Duration, TimeZone, Utc};

fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A user of the simulated service: how often they come and how much they like answers.
struct User {
    id: String,
    activity: f64,
    liking: f64,
}

/// What one simulated experiment ended with.
struct Outcome {
    decision: Decision,
    looks: u64,
    status: ExperimentStatus,
    champion: String,
}

/// Runs an experiment of challenger `v2` against champion `v1` whose thumbs-up rate is
/// `lift` higher (negative: lower) for every user, with hourly looks of the beta-binomial
/// judge, until it decides or 72 hours pass.
fn run(lift: f64, seed: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
    ));
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone()).unwrap(),
    );
    let judge = BetaBinomialJudge {
        threshold: 0.99,
        min_feedback_per_arm: 150,
        confirm_looks: 2,
    };
    let ab = AbTest::new(store.clone(), AbTestConfig::default())
        .unwrap()
        .with_judge(Box::new(judge));
    ab.set_champion(&NewModelVersion::new("v1", "/models/v1"), "first")
        .unwrap();
    let experiment = ab
        .deploy_challenger_with_seed(
            &NewModelVersion::new("v2", "/models/v2"),
            Some(0.5),
            seed,
            "retrained",
        )
        .unwrap();

    let mut rng = SplitMix64::new(seed);
    // Heterogeneous users: activity from rare to frequent, liking from 0.4 to 0.8.
    let users: Vec<User> = (0..300)
        .map(|i| User {
            id: format!("user-{i}"),
            activity: 0.05 + 0.4 * uniform(&mut rng).powi(2),
            liking: 0.4 + 0.4 * uniform(&mut rng),
        })
        .collect();
    // Production routing: the store's routing snapshot and the default (sticky) router.
    let router = HashRouter::seeded(seed);
    let mut arm_of: HashMap<String, Arm> = HashMap::new();
    let mut last_looks = 0;
    for hour in 1..=72 {
        let table = ab.routing_table().unwrap();
        let mut batch = Vec::new();
        for user in &users {
            if uniform(&mut rng) >= user.activity {
                continue;
            }
            let arm = router.route(&table, Some(&user.id));
            let first = *arm_of.entry(user.id.clone()).or_insert(arm);
            assert_eq!(
                arm, first,
                "{} changed arms: routing must be sticky",
                user.id
            );
            let rate = match arm {
                Arm::Champion => user.liking,
                Arm::Challenger => (user.liking + lift).clamp(0.0, 1.0),
            };
            for n in 0..1 + rng.below(3) {
                let mut record = NewUsage::new(
                    format!("question {hour}/{n} from {}", user.id),
                    "an answer",
                    table.model(arm),
                );
                record.unit_id = Some(user.id.clone());
                if uniform(&mut rng) < 0.6 {
                    let value = if uniform(&mut rng) < rate {
                        FeedbackValue::Positive
                    } else {
                        FeedbackValue::Negative
                    };
                    record.feedback = Some(Feedback {
                        value,
                        text: None,
                        at: None,
                    });
                }
                batch.push(record);
            }
        }
        store.log_batch(batch).unwrap();
        clock.advance(Duration::hours(1));

        let outcome = ab.check().unwrap();
        let comparison = outcome.comparison.expect("an experiment runs");
        // The judge's state after this look is what the store gives back, whole.
        let stored = store.sequential_states(experiment.id).unwrap();
        assert_eq!(stored, comparison.states, "look {hour}");
        assert_eq!(stored.len(), 1);
        let entry = &stored[0];
        assert_eq!(entry.metric, BetaBinomialJudge::KEY);
        let state = BetaState::parse(entry.state.as_deref().expect("a judge state"))
            .expect("the judge's JSON");
        // One more look than the last: the count came from the stored state.
        assert_eq!(state.looks, last_looks + 1, "look {hour}");
        assert_eq!(entry.n_looks, state.looks);
        last_looks = state.looks;
        // The posterior is the counts of the look plus the uniform prior.
        let champion_feedback = comparison.champion_feedback as f64;
        assert_eq!(state.champion.0 + state.champion.1, champion_feedback + 2.0);
        assert_eq!(
            entry.started_at,
            experiment.started_at + Duration::hours(1),
            "the first look's time is kept"
        );
        // A decision needs the minimum feedback and two looks in a row beyond the threshold.
        if comparison.decision != Decision::KeepTesting {
            assert!(
                state.above >= 2 || state.below >= 2,
                "{}",
                comparison.reason
            );
            assert!(comparison.champion_feedback >= 150 && comparison.challenger_feedback >= 150);
            assert_eq!(outcome.applied, Some(comparison.decision));
            let ended = store.experiment(experiment.id).unwrap();
            return Outcome {
                decision: comparison.decision,
                looks: state.looks,
                status: ended.status,
                champion: store.champion().unwrap().unwrap().name,
            };
        }
        assert!(
            comparison.reason.contains("not an always-valid test"),
            "{}",
            comparison.reason
        );
    }
    panic!("no decision in 72 hours");
}

#[test]
fn a_clearly_better_challenger_is_promoted() {
    let outcome = run(0.15, 11);
    assert_eq!(outcome.decision, Decision::Promote);
    assert_eq!(outcome.status, ExperimentStatus::Promoted);
    assert_eq!(outcome.champion, "v2");
    assert!(outcome.looks >= 2, "two confirming looks at least");
}

#[test]
fn a_clearly_worse_challenger_is_rolled_back() {
    let outcome = run(-0.15, 12);
    assert_eq!(outcome.decision, Decision::Rollback);
    assert_eq!(outcome.status, ExperimentStatus::RolledBack);
    assert_eq!(outcome.champion, "v1");
    assert!(outcome.looks >= 2);
}
