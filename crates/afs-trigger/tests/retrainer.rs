//! The retrainer end to end on a real store: real datasets, real trainer processes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use afs_datagen::GeneratorConfig;
use afs_store::{FeedbackValue, ManualClock, NewRun, NewUsage, RunStatus, RunStore, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_trigger::{
    AutoRetrainer, CommandTrainer, FnTrainer, RetrainOutcome, RetrainTrigger, RetrainerConfig,
    TrainJob, TrainOutput, Trainer, TriggerConfig,
};
use chrono::{TimeZone, Utc};

fn store_with_traffic(dir: &Path, n: usize) -> SqliteStore {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap(),
    ));
    let store = SqliteStore::open(SqliteConfig::new(dir.join("afs.db")), clock).unwrap();
    let ids = store
        .log_batch(
            (0..n)
                .map(|i| NewUsage {
                    quality_score: Some(0.9),
                    ..NewUsage::new(
                        format!("question number {i}"),
                        format!("a helpful answer number {i}"),
                        "m1",
                    )
                })
                .collect(),
        )
        .unwrap();
    for id in ids {
        store
            .record_feedback(&id, FeedbackValue::Positive, None)
            .unwrap();
    }
    store
}

fn retrainer(dir: &Path, min_samples: u64) -> AutoRetrainer {
    let trigger = RetrainTrigger::new(TriggerConfig {
        min_new_samples: 10,
        ..TriggerConfig::default()
    })
    .unwrap();
    let config = RetrainerConfig {
        min_samples_for_retrain: min_samples,
        output_dir: dir.join("out"),
        ..RetrainerConfig::default()
    };
    AutoRetrainer::new(trigger, GeneratorConfig::default(), config)
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    format!("sh {}", path.display())
}

fn shell(command: String, timeout_ms: u64) -> CommandTrainer {
    CommandTrainer::shell(command, Duration::from_millis(timeout_ms))
}

#[test]
fn a_command_trainer_that_succeeds_gets_the_dataset_and_its_result_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 30);
    // The trainer checks its inputs, writes a model, and reports on its last stdout line.
    let cmd = script(
        dir.path(),
        "train.sh",
        r#"test -s "$1" || exit 3
test "$1" = "$AFS_DATA_PATH" || exit 4
lines=$(wc -l < "$1")
echo "training on $lines samples"
echo weights > "$2/model.bin"
echo "{\"model_path\": \"$2/model.bin\", \"loss\": 0.25, \"samples\": $lines, \"run\": \"$AFS_RUN_ID\"}""#,
    );
    let trainer = shell(format!("{cmd} {{data}} {{output_dir}}"), 30_000);
    let outcome = retrainer(dir.path(), 5)
        .check_and_retrain(&store, &trainer, false)
        .unwrap();
    let RetrainOutcome::Completed {
        run,
        output,
        dataset,
        trigger,
    } = outcome
    else {
        panic!("expected completed, got {outcome:?}")
    };
    assert_eq!(trigger.trigger_type.unwrap().as_str(), "sample_count");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(dataset.final_count, 30);
    assert!(
        output.model_path.ends_with("model/model.bin"),
        "{}",
        output.model_path
    );
    assert!(Path::new(&output.model_path).exists());
    assert_eq!(output.metrics["loss"], 0.25);
    assert_eq!(output.metrics["samples"], 30);
    assert_eq!(output.metrics["run"], run.id.as_str());
    let stored = store.run(&run.id).unwrap();
    assert_eq!(stored.n_samples, Some(30));
    assert!(
        stored
            .dataset_manifest
            .unwrap()
            .contains(&dataset.output_blake3),
        "the run keeps the dataset's manifest"
    );
    assert!(stored.metrics.unwrap().contains("0.25"));
    let log = std::fs::read_to_string(Path::new(&run.run_dir).join("trainer.stdout.log")).unwrap();
    assert!(log.contains("training on 30 samples"), "{log}");

    // The next check is in cooldown: nothing runs.
    let again = retrainer(dir.path(), 5)
        .check_and_retrain(&store, &trainer, false)
        .unwrap();
    assert!(
        matches!(again, RetrainOutcome::NotTriggered(ref r) if r.reason.contains("cooldown")),
        "{again:?}"
    );
}

#[test]
fn a_result_file_is_preferred_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let cmd = script(
        dir.path(),
        "t.sh",
        r#"echo '{"model_path": "from-file", "acc": 0.9}' > "$AFS_RESULT_PATH"; echo not json"#,
    );
    let outcome = retrainer(dir.path(), 5)
        .check_and_retrain(&store, &shell(cmd, 30_000), false)
        .unwrap();
    let RetrainOutcome::Completed { output, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(output.model_path, "from-file");
}

/// A trainer for runs that must end before training: it panics if called.
fn never_called() -> impl Trainer {
    FnTrainer(|_: &TrainJob| -> Result<TrainOutput, String> { panic!("must not be called") })
}

fn failed_run(outcome: RetrainOutcome) -> afs_store::RetrainRun {
    match outcome {
        RetrainOutcome::Failed { run, .. } => run,
        other => panic!("expected a failed run, got {other:?}"),
    }
}

#[test]
fn a_trainer_that_exits_non_zero_fails_the_run_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let cmd = script(dir.path(), "t.sh", "echo 'CUDA out of memory' >&2; exit 7");
    let run = failed_run(
        retrainer(dir.path(), 5)
            .check_and_retrain(&store, &shell(cmd, 30_000), true)
            .unwrap(),
    );
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("exit code 7") && error.contains("CUDA out of memory"),
        "{error}"
    );
    assert_eq!(run.model_path, None);
}

#[test]
fn a_trainer_that_prints_garbage_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    for (name, body, expect) in [
        ("a.sh", "echo 'all done!'", "not JSON"),
        ("b.sh", "echo '{\"loss\": 1}'", "model_path is missing"),
        ("c.sh", "true", "nothing on stdout"),
    ] {
        let cmd = script(dir.path(), name, body);
        let run = failed_run(
            retrainer(dir.path(), 5)
                .check_and_retrain(&store, &shell(cmd, 30_000), true)
                .unwrap(),
        );
        assert!(
            run.error.as_deref().unwrap().contains(expect),
            "{name}: {:?}",
            run.error
        );
    }
}

#[test]
fn a_trainer_that_hangs_is_stopped_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let marker = dir.path().join("child-survived");
    // The trainer starts a grandchild; both must be stopped (the process group is killed).
    let cmd = script(
        dir.path(),
        "hang.sh",
        &format!("(sleep 3 && touch {}) &\nsleep 60", marker.display()),
    );
    let run = failed_run(
        retrainer(dir.path(), 5)
            .check_and_retrain(&store, &shell(cmd, 300), true)
            .unwrap(),
    );
    assert_eq!(run.status, RunStatus::TimedOut);
    assert!(run.error.unwrap().contains("timed out"));
    // The run is not left running: another may start.
    assert!(store
        .last_run_with_status(RunStatus::Running)
        .unwrap()
        .is_none());
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!marker.exists(), "the trainer's child outlived the timeout");
}

#[test]
fn an_interrupted_trainer_is_stopped_with_its_children_and_recorded_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let marker = dir.path().join("child-survived");
    let started = dir.path().join("started");
    let cmd = script(
        dir.path(),
        "long.sh",
        &format!(
            "touch {}\n(sleep 3 && touch {}) &\nsleep 60",
            started.display(),
            marker.display()
        ),
    );
    let flag = Arc::new(AtomicBool::new(false));
    let trainer = shell(cmd, 120_000).interrupt_on(flag.clone());
    let raiser = {
        let started = started.clone();
        std::thread::spawn(move || {
            while !started.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            flag.store(true, Ordering::SeqCst);
        })
    };
    let run = failed_run(
        retrainer(dir.path(), 5)
            .check_and_retrain(&store, &trainer, true)
            .unwrap(),
    );
    raiser.join().unwrap();
    assert_eq!(run.status, RunStatus::Interrupted);
    assert!(run.error.unwrap().contains("interrupted"));
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        !marker.exists(),
        "the trainer's child outlived the interrupt"
    );
    // A flag already set: the command is not started at all.
    let flagged = shell(
        script(
            dir.path(),
            "never.sh",
            &format!("touch {}", marker.display()),
        ),
        120_000,
    )
    .interrupt_on(Arc::new(AtomicBool::new(true)));
    let run = failed_run(
        retrainer(dir.path(), 5)
            .check_and_retrain(&store, &flagged, true)
            .unwrap(),
    );
    assert_eq!(run.status, RunStatus::Interrupted);
    assert!(!marker.exists());
}

#[test]
fn closures_train_and_panics_are_recorded_as_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let ok = FnTrainer(|job: &TrainJob| {
        let text = std::fs::read_to_string(&job.dataset_path).map_err(|e| e.to_string())?;
        let mut metrics = serde_json::Map::new();
        metrics.insert("lines".into(), text.lines().count().into());
        Ok(TrainOutput {
            model_path: job.output_dir.join("m").to_string_lossy().into_owned(),
            metrics,
        })
    });
    let outcome = retrainer(dir.path(), 5)
        .check_and_retrain(&store, &ok, true)
        .unwrap();
    let RetrainOutcome::Completed { output, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(output.metrics["lines"], 20);

    struct Panicking;
    impl Trainer for Panicking {
        fn train(&self, _: &TrainJob) -> Result<TrainOutput, afs_trigger::TrainError> {
            panic!("boom in trainer")
        }
    }
    let run = failed_run(
        retrainer(dir.path(), 5)
            .check_and_retrain(&store, &Panicking, true)
            .unwrap(),
    );
    assert!(run.error.unwrap().contains("boom in trainer"));
}

#[test]
fn a_stop_during_generation_records_the_run_as_interrupted_and_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let never = never_called();
    let stop = Arc::new(AtomicBool::new(false));
    let retrainer = retrainer(dir.path(), 5).stop_generation_on(stop.clone());
    stop.store(true, Ordering::SeqCst);
    let run = failed_run(retrainer.check_and_retrain(&store, &never, true).unwrap());
    assert_eq!(run.status, RunStatus::Interrupted);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("interrupted while generating the training data"),
        "{run:?}"
    );
    assert_eq!(run.dataset_path, None);
    // The run's directory (made before generation starts) holds no dataset, finished or
    // not.
    let left: Vec<_> = std::fs::read_dir(&run.run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Cleared, the next run generates and trains.
    stop.store(false, Ordering::SeqCst);
    let ok = FnTrainer(|job: &TrainJob| {
        Ok(TrainOutput {
            model_path: job.output_dir.join("m").to_string_lossy().into_owned(),
            metrics: serde_json::Map::new(),
        })
    });
    let outcome = retrainer.check_and_retrain(&store, &ok, true).unwrap();
    assert!(
        matches!(outcome, RetrainOutcome::Completed { .. }),
        "{outcome:?}"
    );
}

#[test]
fn too_few_samples_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    let never = never_called();
    let outcome = retrainer(dir.path(), 100)
        .check_and_retrain(&store, &never, true)
        .unwrap();
    let RetrainOutcome::Refused { run, dataset, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(dataset.final_count, 20);
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run
        .error
        .unwrap()
        .contains("fewer than min_samples_for_retrain (100)"));
}

#[test]
fn only_one_retrain_runs_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_traffic(dir.path(), 20);
    // This process already holds a running run (as another retrainer would).
    let held = store
        .begin_run(NewRun {
            id: None,
            trigger_type: "manual".into(),
            trigger: "{}".into(),
            run_dir: "x".into(),
        })
        .unwrap();
    let never = never_called();
    let outcome = retrainer(dir.path(), 5)
        .check_and_retrain(&store, &never, true)
        .unwrap();
    match outcome {
        RetrainOutcome::AlreadyRunning { reason, .. } => {
            assert!(reason.contains(&held.id), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
