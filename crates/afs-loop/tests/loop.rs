//! The loop over a real SQLite store in a temp dir with a manual clock and closure trainers:
//! iterations, deferral, failures and panics, the evaluation gate, deployment rules,
//! `run_loop` and stopping, the persisted status.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_abtest::{AbTestConfig, Comparison, Judge, JudgeInput, SequentialJudge};
use afs_datagen::GeneratorConfig;
use afs_loop::{
    status_summary, ContinuousLearningLoop, DeployStep, EvalGate, InProgress, IterationOptions,
    LoopConfig, LoopError, LoopState, RetrainStep, StopReason,
};
use afs_store::{
    Clock, Decision, ErrorKind, ExperimentStatus, ExperimentStore, Feedback, FeedbackValue,
    ManualClock, NewModelVersion, NewUsage, RunStatus, RunStore, VersionStatus,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_trigger::{
    FnTrainer, RetrainerConfig, TrainJob, TrainOutput, Trainer, TriggerConfig, TriggerState,
};
use chrono::{DateTime, TimeZone, Utc};

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<SqliteStore>,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone()).unwrap(),
    );
    Fixture { dir, clock, store }
}

impl Fixture {
    /// Retrain after 50 new samples (cooldown 1 h), datasets of thumbs-up records of quality
    /// 0.7 or more, challengers on half the traffic, promotion after 2 h with 50 requests and
    /// 10 feedback events per arm; champion `m-v1`.
    fn config(&self) -> LoopConfig {
        LoopConfig {
            trigger: TriggerConfig {
                min_new_samples: 50,
                enable_scheduled: false,
                enable_quality_drop: false,
                cooldown_hours: 1.0,
                ..TriggerConfig::default()
            },
            generator: GeneratorConfig {
                redact: false,
                ..GeneratorConfig::default()
            },
            abtest: AbTestConfig {
                initial_challenger_traffic: 0.5,
                min_duration_hours: 2.0,
                min_samples_per_version: 50,
                min_feedback_per_version: 10,
                ..AbTestConfig::default()
            },
            retrainer: RetrainerConfig {
                min_samples_for_retrain: 5,
                output_dir: self.dir.path().join("out"),
                ..RetrainerConfig::default()
            },
            initial_champion: Some(NewModelVersion::new("m-v1", "/models/m-v1")),
            ..LoopConfig::default()
        }
    }

    fn new_loop(
        &self,
        config: LoopConfig,
        trainer: Box<dyn Trainer>,
    ) -> ContinuousLearningLoop<SqliteStore> {
        ContinuousLearningLoop::new(self.store.clone(), config, trainer)
            .unwrap()
            .with_routing_seed(7)
    }

    fn advance_hours(&self, hours: i64) {
        self.clock.advance(chrono::Duration::hours(hours));
    }
}

/// A trainer that writes `model.bin` into its output directory and counts its calls.
fn file_trainer(calls: Arc<AtomicUsize>) -> Box<dyn Trainer> {
    Box::new(FnTrainer(move |job: &TrainJob| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            job.dataset_path.exists(),
            "the dataset must exist when the trainer runs"
        );
        let path = job.output_dir.join("model.bin");
        std::fs::write(&path, b"weights").map_err(|e| e.to_string())?;
        Ok(TrainOutput {
            model_path: path.to_string_lossy().into_owned(),
            metrics: serde_json::Map::new(),
        })
    }))
}

fn counting_trainer() -> (Box<dyn Trainer>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (file_trainer(calls.clone()), calls)
}

/// Logs `n` requests in the hour before the clock, routed by the loop to units `u0-h<hour>..`
/// (new users every hour, so that an experiment's evidence grows with its units):
/// quality alternating ±0.1 around the serving model's mean, latency 800 ± 100 ms, every
/// second request rated (thumbs up for the first `mean × 10` of each ten ratings).
fn traffic(
    learning: &ContinuousLearningLoop<SqliteStore>,
    clock: &ManualClock,
    n: usize,
    mean_of: &dyn Fn(&str) -> f64,
) {
    let now = clock.now();
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let unit = format!("u{i}-h{}", now.timestamp() / 3600);
        let route = learning.route(Some(&unit)).unwrap();
        let mean = mean_of(&route.model);
        let offset = if i % 2 == 0 { -0.1 } else { 0.1 };
        let timestamp = now - chrono::Duration::seconds(3600)
            + chrono::Duration::seconds((i * 3600 / n) as i64);
        let feedback = (i % 2 == 1).then(|| {
            let rating = (i / 2) % 10;
            Feedback {
                value: if (rating as f64) < mean * 10.0 {
                    FeedbackValue::Positive
                } else {
                    FeedbackValue::Negative
                },
                text: None,
                at: None,
            }
        });
        records.push(NewUsage {
            quality_score: Some((mean + offset).clamp(0.0, 1.0)),
            latency_ms: Some(if i % 2 == 0 { 700.0 } else { 900.0 }),
            unit_id: Some(unit),
            timestamp: Some(timestamp),
            feedback,
            ..NewUsage::new(
                format!("question {i} at {now}"),
                format!("answer {i} by {}", route.model),
                route.model,
            )
        });
    }
    learning.log_batch(records).unwrap();
}

fn flat(quality: f64) -> impl Fn(&str) -> f64 {
    move |_| quality
}

#[test]
fn an_iteration_retrains_deploys_and_a_better_challenger_is_promoted() {
    let f = fixture();
    let (trainer, calls) = counting_trainer();
    let learning = f.new_loop(f.config(), trainer);
    assert_eq!(learning.route(Some("anyone")).unwrap().model, "m-v1");

    // Too few samples: nothing triggers.
    f.advance_hours(1);
    traffic(&learning, &f.clock, 20, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    assert!(
        matches!(report.retrain, RetrainStep::NotTriggered { .. }),
        "{report:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    let RetrainStep::Completed {
        run_id,
        n_samples,
        dataset_path,
        ..
    } = &report.retrain
    else {
        panic!("expected a completed retrain: {report:?}");
    };
    assert!(*n_samples >= 5);
    assert!(std::path::Path::new(dataset_path).exists());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(report.deployed_challenger(), Some("m-v2"));
    let DeployStep::Challenger { weight, .. } = report.deploy.as_ref().unwrap() else {
        unreachable!()
    };
    assert_eq!(*weight, 0.5);
    let challenger = f.store.model_version("m-v2").unwrap();
    assert_eq!(challenger.status, VersionStatus::Challenger);
    assert_eq!(challenger.run_id.as_deref(), Some(run_id.as_str()));
    assert!(
        report.summary().contains("deployed m-v2 as challenger"),
        "{}",
        report.summary()
    );

    // Evidence: the challenger is truly better. Retraining waits while it is tested.
    let better = |model: &str| if model == "m-v2" { 0.85 } else { 0.70 };
    let mut promoted_at = None;
    for hour in 1..=8 {
        f.advance_hours(1);
        traffic(&learning, &f.clock, 200, &better);
        let report = learning.run_iteration().unwrap();
        if report.promoted().is_some() {
            promoted_at = Some(hour);
            assert_eq!(report.promoted(), Some("m-v2"));
            break;
        }
        assert!(
            matches!(report.retrain, RetrainStep::Deferred { .. }),
            "{report:?}"
        );
        let step = report.experiment.as_ref().unwrap();
        assert_eq!(step.decision, Decision::KeepTesting, "{}", step.reason);
    }
    let hour = promoted_at.expect("the better challenger must be promoted within 8 hours");
    assert!(hour >= 2, "no promotion before the minimum duration");
    assert_eq!(f.store.champion().unwrap().unwrap().name, "m-v2");
    assert_eq!(
        f.store.experiments().unwrap()[0].status,
        ExperimentStatus::Promoted
    );
    // The promotion reset the triggers' quality reference.
    let trigger = TriggerState::load(&*f.store).unwrap();
    assert_eq!(trigger.baseline, None);
    assert_eq!(trigger.detector_fed_until, Some(f.clock.now()));
    // The same iteration may already have deployed the next challenger (m-v3).
    assert_eq!(learning.routing_table().unwrap().champion(), "m-v2");
}

#[test]
fn a_worse_challenger_is_rolled_back_and_the_next_retrain_names_a_new_version() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(f.config(), trainer);
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    assert_eq!(
        learning.run_iteration().unwrap().deployed_challenger(),
        Some("m-v2")
    );

    let worse = |model: &str| if model == "m-v2" { 0.45 } else { 0.75 };
    let mut rolled_back = false;
    for _ in 0..6 {
        f.advance_hours(1);
        traffic(&learning, &f.clock, 200, &worse);
        let report = learning.run_iteration().unwrap();
        if report.rolled_back() == Some("m-v2") {
            rolled_back = true;
            // The same iteration may retrain at once: the cooldown passed and samples exist.
            if let Some(name) = report.deployed_challenger() {
                assert_eq!(name, "m-v3", "names are never reused");
            }
            break;
        }
    }
    assert!(rolled_back, "the worse challenger must be rolled back");
    assert_eq!(
        f.store.model_version("m-v2").unwrap().status,
        VersionStatus::Retired
    );
    assert_eq!(f.store.champion().unwrap().unwrap().name, "m-v1");
}

#[test]
fn a_failing_trainer_is_recorded_and_the_loop_goes_on() {
    let f = fixture();
    let fail = Arc::new(AtomicBool::new(true));
    let fail_flag = fail.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = file_trainer(calls);
    let trainer = FnTrainer(move |job: &TrainJob| {
        if fail_flag.load(Ordering::SeqCst) {
            return Err("out of memory".to_string());
        }
        inner.train(job).map_err(|e| e.to_string())
    });
    let learning = f.new_loop(f.config(), Box::new(trainer));
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    let RetrainStep::Failed { status, error, .. } = &report.retrain else {
        panic!("{report:?}")
    };
    assert_eq!(*status, RunStatus::Failed);
    assert!(error.contains("out of memory"), "{error}");
    assert!(report.deploy.is_none());
    let status = learning.status_summary().unwrap();
    assert_eq!(status.failed_retrains, 1);
    assert!(status
        .loop_state
        .errors
        .iter()
        .any(|e| e.message.contains("out of memory")));
    assert_eq!(status.loop_state.last_iteration.unwrap().outcome, "ok");

    // After the cooldown the next retrain succeeds.
    fail.store(false, Ordering::SeqCst);
    f.advance_hours(2);
    traffic(&learning, &f.clock, 10, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    assert_eq!(report.deployed_challenger(), Some("m-v2"), "{report:?}");
}

#[test]
fn a_stop_during_generation_records_an_interrupted_retrain_and_trains_nothing() {
    let f = fixture();
    let (trainer, calls) = counting_trainer();
    let stop = Arc::new(AtomicBool::new(true));
    let learning = f
        .new_loop(f.config(), trainer)
        .with_generation_stop(stop.clone());
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    let RetrainStep::Failed { status, error, .. } = &report.retrain else {
        panic!("{report:?}")
    };
    assert_eq!(*status, RunStatus::Interrupted);
    assert!(error.contains("interrupted while generating"), "{error}");
    assert!(report.deploy.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Cleared, the next retrain (after the cooldown) trains and deploys.
    stop.store(false, Ordering::SeqCst);
    f.advance_hours(2);
    traffic(&learning, &f.clock, 10, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    assert_eq!(report.deployed_challenger(), Some("m-v2"), "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A judge that panics at its first look and then defers to the sequential judge.
struct PanicOnce {
    panicked: AtomicBool,
    inner: SequentialJudge,
}

impl Judge for PanicOnce {
    fn judge(&self, input: &JudgeInput<'_>) -> Comparison {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("the judge exploded");
        }
        self.inner.judge(input)
    }
}

#[test]
fn a_panic_inside_an_iteration_is_recorded_and_the_next_iteration_works() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let config = f.config();
    let judge = PanicOnce {
        panicked: AtomicBool::new(false),
        inner: SequentialJudge::new(config.abtest.clone()).unwrap(),
    };
    let learning = f.new_loop(config, trainer).with_judge(Box::new(judge));
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    learning.run_iteration().unwrap();

    f.advance_hours(1);
    let err = learning.run_iteration().unwrap_err();
    assert!(
        matches!(&err, LoopError::Panicked { message, .. } if message.contains("the judge exploded")),
        "{err}"
    );
    assert_eq!(err.kind(), None);
    let state = LoopState::load(&*f.store).unwrap();
    assert_eq!(state.failed_iterations, 1);
    assert_eq!(state.in_progress, None, "nothing is left half-done");
    assert_eq!(state.last_iteration.as_ref().unwrap().outcome, "failed");
    assert!(state
        .errors
        .last()
        .unwrap()
        .message
        .contains("the judge exploded"));

    f.advance_hours(1);
    let report = learning.run_iteration().unwrap();
    assert_eq!(report.experiment.unwrap().decision, Decision::KeepTesting);
    assert_eq!(LoopState::load(&*f.store).unwrap().iterations, 3);
}

#[test]
fn a_trainer_panic_fails_the_run_without_failing_the_iteration() {
    let f = fixture();
    let trainer =
        FnTrainer(|_: &TrainJob| -> Result<TrainOutput, String> { panic!("trainer bug") });
    let learning = f.new_loop(f.config(), Box::new(trainer));
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    let RetrainStep::Failed { error, .. } = &report.retrain else {
        panic!("{report:?}")
    };
    assert!(error.contains("trainer bug"), "{error}");
    assert!(f
        .store
        .last_run_with_status(RunStatus::Running)
        .unwrap()
        .is_none());
}

#[test]
fn the_evaluation_gate_decides_whether_a_model_is_deployed() {
    for (command, deployed) in [
        ("test -f {model_path} && test -f \"$AFS_MODEL_PATH\"", true),
        ("echo accuracy too low >&2; exit 1", false),
    ] {
        let f = fixture();
        let (trainer, _) = counting_trainer();
        let config = LoopConfig {
            eval_gate: Some(EvalGate {
                command: command.into(),
                timeout: Duration::from_secs(20),
            }),
            ..f.config()
        };
        let learning = f.new_loop(config, trainer);
        f.advance_hours(1);
        traffic(&learning, &f.clock, 60, &flat(0.8));
        let report = learning.run_iteration().unwrap();
        let gate = report.gate.as_ref().expect("the gate ran");
        assert_eq!(gate.passed, deployed, "{command}: {}", gate.detail);
        if deployed {
            assert_eq!(report.deployed_challenger(), Some("m-v2"));
        } else {
            assert!(gate.detail.contains("accuracy too low"), "{}", gate.detail);
            assert!(
                matches!(report.deploy, Some(DeployStep::NotDeployed { .. })),
                "{report:?}"
            );
            assert!(f.store.running_experiment().unwrap().is_none());
            assert!(
                report
                    .errors
                    .iter()
                    .any(|e| e.contains("evaluation gate rejected m-v2")),
                "{:?}",
                report.errors
            );
        }
    }
}

#[test]
fn deployment_follows_the_switches_and_the_first_model_becomes_champion() {
    // No champion: the first trained model becomes champion.
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(
        LoopConfig {
            initial_champion: None,
            ..f.config()
        },
        trainer,
    );
    assert!(learning.route(None).is_err(), "no champion yet");
    f.advance_hours(1);
    traffic_without_routing(&f, 60);
    let report = learning.run_iteration().unwrap();
    assert!(
        matches!(&report.deploy, Some(DeployStep::Champion { name, .. }) if name == "model-v1"),
        "{report:?}"
    );
    assert_eq!(learning.route(None).unwrap().model, "model-v1");

    // A/B testing off, automatic promotion on: the new model replaces the champion.
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(
        LoopConfig {
            enable_ab_testing: false,
            ..f.config()
        },
        trainer,
    );
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    assert!(
        matches!(&report.deploy, Some(DeployStep::Champion { name, .. }) if name == "m-v2"),
        "{report:?}"
    );
    assert_eq!(
        f.store.model_version("m-v1").unwrap().status,
        VersionStatus::Retired
    );

    // Both off: the model is only reported.
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(
        LoopConfig {
            enable_ab_testing: false,
            enable_auto_promotion: false,
            ..f.config()
        },
        trainer,
    );
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    assert!(
        matches!(&report.deploy, Some(DeployStep::NotDeployed { .. })),
        "{report:?}"
    );
    assert_eq!(f.store.champion().unwrap().unwrap().name, "m-v1");

    // A trainer may name its model.
    let f = fixture();
    let trainer = FnTrainer(|job: &TrainJob| {
        let mut metrics = serde_json::Map::new();
        metrics.insert("model_name".into(), "custom-name".into());
        Ok(TrainOutput {
            model_path: job.output_dir.join("m").to_string_lossy().into_owned(),
            metrics,
        })
    });
    let learning = f.new_loop(f.config(), Box::new(trainer));
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    assert_eq!(
        learning.run_iteration().unwrap().deployed_challenger(),
        Some("custom-name")
    );
}

fn traffic_without_routing(f: &Fixture, n: usize) {
    let store = &f.store;
    let now = f.clock.now();
    let records = (0..n)
        .map(|i| NewUsage {
            quality_score: Some(0.9),
            timestamp: Some(now - chrono::Duration::minutes(30)),
            feedback: Some(Feedback {
                value: FeedbackValue::Positive,
                text: None,
                at: None,
            }),
            ..NewUsage::new(format!("q{i}"), format!("a{i}"), "legacy")
        })
        .collect();
    afs_store::UsageStore::log_batch(&**store, records).unwrap();
}

#[test]
fn forcing_a_retrain_skips_the_triggers_but_not_a_running_experiment() {
    let f = fixture();
    let (trainer, calls) = counting_trainer();
    let learning = f.new_loop(f.config(), trainer);
    f.advance_hours(1);
    traffic(&learning, &f.clock, 20, &flat(0.8));
    let forced = IterationOptions {
        force_retrain: true,
    };
    let report = learning.run_iteration_with(forced).unwrap();
    assert!(
        matches!(&report.retrain, RetrainStep::Completed { trigger_type, .. } if trigger_type == "manual"),
        "{report:?}"
    );
    let report = learning.run_iteration_with(forced).unwrap();
    assert!(
        matches!(report.retrain, RetrainStep::Deferred { .. }),
        "{report:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn the_training_window_keeps_old_records_out_of_the_dataset() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let config = LoopConfig {
        training_window: Some(Duration::from_secs(2 * 3600)),
        ..f.config()
    };
    let learning = f.new_loop(config, trainer);
    f.advance_hours(1);
    traffic(&learning, &f.clock, 100, &flat(0.8));
    f.advance_hours(5);
    traffic(&learning, &f.clock, 10, &flat(0.8));
    let report = learning.run_iteration().unwrap();
    let RetrainStep::Completed { n_samples, .. } = report.retrain else {
        panic!("{report:?}")
    };
    // Only the last hour's 10 records (5 rated, the thumbs up among them of quality >= 0.7).
    assert!(
        n_samples <= 5,
        "{n_samples} samples: old records leaked into the dataset"
    );
    assert!(n_samples >= 1);
}

#[test]
fn run_loop_waits_on_the_clock_and_a_stop_wakes_it_at_once() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = Arc::new(f.new_loop(f.config(), trainer));
    let runner = {
        let learning = learning.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            let summary = learning.run_loop(None, &mut |result| {
                assert!(result.is_ok());
                seen += 1;
            });
            (summary, seen)
        })
    };
    // The first iteration runs at once; the second waits for an hour of the manual clock.
    wait_for(|| LoopState::load(&*f.store).unwrap().iterations == 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        LoopState::load(&*f.store).unwrap().iterations,
        1,
        "no iteration before the interval"
    );
    f.advance_hours(1);
    learning.stop_signal().wake();
    wait_for(|| LoopState::load(&*f.store).unwrap().iterations == 2);

    let asked = Instant::now();
    learning.stop();
    let (summary, seen) = runner.join().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the stop must wake the sleeping loop"
    );
    assert_eq!(summary.stop_reason, StopReason::Stopped);
    assert_eq!(summary.iterations, 2);
    assert_eq!(seen, 2);
}

#[test]
fn run_loop_goes_on_after_failed_iterations_and_honours_max_iterations() {
    let f = fixture();
    let trainer =
        FnTrainer(|_: &TrainJob| -> Result<TrainOutput, String> { Err("always fails".into()) });
    let config = LoopConfig {
        check_interval: Duration::from_millis(1),
        trigger: TriggerConfig {
            cooldown_hours: 0.0,
            ..f.config().trigger
        },
        ..f.config()
    };
    let learning = f.new_loop(config, Box::new(trainer));
    traffic(&learning, &f.clock, 60, &flat(0.8));
    // The interval is measured on the manual clock: move it from another thread.
    let clock = f.clock.clone();
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        let signal = learning.stop_signal();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                clock.advance(chrono::Duration::seconds(1));
                signal.wake();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let summary = learning.run_loop(Some(3), &mut |_| {});
    done.store(true, Ordering::SeqCst);
    ticker.join().unwrap();
    assert_eq!(summary.stop_reason, StopReason::MaxIterations);
    assert_eq!(summary.iterations, 3);
    let status = status_summary(&*f.store).unwrap();
    assert_eq!(
        status.failed_retrains, 3,
        "every iteration retried and recorded its failure"
    );
    assert_eq!(status.loop_state.errors.len(), 3);
}

fn wait_for(condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_iteration_left_by_a_dead_process_is_recorded_as_interrupted() {
    let f = fixture();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    let identity = afs_store::process::identity(dead_pid);
    child.wait().unwrap();
    let state = LoopState {
        iterations: 4,
        in_progress: Some(InProgress {
            number: 4,
            started_at: start(),
            phase: "retrain".into(),
            pid: dead_pid,
            identity,
        }),
        ..LoopState::default()
    };
    state.save(&*f.store).unwrap();

    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(f.config(), trainer);
    let state = LoopState::load(&*f.store).unwrap();
    assert_eq!(state.in_progress, None);
    assert_eq!(state.interrupted_iterations, 1);
    let last = state.last_iteration.unwrap();
    assert_eq!((last.number, last.outcome.as_str()), (4, "interrupted"));
    assert!(
        state.errors[0]
            .message
            .contains("interrupted during retrain"),
        "{}",
        state.errors[0].message
    );
    f.advance_hours(1);
    assert_eq!(learning.run_iteration().unwrap().number, 5);
}

/// A pid reused by another process is not the loop that recorded it: the identity (boot,
/// start time, host) tells them apart, where `kill(pid, 0)` would say "alive".
#[test]
fn an_iteration_whose_pid_was_reused_is_recorded_as_interrupted() {
    let f = fixture();
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let identity = afs_store::process::identity(other.id());
    let (process, host) = identity.rsplit_once('@').unwrap();
    let (boot, ticks) = process.rsplit_once(':').unwrap();
    let earlier = ticks.parse::<u64>().unwrap().saturating_sub(1);
    let state = LoopState {
        iterations: 2,
        in_progress: Some(InProgress {
            number: 2,
            started_at: start(),
            phase: "deploy".into(),
            pid: other.id(),
            identity: format!("{boot}:{earlier}@{host}"),
        }),
        ..LoopState::default()
    };
    state.save(&*f.store).unwrap();
    let (trainer, _) = counting_trainer();
    let _learning = f.new_loop(f.config(), trainer);
    let state = LoopState::load(&*f.store).unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    assert_eq!(state.in_progress, None);
    assert_eq!(state.interrupted_iterations, 1);
}

/// An iteration recorded by a live process is left alone.
#[test]
fn an_iteration_of_a_live_process_is_left_in_progress() {
    let f = fixture();
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let in_progress = InProgress {
        number: 2,
        started_at: start(),
        phase: "retrain".into(),
        pid: other.id(),
        identity: afs_store::process::identity(other.id()),
    };
    let state = LoopState {
        iterations: 2,
        in_progress: Some(in_progress.clone()),
        ..LoopState::default()
    };
    state.save(&*f.store).unwrap();
    let (trainer, _) = counting_trainer();
    let _learning = f.new_loop(f.config(), trainer);
    let state = LoopState::load(&*f.store).unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    assert_eq!(state.in_progress, Some(in_progress));
    assert_eq!(state.interrupted_iterations, 0);
}

#[test]
fn the_status_is_readable_from_another_handle_on_the_database() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f.new_loop(f.config(), trainer);
    f.advance_hours(1);
    traffic(&learning, &f.clock, 60, &flat(0.8));
    learning.run_iteration().unwrap();

    // As `afs status` would: a second store on the same file, no loop.
    let other = SqliteStore::open(
        SqliteConfig::new(f.dir.path().join("afs.db")),
        Arc::new(ManualClock::new(f.clock.now())),
    )
    .unwrap();
    let status = status_summary(&other).unwrap();
    assert_eq!(status.loop_state.iterations, 1);
    assert_eq!(status.loop_state.last_check_at, Some(f.clock.now()));
    assert_eq!(status.total_retrains, 1);
    assert_eq!(status.successful_retrains, 1);
    assert_eq!(status.champion.as_ref().unwrap().name, "m-v1");
    assert_eq!(status.challenger.as_ref().unwrap().name, "m-v2");
    assert_eq!(
        status.traffic_split,
        vec![("m-v1".to_string(), 0.5), ("m-v2".to_string(), 0.5)]
    );
    assert_eq!(status.usage.total, 60);
    assert_eq!(status.usage_by_model.len(), 1, "no challenger traffic yet");
    let json = status.to_json();
    assert_eq!(json["status"]["total_retrains"], 1);
    assert_eq!(json["status"]["champion_model"], "m-v1");
    assert_eq!(json["status"]["challenger_model"], "m-v2");
    let text = status.lines().join("\n");
    assert!(text.contains("traffic: m-v1 50.0%, m-v2 50.0%"), "{text}");
}

#[test]
fn routing_is_sticky_and_reproducible_with_a_routing_seed() {
    let routes = || {
        let f = fixture();
        let (trainer, _) = counting_trainer();
        let learning = f.new_loop(f.config(), trainer);
        f.advance_hours(1);
        traffic(&learning, &f.clock, 60, &flat(0.8));
        learning.run_iteration().unwrap();
        (0..200)
            .map(|i| learning.route(Some(&format!("user{i}"))).unwrap().model)
            .collect::<Vec<_>>()
    };
    let first = routes();
    assert_eq!(first, routes(), "same history and seed, same routing");
    let to_challenger = first.iter().filter(|m| *m == "m-v2").count();
    assert!(
        (60..=140).contains(&to_challenger),
        "{to_challenger} of 200 at weight 0.5"
    );
}

#[test]
fn an_invalid_config_is_refused_naming_the_key() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let config = LoopConfig {
        check_interval: Duration::ZERO,
        ..f.config()
    };
    let err = ContinuousLearningLoop::new(f.store.clone(), config, trainer).unwrap_err();
    assert!(err.to_string().contains("loop.check_interval"), "{err}");
    assert_eq!(err.kind(), Some(afs_store::ErrorKind::InvalidInput));
}

/// Sends every request to the challenger while an experiment runs.
struct AlwaysChallenger;

impl afs_abtest::Router for AlwaysChallenger {
    fn route(&self, table: &afs_abtest::RoutingTable, _unit: Option<&str>) -> afs_abtest::Arm {
        if table.challenger_weight() > 0.0 {
            afs_abtest::Arm::Challenger
        } else {
            afs_abtest::Arm::Champion
        }
    }
}

/// One serving path: a router set on the loop is the one its serving path (what `afs serve`
/// routes with) uses, and a deployment by the loop's experiment manager reaches it.
#[test]
fn a_custom_router_is_the_one_the_serving_path_uses() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let learning = f
        .new_loop(f.config(), trainer)
        .with_router(Box::new(AlwaysChallenger));
    learning
        .ab_test()
        .set_champion(&NewModelVersion::new("champ", "/m/champ"), "test")
        .unwrap();
    let serving = learning.serving();
    assert_eq!(serving.route(Some("u1")).unwrap().model, "champ");
    learning
        .ab_test()
        .deploy_challenger(
            &NewModelVersion::new("chall", "/m/chall"),
            Some(0.1),
            "test",
        )
        .unwrap();
    // Another process's change is seen within ROUTING_REFRESH; this test moves on at once,
    // so it drops the snapshot as a deployment through the loop itself does.
    serving.invalidate();
    for unit in ["u1", "u2", "u3", "u4", "u5"] {
        let routed = serving.route(Some(unit)).unwrap();
        assert_eq!(routed.model, "chall", "{unit}");
        assert_eq!(routed.version.model_path, "/m/chall");
        assert_eq!(learning.route(Some(unit)).unwrap().model, "chall");
    }
    // Logging through the serving path lands in the store.
    let id = serving.log(NewUsage::new("q", "r", "chall")).unwrap();
    assert_eq!(
        afs_store::UsageStore::get(&*f.store, &id).unwrap().model,
        "chall"
    );
}

#[test]
fn one_loop_acts_at_a_time_and_a_standby_loop_takes_over_when_it_stops() {
    let f = fixture();
    let (trainer, _) = counting_trainer();
    let first = Arc::new(f.new_loop(f.config(), trainer));
    // A second loop on the same database through a handle of its own, as a second process
    // or host would have.
    let other = Arc::new(
        SqliteStore::open(
            SqliteConfig::new(f.dir.path().join("afs.db")),
            f.clock.clone(),
        )
        .unwrap(),
    );
    let (trainer, _) = counting_trainer();
    let second = Arc::new(
        ContinuousLearningLoop::new(other.clone(), f.config(), trainer)
            .unwrap()
            .with_routing_seed(7),
    );

    let run = |learning: &Arc<ContinuousLearningLoop<SqliteStore>>| {
        let learning = learning.clone();
        std::thread::spawn(move || learning.run_loop(None, &mut |_| {}))
    };
    let first_runner = run(&first);
    wait_for(|| LoopState::load(&*f.store).unwrap().iterations == 1);

    // While the first loop holds the lease, a single iteration of the second is refused...
    let err = second.run_iteration().unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Conflict), "{err}");
    assert!(err.to_string().contains("another loop"), "{err}");
    // ...and its run_loop stands by without iterating, even when its interval passes.
    let second_runner = run(&second);
    std::thread::sleep(Duration::from_millis(200));
    f.advance_hours(1);
    first.stop_signal().wake();
    second.stop_signal().wake();
    wait_for(|| LoopState::load(&*f.store).unwrap().iterations == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(LoopState::load(&*f.store).unwrap().iterations, 2);

    // The first loop stops and gives the lease up; the standby loop acts at its next check.
    first.stop();
    let summary = first_runner.join().unwrap();
    assert_eq!(summary.iterations, 2);
    f.advance_hours(1);
    second.stop_signal().wake();
    wait_for(|| LoopState::load(&*f.store).unwrap().iterations == 3);
    second.stop();
    let summary = second_runner.join().unwrap();
    assert!(summary.iterations >= 1, "{summary:?}");
}
