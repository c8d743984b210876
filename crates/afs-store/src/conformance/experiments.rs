//! The `ExperimentStore` checks: model version history, experiment transitions and their
//! conflicts, input checks, periods, sequential state, decisions and the event log.

use chrono::{DateTime, Duration, Utc};

use super::{fresh, utc, Check, Factory, Fixture, TestStore};
use crate::{
    Decision, ErrorKind, EventFilter, EventKind, EventNote, ExperimentStatus, NewModelVersion,
    SequentialState, StoreError, VersionStatus, WeightSource,
};

/// The checks of this area.
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "experiments::event_counts_equal_the_rows_of_each_kind",
            event_counts_equal_the_rows_of_each_kind,
        ),
        (
            "experiments::deploy_starts_an_experiment_with_one_open_period",
            deploy_starts_an_experiment_with_one_open_period,
        ),
        (
            "experiments::state_changes_that_do_not_fit_are_conflicts_and_write_nothing",
            state_changes_that_do_not_fit_are_conflicts_and_write_nothing,
        ),
        (
            "experiments::bad_input_names_the_field",
            bad_input_names_the_field,
        ),
        (
            "experiments::weight_changes_open_contiguous_periods_and_keep_the_seed",
            weight_changes_open_contiguous_periods_and_keep_the_seed,
        ),
        (
            "experiments::promote_swaps_roles_atomically_and_keeps_history",
            promote_swaps_roles_atomically_and_keeps_history,
        ),
        (
            "experiments::rollback_retires_the_challenger_and_restores_full_traffic",
            rollback_retires_the_challenger_and_restores_full_traffic,
        ),
        (
            "experiments::decisions_store_state_and_can_apply_their_transition_in_one_transaction",
            decisions_store_state_and_can_apply_their_transition_in_one_transaction,
        ),
        (
            "experiments::a_judges_own_state_round_trips_exactly_and_is_bounded",
            a_judges_own_state_round_trips_exactly_and_is_bounded,
        ),
        (
            "experiments::an_applied_rollback_decision_rolls_back",
            an_applied_rollback_decision_rolls_back,
        ),
        (
            "experiments::state_survives_reopening",
            state_survives_reopening,
        ),
        (
            "experiments::racing_promote_and_rollback_exactly_one_wins",
            racing_promote_and_rollback_exactly_one_wins,
        ),
        (
            "experiments::set_champion_retires_the_previous_one",
            set_champion_retires_the_previous_one,
        ),
        (
            "experiments::version_names_and_model_paths_are_bounded",
            version_names_and_model_paths_are_bounded,
        ),
    ]
}

fn start() -> DateTime<Utc> {
    utc(2026, 4, 1, 9, 0, 0)
}

fn note(reason: &str) -> EventNote {
    EventNote::reason(reason)
}

fn state(metric: &str, p: f64) -> SequentialState {
    SequentialState {
        metric: metric.into(),
        n_looks: 3,
        baseline: 0.7,
        tau: 0.035,
        theta0: 0.0,
        p_better: p,
        p_worse: 1.0,
        cs_lower: -0.01,
        cs_upper: 0.05,
        started_at: start(),
        updated_at: start() + Duration::hours(3),
        state: None,
    }
}

/// A store with champion `v1` and challenger `v2` at 10%.
fn running(factory: &dyn Factory) -> (Fixture, i64) {
    let f = fresh(factory, start());
    f.store
        .set_champion(
            &NewModelVersion::new("v1", "/models/v1"),
            &note("first model"),
        )
        .unwrap();
    f.clock.advance(Duration::hours(1));
    let version = NewModelVersion {
        dataset: Some("datasets/2026-04-01.jsonl".into()),
        run_id: Some("run-7".into()),
        ..NewModelVersion::new("v2", "/models/v2")
    };
    let experiment = f
        .store
        .deploy_challenger(&version, 0.1, 42, &note("retrained"))
        .unwrap();
    (f, experiment.id)
}

fn kind_of(err: StoreError) -> ErrorKind {
    err.kind()
}

fn field_of(err: StoreError) -> &'static str {
    match err {
        StoreError::InvalidInput { field, .. } => field,
        other => panic!("expected invalid input, got {other}"),
    }
}

fn event_kinds(store: &dyn TestStore) -> Vec<(EventKind, Option<Decision>)> {
    store
        .events(&EventFilter::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.decision))
        .collect()
}

fn deploy_starts_an_experiment_with_one_open_period(factory: &dyn Factory) {
    let (f, id) = running(factory);
    let experiment = f.store.running_experiment().unwrap().expect("running");
    assert_eq!(experiment.id, id);
    assert_eq!(
        (experiment.champion.as_str(), experiment.challenger.as_str()),
        ("v1", "v2")
    );
    assert_eq!(experiment.status, ExperimentStatus::Running);
    assert_eq!(experiment.seed, 42);
    assert_eq!(experiment.challenger_weight, 0.1);
    assert_eq!(experiment.started_at, start() + Duration::hours(1));
    assert_eq!(experiment.periods.len(), 1);
    let period = &experiment.periods[0];
    assert_eq!(
        (period.index, period.challenger_weight, period.source),
        (0, 0.1, WeightSource::Initial)
    );
    assert_eq!(period.ended_at, None);

    let v2 = f.store.model_version("v2").unwrap();
    assert_eq!(v2.status, VersionStatus::Challenger);
    assert_eq!(v2.traffic_weight, 0.1);
    assert_eq!(v2.dataset.as_deref(), Some("datasets/2026-04-01.jsonl"));
    assert_eq!(v2.run_id.as_deref(), Some("run-7"));
    let v1 = f.store.champion().unwrap().expect("champion");
    assert_eq!(v1.name, "v1");
    assert!((v1.traffic_weight - 0.9).abs() < 1e-12);
    assert_eq!(v1.promoted_at, Some(start()));

    let events = f.store.events(&EventFilter::default()).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::SetChampion);
    assert_eq!(events[0].experiment_id, None);
    assert_eq!(events[1].kind, EventKind::Deploy);
    assert_eq!(events[1].experiment_id, Some(id));
    assert_eq!(events[1].model.as_deref(), Some("v2"));
    assert_eq!(events[1].weight, Some(0.1));
    assert_eq!(events[1].reason, "retrained");
    assert_eq!(events[1].at, start() + Duration::hours(1));
}

fn state_changes_that_do_not_fit_are_conflicts_and_write_nothing(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let deploy = |name: &str| {
        f.store
            .deploy_challenger(&NewModelVersion::new(name, "/m"), 0.1, 1, &note(""))
    };
    assert_eq!(
        kind_of(deploy("v2").unwrap_err()),
        ErrorKind::Conflict,
        "no champion yet"
    );
    f.store
        .set_champion(&NewModelVersion::new("v1", "/m1"), &note(""))
        .unwrap();
    assert_eq!(
        kind_of(deploy("v1").unwrap_err()),
        ErrorKind::Conflict,
        "name in use"
    );
    let experiment = deploy("v2").unwrap();
    assert_eq!(
        kind_of(deploy("v3").unwrap_err()),
        ErrorKind::Conflict,
        "already running"
    );
    let err = f
        .store
        .set_champion(&NewModelVersion::new("v9", "/m9"), &note(""))
        .unwrap_err();
    assert_eq!(
        kind_of(err),
        ErrorKind::Conflict,
        "set champion while running"
    );

    f.store.rollback(experiment.id, &note("bad")).unwrap();
    for err in [
        f.store.promote(experiment.id, &note("")).unwrap_err(),
        f.store.rollback(experiment.id, &note("")).unwrap_err(),
        f.store
            .set_challenger_weight(experiment.id, 0.5, WeightSource::Manual, &note(""))
            .unwrap_err(),
        f.store
            .record_decision(experiment.id, Decision::KeepTesting, &[], &note(""), false)
            .unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    }
    // A retired name stays taken.
    assert_eq!(kind_of(deploy("v2").unwrap_err()), ErrorKind::Conflict);
    assert_eq!(
        f.store.model_version("nope").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        f.store.experiment(999).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        f.store.promote(999, &note("")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let kinds: Vec<EventKind> = event_kinds(f.store.as_ref())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::SetChampion,
            EventKind::Deploy,
            EventKind::Rollback
        ]
    );
}

fn bad_input_names_the_field(factory: &dyn Factory) {
    let (f, id) = running(factory);
    let check =
        |result: crate::Result<()>, field: &str| assert_eq!(field_of(result.unwrap_err()), field);
    check(
        f.store
            .set_challenger_weight(id, 1.5, WeightSource::Manual, &note(""))
            .map(drop),
        "weight",
    );
    check(
        f.store
            .set_challenger_weight(id, f64::NAN, WeightSource::Manual, &note(""))
            .map(drop),
        "weight",
    );
    check(
        f.store
            .set_challenger_weight(id, -0.1, WeightSource::Manual, &note(""))
            .map(drop),
        "weight",
    );
    f.store.rollback(id, &note("")).unwrap();
    check(
        f.store
            .deploy_challenger(&NewModelVersion::new(" ", "/m"), 0.1, 1, &note(""))
            .map(drop),
        "name",
    );
    check(
        f.store
            .deploy_challenger(&NewModelVersion::new("v3", ""), 0.1, 1, &note(""))
            .map(drop),
        "model_path",
    );
    check(
        f.store
            .set_champion(&NewModelVersion::new("", "/m"), &note(""))
            .map(drop),
        "name",
    );
    let mut bad = state("quality", 0.5);
    bad.p_better = f64::NAN;
    let (f, id) = running(factory);
    check(
        f.store
            .record_decision(id, Decision::KeepTesting, &[bad], &note(""), false)
            .map(drop),
        "p_better",
    );
    let mut bad = state("quality", 0.5);
    bad.cs_upper = f64::INFINITY;
    check(
        f.store
            .record_decision(id, Decision::KeepTesting, &[bad], &note(""), false)
            .map(drop),
        "cs_upper",
    );
    check(
        f.store
            .record_decision(
                id,
                Decision::KeepTesting,
                &[state(" ", 0.5)],
                &note(""),
                false,
            )
            .map(drop),
        "metric",
    );
    assert!(f.store.sequential_states(id).unwrap().is_empty());
    assert_eq!(
        event_kinds(f.store.as_ref()).len(),
        2,
        "nothing written by refused calls"
    );
}

fn weight_changes_open_contiguous_periods_and_keep_the_seed(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.clock.advance(Duration::hours(5));
    f.store
        .set_challenger_weight(id, 0.5, WeightSource::Manual, &note("ramp up"))
        .unwrap();
    f.clock.advance(Duration::hours(2));
    let experiment = f
        .store
        .set_challenger_weight(id, 0.3, WeightSource::Bandit, &note("thompson"))
        .unwrap();
    assert_eq!(experiment.seed, 42);
    assert_eq!(experiment.challenger_weight, 0.3);
    assert_eq!(experiment.weight_updated_at(), start() + Duration::hours(8));
    let periods = &experiment.periods;
    assert_eq!(periods.len(), 3);
    for pair in periods.windows(2) {
        assert_eq!(pair[0].ended_at, Some(pair[1].started_at));
    }
    assert_eq!(periods[2].ended_at, None);
    let weights: Vec<(f64, WeightSource)> = periods
        .iter()
        .map(|p| (p.challenger_weight, p.source))
        .collect();
    assert_eq!(
        weights,
        [
            (0.1, WeightSource::Initial),
            (0.5, WeightSource::Manual),
            (0.3, WeightSource::Bandit)
        ]
    );
    assert!((f.store.champion().unwrap().unwrap().traffic_weight - 0.7).abs() < 1e-12);
    assert_eq!(f.store.model_version("v2").unwrap().traffic_weight, 0.3);
    let set_weight = f
        .store
        .events(&EventFilter {
            kinds: vec![EventKind::SetWeight],
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(
        set_weight
            .iter()
            .map(|e| e.weight.unwrap())
            .collect::<Vec<_>>(),
        [0.5, 0.3]
    );
    assert_eq!(set_weight[1].reason, "thompson");
}

fn promote_swaps_roles_atomically_and_keeps_history(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.clock.advance(Duration::hours(50));
    let experiment = f.store.promote(id, &note("operator")).unwrap();
    let at = start() + Duration::hours(51);
    assert_eq!(experiment.status, ExperimentStatus::Promoted);
    assert_eq!(experiment.ended_at, Some(at));
    assert_eq!(experiment.periods.last().unwrap().ended_at, Some(at));
    assert!(f.store.running_experiment().unwrap().is_none());
    let champion = f.store.champion().unwrap().unwrap();
    assert_eq!(
        (
            champion.name.as_str(),
            champion.traffic_weight,
            champion.promoted_at
        ),
        ("v2", 1.0, Some(at))
    );
    let v1 = f.store.model_version("v1").unwrap();
    assert_eq!(
        (v1.status, v1.traffic_weight, v1.retired_at),
        (VersionStatus::Retired, 0.0, Some(at))
    );
    let versions = f.store.model_versions().unwrap();
    assert_eq!(
        versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["v1", "v2"]
    );
    let last = f
        .store
        .events(&EventFilter {
            newest_first: true,
            limit: Some(1),
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(
        (
            last[0].kind,
            last[0].model.as_deref(),
            last[0].reason.as_str()
        ),
        (EventKind::Promote, Some("v2"), "operator")
    );

    // The next experiment runs against the new champion.
    let next = f
        .store
        .deploy_challenger(&NewModelVersion::new("v3", "/m3"), 0.2, u64::MAX, &note(""))
        .unwrap();
    assert_eq!(next.champion, "v2");
    assert_eq!(next.seed, u64::MAX, "the whole u64 range round-trips");
    assert_eq!(f.store.experiments().unwrap().len(), 2);
}

fn rollback_retires_the_challenger_and_restores_full_traffic(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.clock.advance(Duration::hours(3));
    let experiment = f.store.rollback(id, &note("latency guardrail")).unwrap();
    assert_eq!(experiment.status, ExperimentStatus::RolledBack);
    let champion = f.store.champion().unwrap().unwrap();
    assert_eq!(
        (
            champion.name.as_str(),
            champion.traffic_weight,
            champion.promoted_at
        ),
        ("v1", 1.0, Some(start()))
    );
    let v2 = f.store.model_version("v2").unwrap();
    assert_eq!(
        (v2.status, v2.traffic_weight),
        (VersionStatus::Retired, 0.0)
    );
    assert_eq!(v2.retired_at, Some(start() + Duration::hours(4)));
}

fn decisions_store_state_and_can_apply_their_transition_in_one_transaction(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.clock.advance(Duration::hours(1));
    let statistics = Some(r#"{"p":0.5}"#.to_string());
    let looked = EventNote {
        reason: "waiting for samples".into(),
        statistics: statistics.clone(),
    };
    let event = f
        .store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[state("quality", 0.5), state("latency", 0.9)],
            &looked,
            true,
        )
        .unwrap();
    assert_eq!(
        (event.kind, event.decision),
        (EventKind::Decision, Some(Decision::KeepTesting))
    );
    assert_eq!(event.statistics, statistics);
    assert!(
        f.store.running_experiment().unwrap().is_some(),
        "keep testing applies nothing"
    );

    // A later look replaces the states it names and keeps the others.
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[state("quality", 0.2)],
            &note("look 2"),
            false,
        )
        .unwrap();
    let states = f.store.sequential_states(id).unwrap();
    assert_eq!(
        states
            .iter()
            .map(|s| (s.metric.as_str(), s.p_better))
            .collect::<Vec<_>>(),
        [("latency", 0.9), ("quality", 0.2)]
    );
    assert_eq!(states[1], state("quality", 0.2));

    // Promote without applying: recorded, nothing changes.
    f.store
        .record_decision(
            id,
            Decision::Promote,
            &[],
            &note("auto promotion disabled"),
            false,
        )
        .unwrap();
    assert!(f.store.running_experiment().unwrap().is_some());
    // Applied: the decision row and the promotion row are written together.
    f.store
        .record_decision(
            id,
            Decision::Promote,
            &[state("quality", 0.01)],
            &note("quality +4%"),
            true,
        )
        .unwrap();
    assert_eq!(f.store.champion().unwrap().unwrap().name, "v2");
    assert_eq!(
        event_kinds(f.store.as_ref())[2..],
        [
            (EventKind::Decision, Some(Decision::KeepTesting)),
            (EventKind::Decision, Some(Decision::KeepTesting)),
            (EventKind::Decision, Some(Decision::Promote)),
            (EventKind::Decision, Some(Decision::Promote)),
            (EventKind::Promote, Some(Decision::Promote)),
        ]
    );
    // Ended experiments keep their state for history.
    assert_eq!(f.store.sequential_states(id).unwrap()[1].p_better, 0.01);
    let by_experiment = f
        .store
        .events(&EventFilter {
            experiment_id: Some(id),
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(by_experiment.len(), 6, "deploy + 4 decisions + promote");
}

/// A judge other than the default keeps its own state as opaque text: given back byte for
/// byte (key order, number spelling, whitespace and non-ASCII included), replaced by a later
/// look, cleared by a state without it, and refused above the field limit with nothing
/// written.
fn a_judges_own_state_round_trips_exactly_and_is_bounded(factory: &dyn Factory) {
    let (f, id) = running(factory);
    let json = r#"{"z": 1, "a": [0.1000000000000000055511151231257827, 1e-300, -0.0],
 "posterior": {"alpha": 1e308, "beta": 3}, "note": "thumbs \u2191 ↑ \"quoted\"\t"}"#;
    let mine = SequentialState {
        state: Some(json.to_string()),
        ..SequentialState::custom(
            "bayes.positive_rate",
            1,
            "",
            start(),
            start() + Duration::minutes(90),
        )
    };
    assert_eq!((mine.p_better, mine.p_worse, mine.tau), (1.0, 1.0, 0.0));
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[mine.clone(), state("quality", 0.5)],
            &note("look 1"),
            false,
        )
        .unwrap();
    let stored = f.store.sequential_states(id).unwrap();
    assert_eq!(stored, [mine.clone(), state("quality", 0.5)]);
    assert_eq!(stored[0].state.as_deref(), Some(json), "byte for byte");
    assert_eq!(stored[1].state, None, "the default judge's state has none");

    // An empty text is kept as empty, not as none; a later look replaces the text.
    let empty = SequentialState::custom("bayes.empty", 1, "", start(), start());
    let second = SequentialState {
        n_looks: 2,
        state: Some(r#"{"looks":2}"#.into()),
        ..mine.clone()
    };
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[second.clone(), empty.clone()],
            &note("look 2"),
            false,
        )
        .unwrap();
    assert_eq!(
        f.store.sequential_states(id).unwrap(),
        [empty.clone(), second.clone(), state("quality", 0.5)]
    );
    // A state that carries none clears it.
    let cleared = SequentialState {
        state: None,
        ..second.clone()
    };
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            std::slice::from_ref(&cleared),
            &note("look 3"),
            false,
        )
        .unwrap();
    assert_eq!(f.store.sequential_states(id).unwrap()[1], cleared);

    // Oversize: refused naming the field, and nothing of the call is written.
    let events = event_kinds(f.store.as_ref()).len();
    let limit = crate::DEFAULT_MAX_FIELD_BYTES;
    let big = SequentialState {
        state: Some(format!("\"{}\"", "x".repeat(limit - 1))),
        ..second.clone()
    };
    let err = f
        .store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[state("quality", 0.1), big],
            &note("look 4"),
            false,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(field_of(err), "state");
    assert_eq!(event_kinds(f.store.as_ref()).len(), events);
    assert_eq!(
        f.store.sequential_states(id).unwrap(),
        [empty, cleared, state("quality", 0.5)]
    );
    // At the limit it is kept.
    let full = SequentialState {
        state: Some("x".repeat(limit)),
        ..mine
    };
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            std::slice::from_ref(&full),
            &note("look 5"),
            false,
        )
        .unwrap();
    assert_eq!(f.store.sequential_states(id).unwrap()[1], full);
}

fn an_applied_rollback_decision_rolls_back(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.store
        .record_decision(id, Decision::Rollback, &[], &note("quality -10%"), true)
        .unwrap();
    assert_eq!(
        f.store.experiment(id).unwrap().status,
        ExperimentStatus::RolledBack
    );
    let last = f
        .store
        .events(&EventFilter {
            newest_first: true,
            limit: Some(1),
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(
        (last[0].kind, last[0].decision, last[0].reason.as_str()),
        (
            EventKind::Rollback,
            Some(Decision::Rollback),
            "quality -10%"
        )
    );
}

/// A handle opened after the first is dropped reads the same state.
fn state_survives_reopening(factory: &dyn Factory) {
    let (f, id) = running(factory);
    f.store
        .set_challenger_weight(id, 0.25, WeightSource::Manual, &note(""))
        .unwrap();
    f.store
        .record_decision(
            id,
            Decision::KeepTesting,
            &[state("quality", 0.3)],
            &note(""),
            false,
        )
        .unwrap();
    let before = (
        f.store.running_experiment().unwrap(),
        f.store.model_versions().unwrap(),
        f.store.events(&EventFilter::default()).unwrap(),
    );
    let Some(open) = f.open.as_ref() else {
        println!("    (the backend opens no other handle: reopening not checked)");
        return;
    };
    drop(f.store);
    let reopened = open();
    let after = (
        reopened.running_experiment().unwrap(),
        reopened.model_versions().unwrap(),
        reopened.events(&EventFilter::default()).unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(
        reopened.sequential_states(id).unwrap(),
        [state("quality", 0.3)]
    );
}

fn racing_promote_and_rollback_exactly_one_wins(factory: &dyn Factory) {
    for round in 0..10 {
        let (f, id) = running(factory);
        let store = &f.store;
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| store.promote(id, &note("a")));
            let b = s.spawn(|| store.rollback(id, &note("b")));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(
            a.is_ok() != b.is_ok(),
            "round {round}: exactly one must win"
        );
        let loser = a.err().or(b.err()).unwrap();
        assert_eq!(loser.kind(), ErrorKind::Conflict);
        let ends = f
            .store
            .events(&EventFilter {
                kinds: vec![EventKind::Promote, EventKind::Rollback],
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(ends.len(), 1);
        let champions = f
            .store
            .model_versions()
            .unwrap()
            .iter()
            .filter(|v| v.status == VersionStatus::Champion)
            .count();
        assert_eq!(champions, 1);
    }
}

fn set_champion_retires_the_previous_one(factory: &dyn Factory) {
    let f = fresh(factory, start());
    f.store
        .set_champion(&NewModelVersion::new("v1", "/m1"), &note(""))
        .unwrap();
    f.clock.advance(Duration::days(1));
    let v2 = f
        .store
        .set_champion(
            &NewModelVersion::new("v2", "/m2"),
            &note("manual replacement"),
        )
        .unwrap();
    assert_eq!(
        (v2.status, v2.traffic_weight),
        (VersionStatus::Champion, 1.0)
    );
    let v1 = f.store.model_version("v1").unwrap();
    assert_eq!(
        (v1.status, v1.retired_at),
        (VersionStatus::Retired, Some(start() + Duration::days(1)))
    );
    assert_eq!(f.store.champion().unwrap().unwrap().name, "v2");
}

/// A version's name becomes the `model` of its records and a metric label, and its model
/// path comes from a trainer's output: both are bounded (a 1 MB name grew every scrape).
fn version_names_and_model_paths_are_bounded(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let field = |version: NewModelVersion| match f.store.set_champion(&version, &note("x")) {
        Err(crate::StoreError::InvalidInput { field, .. }) => Some(field),
        Err(other) => panic!("{other}"),
        Ok(_) => None,
    };
    assert_eq!(
        field(NewModelVersion::new("n".repeat(257), "/models/a")),
        Some("name")
    );
    assert_eq!(
        field(NewModelVersion::new("a", format!("/{}", "p".repeat(4096)))),
        Some("model_path")
    );
    assert_eq!(
        field(NewModelVersion::new("n".repeat(256), "/models/b")),
        None
    );
}

fn event_counts_equal_the_rows_of_each_kind(factory: &dyn Factory) {
    let f = fresh(factory, utc(2026, 4, 1, 9, 0, 0));
    let store = f.store.as_ref();
    let note = EventNote::reason("test");
    let kinds = [
        EventKind::SetChampion,
        EventKind::Deploy,
        EventKind::SetWeight,
        EventKind::Promote,
        EventKind::Rollback,
        EventKind::Decision,
    ];
    let assert_counts = |store: &dyn TestStore| {
        for kind in kinds {
            let rows = store
                .events(&EventFilter {
                    kinds: vec![kind],
                    ..EventFilter::default()
                })
                .unwrap()
                .len() as u64;
            assert_eq!(store.count_events(kind).unwrap(), rows, "{}", kind.as_str());
        }
    };
    assert_counts(store);
    store
        .set_champion(&NewModelVersion::new("c1", "/m/c1"), &note)
        .unwrap();
    for (i, promote) in [(2, true), (3, false), (4, true)] {
        let e = store
            .deploy_challenger(&NewModelVersion::new(format!("c{i}"), "/m"), 0.2, 7, &note)
            .unwrap();
        f.clock.advance(Duration::minutes(10));
        store
            .set_challenger_weight(e.id, 0.4, WeightSource::Manual, &note)
            .unwrap();
        let decision = if promote {
            Decision::Promote
        } else {
            Decision::Rollback
        };
        store
            .record_decision(e.id, decision, &[], &note, true)
            .unwrap();
        f.clock.advance(Duration::minutes(10));
    }
    assert_counts(store);
    assert_eq!(store.count_events(EventKind::Promote).unwrap(), 2);
    assert_eq!(store.count_events(EventKind::Rollback).unwrap(), 1);
    assert_eq!(store.count_events(EventKind::Deploy).unwrap(), 3);
}

/// `afs migrate`'s copy of the experiment store carries every sequential state whole, a
/// judge's own `state` text included. `source` and `dest` are fresh stores of any backends
/// (driven by clocks at [`start`] or later); the source gets an experiment with states of
/// the default judge and of another, the destination is restored from it.
pub fn restore_keeps_sequential_states<D>(source: &dyn TestStore, dest: &D)
where
    D: TestStore + crate::RestoreStore + ?Sized,
{
    source
        .set_champion(&NewModelVersion::new("v1", "/models/v1"), &note("first"))
        .unwrap();
    let id = source
        .deploy_challenger(&NewModelVersion::new("v2", "/models/v2"), 0.5, 9, &note(""))
        .unwrap()
        .id;
    let json = r#"{"alpha":[12, 30.5],"beta":[8,4], "note":"↑ \"x\""}"#;
    let states = [
        SequentialState::custom("bayes.positive_rate", 4, json, start(), start()),
        state("quality", 0.25),
    ];
    source
        .record_decision(id, Decision::KeepTesting, &states, &note("look"), false)
        .unwrap();
    let experiments = source.experiments().unwrap();
    let dump = crate::ExperimentDump {
        versions: source.model_versions().unwrap(),
        states: experiments
            .iter()
            .map(|e| (e.id, source.sequential_states(e.id).unwrap()))
            .collect(),
        experiments,
        events: source.events(&EventFilter::default()).unwrap(),
        covariates: Vec::new(),
    };
    dest.restore_experiments(&dump).unwrap();
    let copied = dest.sequential_states(id).unwrap();
    assert_eq!(copied, source.sequential_states(id).unwrap());
    assert_eq!(copied[0].state.as_deref(), Some(json));
    assert_eq!(copied[1].state, None);
}
