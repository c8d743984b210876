//! `AutoRetrainer`: check → generate data into a run directory → train → record the run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use afs_datagen::{
    generate_with, DatagenError, GenerationResult, GeneratorConfig, HeuristicScorer, Hooks,
    QualityScorer,
};
use afs_store::{ErrorKind, NewRun, RetrainRun, RunOutcome, RunStatus};

use crate::checker::{
    record_retrain_started, record_retrain_succeeded, RetrainTrigger, TriggerStore,
};
use crate::config::RetrainerConfig;
use crate::error::TriggerError;
use crate::policy::{TriggerResult, TriggerType};
use crate::trainer::{TrainError, TrainJob, TrainOutput, Trainer};

/// What one call of [`AutoRetrainer::check_and_retrain`] did.
#[derive(Debug)]
pub enum RetrainOutcome {
    /// No trigger fired; nothing ran.
    NotTriggered(TriggerResult),
    /// A trigger fired but another retrain is running (in this or another process).
    AlreadyRunning {
        /// The trigger that fired.
        trigger: TriggerResult,
        /// What is running.
        reason: String,
    },
    /// The run was recorded as failed because the dataset had too few samples.
    Refused {
        /// The run (status `failed`).
        run: RetrainRun,
        /// The trigger that fired.
        trigger: TriggerResult,
        /// The dataset generation's result.
        dataset: Box<GenerationResult>,
    },
    /// The trainer succeeded.
    Completed {
        /// The run (status `completed`).
        run: RetrainRun,
        /// The trigger that fired.
        trigger: TriggerResult,
        /// The dataset generation's result.
        dataset: Box<GenerationResult>,
        /// What the trainer reported.
        output: TrainOutput,
    },
    /// Generation or training failed, or timed out; the run records why.
    Failed {
        /// The run (status `failed` or `timed_out`).
        run: RetrainRun,
        /// The trigger that fired.
        trigger: TriggerResult,
    },
}

impl RetrainOutcome {
    /// The run this outcome recorded, if one started.
    pub fn run(&self) -> Option<&RetrainRun> {
        match self {
            RetrainOutcome::Refused { run, .. }
            | RetrainOutcome::Completed { run, .. }
            | RetrainOutcome::Failed { run, .. } => Some(run),
            RetrainOutcome::NotTriggered(_) | RetrainOutcome::AlreadyRunning { .. } => None,
        }
    }
}

/// Runs one retrain when the triggers say so (the seed's `AutoRetrainer`).
pub struct AutoRetrainer {
    trigger: RetrainTrigger,
    generator: GeneratorConfig,
    config: RetrainerConfig,
    scorer: Box<dyn QualityScorer>,
    /// Set (by a signal handler) to stop the dataset generation under way.
    stop: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for AutoRetrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoRetrainer")
            .field("trigger", &self.trigger)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AutoRetrainer {
    /// A retrainer with the heuristic quality scorer.
    pub fn new(
        trigger: RetrainTrigger,
        generator: GeneratorConfig,
        config: RetrainerConfig,
    ) -> Self {
        AutoRetrainer {
            trigger,
            generator,
            config,
            scorer: Box::new(HeuristicScorer),
            stop: None,
        }
    }

    /// Stops the dataset generation of a run as soon as `flag` is set (within a few
    /// thousand records): the run is then recorded as `interrupted` and no trainer starts.
    /// Give it the flag the trainer is interrupted with
    /// ([`crate::CommandTrainer::interrupt_on`]), so one signal stops whichever is running.
    pub fn stop_generation_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Uses `scorer` for records without a quality score.
    pub fn with_scorer(mut self, scorer: Box<dyn QualityScorer>) -> Self {
        self.scorer = scorer;
        self
    }

    /// The trigger in use.
    pub fn trigger(&self) -> &RetrainTrigger {
        &self.trigger
    }

    /// Checks the triggers (all of them, or none with `force`) and, when one fires, runs a
    /// retrain: the run is a row in the store from start to end, its dataset and trainer
    /// logs are in `<output_dir>/runs/<run id>/`, and only one runs at a time per database.
    ///
    /// Errors are returned only when the store itself fails; a failing generator or trainer
    /// is a recorded `Failed` outcome.
    pub fn check_and_retrain<S: TriggerStore + ?Sized>(
        &self,
        store: &S,
        trainer: &dyn Trainer,
        force: bool,
    ) -> Result<RetrainOutcome, TriggerError> {
        crate::recovery::recover_stale_runs(store)?;
        let trigger = self.trigger.check(store, force)?;
        if !trigger.triggered {
            return Ok(RetrainOutcome::NotTriggered(trigger));
        }
        let (run, run_dir) = match self.begin_run(store, &trigger)? {
            Ok(begun) => begun,
            Err(reason) => return Ok(RetrainOutcome::AlreadyRunning { trigger, reason }),
        };
        let stopped = |stop: Stop| -> Result<RetrainOutcome, TriggerError> {
            match stop {
                Stop::Run(status, error) => {
                    let run = fail_run(store, &run.id, status, error)?;
                    Ok(RetrainOutcome::Failed {
                        run,
                        trigger: trigger.clone(),
                    })
                }
                Stop::Store(e) => Err(e),
            }
        };
        let (dataset, dataset_path) = match self.make_dataset(store, &run.id, &run_dir) {
            Ok(made) => made,
            Err(stop) => return stopped(stop),
        };
        if dataset.final_count < self.config.min_samples_for_retrain {
            let error = format!(
                "refused: the dataset has {} samples, fewer than min_samples_for_retrain ({})",
                dataset.final_count, self.config.min_samples_for_retrain
            );
            let run = fail_run(store, &run.id, RunStatus::Failed, error)?;
            return Ok(RetrainOutcome::Refused {
                run,
                trigger,
                dataset: Box::new(dataset),
            });
        }
        let output = match train(trainer, &run.id, run_dir, dataset_path, dataset.final_count) {
            Ok(output) => output,
            Err(stop) => return stopped(stop),
        };
        let run = store.finish_run(
            &run.id,
            RunOutcome {
                status: RunStatus::Completed,
                model_path: Some(output.model_path.clone()),
                metrics: serde_json::to_string(&output.metrics).ok(),
                error: None,
            },
        )?;
        record_retrain_succeeded(store, run.started_at)?;
        tracing::info!(run = %run.id, model = %output.model_path, "retrain completed");
        Ok(RetrainOutcome::Completed {
            run,
            trigger,
            dataset: Box::new(dataset),
            output,
        })
    }

    /// Records a new run for `trigger` (its directory: `<output_dir>/runs/<run id>`), or says
    /// why another run holds the database.
    fn begin_run<S: TriggerStore + ?Sized>(
        &self,
        store: &S,
        trigger: &TriggerResult,
    ) -> Result<Result<(RetrainRun, PathBuf), String>, TriggerError> {
        let run_id = afs_store::new_id(store.clock().now());
        let run_dir = self.config.output_dir.join("runs").join(&run_id);
        let trigger_json =
            serde_json::to_string(trigger).map_err(|e| TriggerError::State(e.to_string()))?;
        let new_run = NewRun {
            id: Some(run_id),
            trigger_type: trigger
                .trigger_type
                .unwrap_or(TriggerType::Manual)
                .as_str()
                .to_string(),
            trigger: trigger_json,
            run_dir: run_dir.to_string_lossy().into_owned(),
        };
        let run = match store.begin_run(new_run) {
            Ok(run) => run,
            Err(e) if e.kind() == ErrorKind::Conflict => return Ok(Err(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        record_retrain_started(store)?;
        tracing::info!(run = %run.id, trigger = ?trigger.trigger_type, "retrain started");
        Ok(Ok((run, run_dir)))
    }

    /// Writes the run's dataset into its fresh directory and records it on the run.
    fn make_dataset<S: TriggerStore + ?Sized>(
        &self,
        store: &S,
        run_id: &str,
        run_dir: &Path,
    ) -> Result<(GenerationResult, PathBuf), Stop> {
        create_fresh_dir(run_dir, "run directory")
            .map_err(|error| Stop::Run(RunStatus::Failed, error))?;
        let dataset_path = run_dir.join(&self.config.dataset_name);
        let hooks = Hooks {
            progress: None,
            stop: self.stop.as_deref(),
            ..Hooks::default()
        };
        let dataset = generate_with(
            store.as_usage(),
            &self.generator,
            &dataset_path,
            self.scorer.as_ref(),
            hooks,
        )
        .map_err(|e| match e {
            DatagenError::Interrupted => Stop::Run(
                RunStatus::Interrupted,
                "interrupted while generating the training data".into(),
            ),
            e => Stop::Run(RunStatus::Failed, format!("generate training data: {e}")),
        })?;
        let manifest =
            std::fs::read_to_string(&dataset.manifest_path).unwrap_or_else(|_| "{}".into());
        store
            .set_run_dataset(
                run_id,
                &dataset_path.to_string_lossy(),
                &manifest,
                dataset.final_count,
            )
            .map_err(|e| Stop::Store(e.into()))?;
        Ok((dataset, dataset_path))
    }
}

/// Why a run stopped before its trainer succeeded: an outcome to record on the run, or a
/// failure of the store itself.
enum Stop {
    Run(RunStatus, String),
    Store(TriggerError),
}

/// Records the run `run_id` as ended with `status` and `error`.
fn fail_run<S: TriggerStore + ?Sized>(
    store: &S,
    run_id: &str,
    status: RunStatus,
    error: String,
) -> Result<RetrainRun, TriggerError> {
    tracing::warn!(run = %run_id, %error, "retrain failed");
    Ok(store.finish_run(
        run_id,
        RunOutcome {
            status,
            model_path: None,
            metrics: None,
            error: Some(error),
        },
    )?)
}

/// Runs `trainer` on the run's dataset with a fresh `model/` directory; a panic in it is a
/// failure like any other.
fn train(
    trainer: &dyn Trainer,
    run_id: &str,
    run_dir: PathBuf,
    dataset_path: PathBuf,
    n_samples: u64,
) -> Result<TrainOutput, Stop> {
    let output_dir = run_dir.join("model");
    create_fresh_dir(&output_dir, "model directory")
        .map_err(|error| Stop::Run(RunStatus::Failed, error))?;
    let job = TrainJob {
        run_id: run_id.to_string(),
        dataset_path,
        output_dir,
        run_dir,
        n_samples,
    };
    let trained = catch_unwind(AssertUnwindSafe(|| trainer.train(&job))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(TrainError::Failed(format!(
            "the trainer panicked: {message}"
        )))
    });
    trained.map_err(|e| {
        let status = match e {
            TrainError::TimedOut(_) => RunStatus::TimedOut,
            TrainError::Interrupted => RunStatus::Interrupted,
            _ => RunStatus::Failed,
        };
        Stop::Run(status, e.to_string())
    })
}

/// Creates `dir` (and its parents); an existing directory is accepted only when empty, so
/// a run never writes over what is already there.
fn create_fresh_dir(dir: &Path, what: &str) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("create {what} {}: {e}", dir.display()))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| format!("{what} {} already exists: {e}", dir.display()))?
                .next()
                .is_none();
            if empty && dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                Err(format!(
                    "{what} {} already exists and is not an empty directory; afs does not \
                     write over it",
                    dir.display()
                ))
            }
        }
        Err(e) => Err(format!("create {what} {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_new_or_empty_never_reused() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("runs").join("R1");
        create_fresh_dir(&fresh, "run directory").unwrap();
        assert!(fresh.is_dir());
        // An existing empty directory is fine.
        create_fresh_dir(&fresh, "run directory").unwrap();
        // One with something in it is refused, and what is there stays.
        std::fs::write(fresh.join("train.jsonl"), "old").unwrap();
        let err = create_fresh_dir(&fresh, "run directory").unwrap_err();
        assert!(err.contains("not an empty directory"), "{err}");
        assert_eq!(
            std::fs::read_to_string(fresh.join("train.jsonl")).unwrap(),
            "old"
        );
        // So is a file, or a link to a directory, in its place.
        let file = root.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(create_fresh_dir(&file, "run directory").is_err());
        let link = root.path().join("link");
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::os::unix::fs::symlink(&empty, &link).unwrap();
        assert!(create_fresh_dir(&link, "run directory").is_err());
    }
}
