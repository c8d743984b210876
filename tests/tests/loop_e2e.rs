//! The whole loop end to end: real SQLite files in temp dirs, a manual clock, and an external
//! command trainer (a small `sh` script). Usage → trigger → dataset → trainer called with it
//! → evaluation gate → challenger deployed → promoted (or rolled back) on evidence; and a
//! process killed in the middle of an iteration, then a restart that finds a consistent state
//! and carries on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_loop::{
    status_summary, ContinuousLearningLoop, DeployStep, EvalGate, LoopState, RetrainStep,
};
use afs_store::{
    Clock, Decision, EventFilter, EventKind, ExperimentStatus, ExperimentStore, FeedbackValue,
    ManualClock, NewUsage, RunStatus, RunStore, VersionStatus,
};
use afs_store_sqlite::SqliteStore;
use afs_tests::{e2e_loop_config, e2e_start, open_manual_store, slow_tests_enabled};
use afs_trigger::{CommandTrainer, TriggerState};

/// The trainer: checks that its dataset exists and is not empty, records the path it was
/// given, writes a model file and reports it as JSON on its last line of stdout.
const TRAIN_SCRIPT: &str = r#"#!/bin/sh
set -eu
data="$1"
out="$2"
test -s "$data"
echo "$data" >> "$(dirname "$0")/trainer-calls.log"
lines=$(wc -l < "$data" | tr -d ' ')
printf 'weights trained on %s samples\n' "$lines" > "$out/model.bin"
echo "training on $lines samples"
printf '{"model_path": "%s", "train_lines": %s}\n' "$out/model.bin" "$lines"
"#;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.sh"), TRAIN_SCRIPT).unwrap();
        Setup { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("afs.db")
    }

    fn output_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn train_command(&self) -> String {
        format!(
            "sh '{}' {{data}} {{output_dir}}",
            self.dir.path().join("train.sh").display()
        )
    }

    fn trainer_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("trainer-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn open(&self, now: chrono::DateTime<chrono::Utc>) -> (Arc<SqliteStore>, Arc<ManualClock>) {
        open_manual_store(&self.db(), now)
    }

    fn new_loop(&self, store: Arc<SqliteStore>) -> ContinuousLearningLoop<SqliteStore> {
        let config = afs_loop::LoopConfig {
            eval_gate: Some(EvalGate::new(
                "test -s {model_path} && grep -q trained \"$AFS_MODEL_PATH\"",
            )),
            ..e2e_loop_config(&self.output_dir())
        };
        let trainer = CommandTrainer::shell(self.train_command(), Duration::from_secs(60));
        ContinuousLearningLoop::new(store, config, Box::new(trainer))
            .unwrap()
            .with_routing_seed(11)
    }
}

/// 120 calls to the champion logged one by one with `log_usage`, feedback recorded
/// afterwards with `record_feedback` (the seed's API): quality alternating 0.65 and 0.85,
/// every second call rated, three in four ratings thumbs up.
fn log_initial_usage(learning: &ContinuousLearningLoop<SqliteStore>, clock: &ManualClock) {
    for i in 0..120 {
        let route = learning.route(Some(&format!("user{i}"))).unwrap();
        assert_eq!(route.model, "m-v1");
        let id = learning
            .log_usage(NewUsage {
                quality_score: Some(if i % 2 == 0 { 0.65 } else { 0.85 }),
                latency_ms: Some(800.0),
                unit_id: Some(format!("user{i}")),
                timestamp: Some(clock.now() - chrono::Duration::seconds(3600 - i)),
                ..NewUsage::new(
                    format!("What is opcode {i}?"),
                    format!("Opcode {i} does this."),
                    route.model,
                )
            })
            .unwrap();
        if i % 2 == 1 {
            let value = if (i / 2) % 4 == 3 {
                FeedbackValue::Negative
            } else {
                FeedbackValue::Positive
            };
            learning.record_feedback(&id, value, None).unwrap();
        }
    }
}

/// One hour of traffic routed by the loop, from 200 sticky users new each hour (so the
/// experiment keeps gaining units, as it does in service): quality alternating ±0.1
/// around the serving model's mean, latency 700 or 900 ms, every second call rated (thumbs
/// up for the first `mean × 10` of each ten ratings). Logged with one `log_batch`.
fn hour_of_traffic(
    learning: &ContinuousLearningLoop<SqliteStore>,
    clock: &ManualClock,
    hour: i64,
    mean_of: &dyn Fn(&str) -> f64,
) {
    let now = clock.now();
    let records = (0..200)
        .map(|i: i64| {
            let unit = format!("user{hour}-{i}");
            let route = learning.route(Some(&unit)).unwrap();
            let mean = mean_of(&route.model);
            let feedback = (i % 2 == 1).then_some(afs_store::Feedback {
                value: if (((i / 2) % 10) as f64) < mean * 10.0 {
                    FeedbackValue::Positive
                } else {
                    FeedbackValue::Negative
                },
                text: None,
                at: None,
            });
            NewUsage {
                quality_score: Some((mean + if i % 2 == 0 { -0.1 } else { 0.1 }).clamp(0.0, 1.0)),
                latency_ms: Some(if i % 2 == 0 { 700.0 } else { 900.0 }),
                unit_id: Some(unit),
                timestamp: Some(now - chrono::Duration::seconds(3600 - i * 18)),
                feedback,
                ..NewUsage::new(
                    format!("hour {hour} question {i}"),
                    format!("hour {hour} answer {i}"),
                    route.model,
                )
            }
        })
        .collect();
    learning.log_batch(records).unwrap();
}

/// Usage → trigger → dataset → trainer → gate → challenger `m-v2`; then hours of traffic
/// where `m-v2` has mean quality `challenger_quality` against the champion's 0.70, until the
/// experiment ends. Returns the decision and the hours it took.
fn run_experiment(
    setup: &Setup,
    challenger_quality: f64,
) -> (Decision, i64, Arc<SqliteStore>, Arc<ManualClock>) {
    let (store, clock) = setup.open(e2e_start());
    let learning = setup.new_loop(store.clone());
    log_initial_usage(&learning, &clock);
    clock.advance(chrono::Duration::hours(1));

    let report = learning.run_iteration().unwrap();
    let RetrainStep::Completed {
        run_id,
        trigger_type,
        dataset_path,
        n_samples,
        model_path,
        metrics,
        ..
    } = &report.retrain
    else {
        panic!("expected a completed retrain: {:#}", report.to_json());
    };
    assert_eq!(trigger_type, "sample_count");
    // The trainer was called once, with the dataset the run recorded.
    assert_eq!(setup.trainer_calls(), vec![dataset_path.clone()]);
    let run = store.run(run_id).unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.dataset_path.as_deref(), Some(dataset_path.as_str()));
    let lines = std::fs::read_to_string(dataset_path)
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, *n_samples);
    assert!(*n_samples >= 10, "{n_samples}");
    assert_eq!(metrics["train_lines"], serde_json::json!(n_samples));
    assert!(Path::new(model_path).is_file());
    assert!(report.gate.as_ref().unwrap().passed);
    let Some(DeployStep::Challenger { name, weight, .. }) = &report.deploy else {
        panic!("expected a challenger: {:#}", report.to_json());
    };
    assert_eq!((name.as_str(), *weight), ("m-v2", 0.5));
    let version = store.model_version("m-v2").unwrap();
    assert_eq!(version.model_path, *model_path);
    assert_eq!(version.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(version.dataset.as_deref(), Some(dataset_path.as_str()));

    let mean_of = |model: &str| {
        if model == "m-v2" {
            challenger_quality
        } else {
            0.70
        }
    };
    for hour in 1..=12 {
        clock.advance(chrono::Duration::hours(1));
        hour_of_traffic(&learning, &clock, hour, &mean_of);
        let report = learning.run_iteration().unwrap();
        let step = report
            .experiment
            .as_ref()
            .expect("the experiment is checked every hour");
        if let Some(applied) = step.applied {
            // The cooldown (24 h) keeps the same iteration from retraining at once.
            assert!(
                matches!(report.retrain, RetrainStep::NotTriggered { .. }),
                "{:#}",
                report.to_json()
            );
            assert_eq!(setup.trainer_calls().len(), 1);
            return (applied, hour, store, clock);
        }
        assert!(
            matches!(report.retrain, RetrainStep::Deferred { .. }),
            "{:#}",
            report.to_json()
        );
    }
    panic!("no decision after 12 hours of traffic");
}

#[test]
fn a_truly_better_challenger_trained_by_a_command_is_promoted_after_evidence() {
    let setup = Setup::new();
    let (decision, hours, store, clock) = run_experiment(&setup, 0.85);
    assert_eq!(decision, Decision::Promote);
    assert!(
        hours >= 3,
        "promoted after {hours} h, before the minimum duration"
    );
    assert_eq!(store.champion().unwrap().unwrap().name, "m-v2");
    assert_eq!(
        store.model_version("m-v1").unwrap().status,
        VersionStatus::Retired
    );
    let experiment = &store.experiments().unwrap()[0];
    assert_eq!(experiment.status, ExperimentStatus::Promoted);
    // Every hourly look is in the event log, with its statistics.
    let decisions = store
        .events(&EventFilter {
            experiment_id: Some(experiment.id),
            kinds: vec![EventKind::Decision],
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(decisions.len() as i64, hours);
    assert!(decisions.iter().all(|e| e.statistics.is_some()));
    // The promotion reset the triggers' quality reference.
    let trigger = TriggerState::load(&*store).unwrap();
    assert_eq!(
        (trigger.baseline, trigger.detector_fed_until),
        (None, Some(clock.now()))
    );

    let status = status_summary(&*store).unwrap();
    assert_eq!(status.champion.unwrap().name, "m-v2");
    assert!(status.challenger.is_none());
    assert_eq!(status.traffic_split, vec![("m-v2".to_string(), 1.0)]);
    assert_eq!(status.successful_retrains, 1);
    assert_eq!(status.loop_state.iterations as i64, hours + 1);
    assert!(
        status.loop_state.errors.is_empty(),
        "{:?}",
        status.loop_state.errors
    );
}

#[test]
fn a_truly_worse_challenger_trained_by_a_command_is_rolled_back() {
    let setup = Setup::new();
    let (decision, _hours, store, _clock) = run_experiment(&setup, 0.50);
    assert_eq!(decision, Decision::Rollback);
    assert_eq!(store.champion().unwrap().unwrap().name, "m-v1");
    assert_eq!(
        store.model_version("m-v2").unwrap().status,
        VersionStatus::Retired
    );
    assert_eq!(
        store.experiments().unwrap()[0].status,
        ExperimentStatus::RolledBack
    );
    assert!(store.running_experiment().unwrap().is_none());
}

#[test]
fn a_process_killed_mid_iteration_leaves_a_state_the_restart_recovers_and_continues() {
    let setup = Setup::new();
    let t0 = e2e_start();
    {
        let (store, clock) = setup.open(t0);
        let learning = setup.new_loop(store);
        log_initial_usage(&learning, &clock);
    }

    // A child process starts an iteration whose trainer blocks (it records its pid first).
    let trainer_pid_file = setup.dir.path().join("trainer.pid");
    let blocking = format!("echo $$ > '{}'; exec sleep 60", trainer_pid_file.display());
    let now = (t0 + chrono::Duration::hours(1)).to_rfc3339();
    let mut child = Command::new(env!("CARGO_BIN_EXE_afs-loop-child"))
        .args([
            setup.db().to_str().unwrap(),
            setup.output_dir().to_str().unwrap(),
            &now,
            &blocking,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let trainer_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&trainer_pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            break pid;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the child ended ({status}) before its trainer started: {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child's trainer never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // Mid-iteration, as another process sees it: a running run, an iteration in progress.
    {
        let (store, _) = setup.open(t0 + chrono::Duration::hours(1));
        let running = store
            .last_run_with_status(RunStatus::Running)
            .unwrap()
            .expect("a running run");
        assert_eq!(running.owner_pid, child.id());
        let state = LoopState::load(&*store).unwrap();
        let in_progress = state.in_progress.expect("an iteration in progress");
        assert_eq!(
            (
                in_progress.number,
                in_progress.phase.as_str(),
                in_progress.pid
            ),
            (1, "retrain", child.id())
        );
        let status = status_summary(&*store).unwrap();
        assert!(status.running_retrain.is_some());
    }

    child.kill().unwrap();
    child.wait().unwrap();
    // The trainer's watchdog stops its group once the killed child is gone; should it still
    // run (the watchdog needs a moment), stop it.
    assert!(trainer_pid > 1);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(trainer_pid),
        nix::sys::signal::Signal::SIGKILL,
    );

    // Restart after the cooldown of the interrupted run's start.
    let (store, clock) = setup.open(t0 + chrono::Duration::hours(26));
    let killed_run = store
        .last_run_with_status(RunStatus::Running)
        .unwrap()
        .expect("still marked running before a restart");
    let learning = setup.new_loop(store.clone());
    let run = store.run(&killed_run.id).unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("died before it finished"),
        "{:?}",
        run.error
    );
    assert!(run.model_path.is_none());
    assert!(
        store
            .model_versions()
            .unwrap()
            .iter()
            .all(|v| v.name == "m-v1"),
        "nothing was deployed"
    );
    assert!(store.running_experiment().unwrap().is_none());
    let state = LoopState::load(&*store).unwrap();
    assert_eq!(state.in_progress, None);
    assert_eq!(state.interrupted_iterations, 1);
    let last = state.last_iteration.as_ref().unwrap();
    assert_eq!((last.number, last.outcome.as_str()), (1, "interrupted"));
    assert!(
        state.errors[0]
            .message
            .contains("interrupted during retrain"),
        "{:?}",
        state.errors
    );
    assert!(
        state.errors[0].message.contains(&killed_run.id),
        "{:?}",
        state.errors
    );

    // The loop continues: the next iteration retrains with the working trainer and deploys.
    let report = learning.run_iteration().unwrap();
    assert_eq!(report.number, 2);
    assert!(
        matches!(report.retrain, RetrainStep::Completed { .. }),
        "{:#}",
        report.to_json()
    );
    assert_eq!(report.deployed_challenger(), Some("m-v2"));
    assert_eq!(
        setup.trainer_calls().len(),
        1,
        "only the working trainer recorded a call"
    );
    assert_eq!(
        store
            .last_run_with_status(RunStatus::Completed)
            .unwrap()
            .unwrap()
            .started_at,
        clock.now()
    );
    let status = status_summary(&*store).unwrap();
    assert_eq!(
        (
            status.total_retrains,
            status.successful_retrains,
            status.failed_retrains
        ),
        (2, 1, 1)
    );
}

/// Weeks of hourly iterations through the command trainer: retrains, promotions and
/// rollbacks keep the store consistent (one champion, at most one challenger, every run
/// finished). Slow: runs with `AFS_SLOW_TESTS=1`.
#[test]
fn many_cycles_of_the_loop_keep_the_store_consistent() {
    if !slow_tests_enabled() {
        return;
    }
    let setup = Setup::new();
    let (store, clock) = setup.open(e2e_start());
    let learning = setup.new_loop(store.clone());
    log_initial_usage(&learning, &clock);
    // Each new model alternates between better and worse than the one before.
    let quality = |model: &str| -> f64 {
        let n: f64 = model.trim_start_matches("m-v").parse().unwrap_or(1.0);
        0.6 + 0.02 * n + if n as u64 % 2 == 0 { 0.05 } else { -0.05 }
    };
    let (mut promotions, mut rollbacks) = (0, 0);
    for hour in 1..=(14 * 24) {
        clock.advance(chrono::Duration::hours(1));
        hour_of_traffic(&learning, &clock, hour, &quality);
        let report = learning.run_iteration().unwrap();
        promotions += usize::from(report.promoted().is_some());
        rollbacks += usize::from(report.rolled_back().is_some());
        assert!(store
            .last_run_with_status(RunStatus::Running)
            .unwrap()
            .is_none());
        let versions = store.model_versions().unwrap();
        assert_eq!(
            versions
                .iter()
                .filter(|v| v.status == VersionStatus::Champion)
                .count(),
            1
        );
        assert!(
            versions
                .iter()
                .filter(|v| v.status == VersionStatus::Challenger)
                .count()
                <= 1
        );
    }
    assert!(
        promotions >= 2 && rollbacks >= 2,
        "{promotions} promotions, {rollbacks} rollbacks"
    );
    assert!(LoopState::load(&*store).unwrap().errors.is_empty());
}
