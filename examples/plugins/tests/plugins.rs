//! The plug-ins of this crate running inside afs: generation writing with a format of its
//! own, and the trigger checker firing on a policy of its own, on a real SQLite store.

use std::sync::Arc;

use afs_datagen::{generate_with, Format, GeneratorConfig, HeuristicScorer, Hooks};
use afs_example_plugins::{MessagesFormat, NegativeBurst};
use afs_store::{ErrorKind, Feedback, FeedbackValue, ManualClock, NewUsage, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_trigger::{
    record_retrain_started, RetrainTrigger, TriggerConfig, TriggerState, TriggerType,
};
use chrono::{Duration, TimeZone, Utc};

fn store(dir: &tempfile::TempDir) -> (SqliteStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    ));
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone()).unwrap();
    (store, clock)
}

fn rated(i: usize, value: FeedbackValue) -> NewUsage {
    NewUsage {
        quality_score: Some(0.9),
        feedback: Some(Feedback {
            value,
            text: None,
            at: None,
        }),
        ..NewUsage::new(
            format!("question {i}?"),
            format!("answer {i}\nline two"),
            "m1",
        )
    }
}

#[test]
fn generation_writes_with_a_format_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store(&dir);
    store
        .log_batch((0..20).map(|i| rated(i, FeedbackValue::Positive)).collect())
        .unwrap();
    let out = dir.path().join("train.jsonl");
    let config = GeneratorConfig {
        system_prompt: Some("Be brief.".into()),
        ..GeneratorConfig::default()
    };
    let hooks = Hooks {
        formatter: Some(&MessagesFormat),
        ..Hooks::default()
    };
    let result = generate_with(&store, &config, &out, &HeuristicScorer, hooks).unwrap();
    assert_eq!(result.formatter.as_deref(), Some("openai-messages"));
    assert_eq!(result.final_count, 20);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    for line in &lines {
        let object = line.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["messages"]);
        let roles: Vec<&str> = line["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(line["messages"][0]["content"], "Be brief.");
    }
    assert!(lines
        .iter()
        .any(|l| l["messages"][2]["content"] == "answer 3\nline two"));
    // The manifest names the formatter that wrote the lines, beside the configured format
    // whose kind of example it wrote.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(afs_datagen::manifest_path(&out)).unwrap())
            .unwrap();
    assert_eq!(manifest["config"]["format"], "chatml");
    assert_eq!(manifest["result"]["formatter"], "openai-messages");
}

#[test]
fn a_format_of_another_kind_than_the_run_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store(&dir);
    store.log(rated(1, FeedbackValue::Positive)).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let config = GeneratorConfig {
        format: Format::Dpo,
        ..GeneratorConfig::default()
    };
    let hooks = Hooks {
        formatter: Some(&MessagesFormat),
        ..Hooks::default()
    };
    let err = generate_with(&store, &config, &out, &HeuristicScorer, hooks).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let message = err.to_string();
    assert!(
        message.contains("openai-messages writes sft examples"),
        "{message}"
    );
    assert!(!out.exists());
}

#[test]
fn the_checker_fires_on_a_policy_of_its_own_and_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store(&dir);
    // Only the plug-in decides: every configured policy is off.
    let config = TriggerConfig {
        enable_sample_count: false,
        enable_scheduled: false,
        enable_quality_drop: false,
        enable_page_hinkley: false,
        enable_error_rate: false,
        cooldown_hours: 6.0,
        ..TriggerConfig::default()
    };
    let trigger = RetrainTrigger::new(config)
        .unwrap()
        .with_policy(Box::new(NegativeBurst { min_negatives: 5 }));

    store
        .log_batch((0..4).map(|i| rated(i, FeedbackValue::Negative)).collect())
        .unwrap();
    clock.advance(Duration::minutes(1));
    let quiet = trigger.check(&store, false).unwrap();
    assert!(!quiet.triggered, "{}", quiet.reason);
    assert_eq!(quiet.metrics["negative_burst.negatives_last_hour"], 4.0);

    store
        .log_batch((4..9).map(|i| rated(i, FeedbackValue::Negative)).collect())
        .unwrap();
    clock.advance(Duration::minutes(1));
    let burst = trigger.check(&store, false).unwrap();
    assert!(burst.triggered, "{}", burst.reason);
    assert_eq!(
        burst.trigger_type,
        Some(TriggerType::Custom("negative_burst"))
    );
    let json = serde_json::to_value(&burst).unwrap();
    assert_eq!(json["trigger_type"], "negative_burst");
    // Its state was saved with the trigger state, under its name.
    let state = TriggerState::load(&store).unwrap();
    assert_eq!(state.custom["negative_burst"]["negatives"], 9);

    // The same burst does not fire twice; and the cooldown applies to it as to any policy.
    clock.advance(Duration::minutes(1));
    assert!(!trigger.check(&store, false).unwrap().triggered);
    record_retrain_started(&store).unwrap();
    store
        .log_batch((9..20).map(|i| rated(i, FeedbackValue::Negative)).collect())
        .unwrap();
    clock.advance(Duration::minutes(1));
    let cooling = trigger.check(&store, false).unwrap();
    assert!(!cooling.triggered);
    assert!(
        cooling
            .reason
            .contains("would have triggered: negative_burst"),
        "{}",
        cooling.reason
    );
}

/// The policy plugged into the continuous loop: an iteration retrains because of it, and the
/// run history names it.
#[test]
fn the_loop_retrains_on_a_policy_of_its_own() {
    use afs_loop::{ContinuousLearningLoop, LoopConfig, RetrainStep};
    use afs_store::{NewModelVersion, RunStore};
    use afs_trigger::{FnTrainer, RetrainerConfig, TrainJob, TrainOutput};

    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store(&dir);
    let store = Arc::new(store);
    let config = LoopConfig {
        trigger: TriggerConfig {
            enable_sample_count: false,
            enable_scheduled: false,
            enable_quality_drop: false,
            enable_page_hinkley: false,
            enable_error_rate: false,
            ..TriggerConfig::default()
        },
        retrainer: RetrainerConfig {
            min_samples_for_retrain: 10,
            output_dir: dir.path().join("runs"),
            ..RetrainerConfig::default()
        },
        initial_champion: Some(NewModelVersion::new("m1", "/models/m1")),
        ..LoopConfig::default()
    };
    let trainer = FnTrainer(|job: &TrainJob| {
        let path = job.output_dir.join("model.bin");
        std::fs::write(&path, b"weights").map_err(|e| e.to_string())?;
        Ok(TrainOutput {
            model_path: path.to_string_lossy().into_owned(),
            metrics: serde_json::Map::new(),
        })
    });
    let learning = ContinuousLearningLoop::new(store.clone(), config, Box::new(trainer))
        .unwrap()
        .with_trigger_policy(Arc::new(NegativeBurst { min_negatives: 5 }));
    store
        .log_batch((0..30).map(|i| rated(i, FeedbackValue::Positive)).collect())
        .unwrap();
    clock.advance(Duration::minutes(1));
    let quiet = learning.run_iteration().unwrap();
    assert!(
        matches!(quiet.retrain, RetrainStep::NotTriggered { .. }),
        "{:?}",
        quiet.retrain
    );
    store
        .log_batch(
            (30..36)
                .map(|i| rated(i, FeedbackValue::Negative))
                .collect(),
        )
        .unwrap();
    clock.advance(Duration::minutes(1));
    let burst = learning.run_iteration().unwrap();
    assert!(
        !matches!(burst.retrain, RetrainStep::NotTriggered { .. }),
        "{:?}",
        burst.retrain
    );
    let runs = store.runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trigger_type, "negative_burst");
}
