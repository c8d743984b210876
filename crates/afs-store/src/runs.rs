//! Retrain runs and persisted controller state: the store side of the retrainer.

use chrono::{DateTime, Utc};

use crate::error::{Result, StoreError};

/// Where a retrain run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Started and not finished; owned by a live process (or one that died, until recovered).
    Running,
    /// The trainer succeeded.
    Completed,
    /// Generation or the trainer failed, or the owning process died mid-run.
    Failed,
    /// The trainer ran past its timeout and was stopped.
    TimedOut,
    /// Stopped on purpose (shutdown) before it finished.
    Interrupted,
}

impl RunStatus {
    /// The lowercase name stored and shown: `running`, `completed`, `failed`, `timed_out`,
    /// `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "timed_out" => RunStatus::TimedOut,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

/// A run to start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewRun {
    /// The run's id; `None` lets the store make one (a ULID). A caller that needs the id
    /// before the run starts (to name its directory) makes it with [`crate::new_id`].
    pub id: Option<String>,
    /// The trigger type that caused the run (`sample_count`, `manual`, ...).
    pub trigger_type: String,
    /// The trigger's reason and metrics, as JSON text.
    pub trigger: String,
    /// The directory that holds the run's dataset, logs and outputs.
    pub run_dir: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Final status; must not be `Running`.
    pub status: RunStatus,
    /// Path of the trained model, when the trainer reported one.
    pub model_path: Option<String>,
    /// Free-form metrics the trainer reported, as JSON text.
    pub metrics: Option<String>,
    /// What went wrong, for failed, timed-out and interrupted runs.
    pub error: Option<String>,
}

impl RunOutcome {
    /// Checks that this outcome can finish a run: `InvalidInput` for `Running` (every
    /// backend's [`RunStore::finish_run`] checks it before touching the run).
    pub fn check_final(&self) -> Result<()> {
        if self.status == RunStatus::Running {
            return Err(StoreError::invalid(
                "status",
                "a run cannot finish as running",
            ));
        }
        Ok(())
    }
}

/// Checks that every run of a copy has finished: only finished runs can be restored
/// ([`crate::RestoreStore::restore_runs`]), since a running one is owned by a process of the
/// source.
pub fn check_runs_finished(runs: &[RetrainRun]) -> Result<()> {
    match runs.iter().find(|r| r.status == RunStatus::Running) {
        Some(run) => Err(StoreError::invalid(
            "status",
            format!(
                "run {} is still running; only finished runs can be copied",
                run.id
            ),
        )),
        None => Ok(()),
    }
}

/// A retrain run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainRun {
    /// Run id (a ULID, sortable by start time).
    pub id: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it finished (`None` while running).
    pub finished_at: Option<DateTime<Utc>>,
    /// Where it stands.
    pub status: RunStatus,
    /// Trigger type.
    pub trigger_type: String,
    /// Trigger reason and metrics (JSON text).
    pub trigger: String,
    /// Run directory.
    pub run_dir: String,
    /// The dataset's manifest (JSON text), once generated.
    pub dataset_manifest: Option<String>,
    /// The dataset file, once generated.
    pub dataset_path: Option<String>,
    /// Samples in the dataset.
    pub n_samples: Option<u64>,
    /// Trained model path.
    pub model_path: Option<String>,
    /// Trainer metrics (JSON text).
    pub metrics: Option<String>,
    /// Error message.
    pub error: Option<String>,
    /// Process id of the process that owns (owned) the run.
    pub owner_pid: u32,
}

/// Retrain-run history and small named pieces of controller state (trigger cooldowns,
/// baselines, detector state), kept in the same database as the usage log.
///
/// # Contract
///
/// * **One run at a time.** [`begin_run`](Self::begin_run) atomically checks that no run is
///   `running` and inserts the new one; while a live process owns a running run, it fails
///   with [`crate::ErrorKind::Conflict`], across threads and processes alike. A run whose
///   owning process is gone (crash, kill) is marked `failed` with an error saying so, by
///   `begin_run` or [`recover_stale_runs`](Self::recover_stale_runs), and no longer blocks.
/// * **Finishing** moves a `running` run to its final status exactly once; finishing an
///   unknown or already finished run is an error (`NotFound` or `Conflict`).
/// * **State** values are opaque text (JSON by convention) under a caller-chosen key;
///   [`put_state`](Self::put_state) replaces the value atomically. Several keys can be written
///   in one transaction with [`put_states`](Self::put_states).
/// * Times come from the store's clock.
pub trait RunStore: Send + Sync {
    /// Starts a run, unless one is already running (see the contract). A run id given in
    /// `run.id` that an earlier run has is a `Conflict`.
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun>;

    /// Records the dataset generated for a running run.
    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()>;

    /// Finishes a running run.
    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun>;

    /// One run by id.
    fn run(&self, id: &str) -> Result<RetrainRun>;

    /// Runs, newest first, at most `limit`.
    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>>;

    /// How many runs have `status`. The default reads every run; a backend counts where
    /// the data is (a `/metrics` scrape asks for it).
    fn count_runs(&self, status: RunStatus) -> Result<u64> {
        Ok(self
            .runs(usize::MAX)?
            .iter()
            .filter(|r| r.status == status)
            .count() as u64)
    }

    /// The newest run with this status, if any.
    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>>;

    /// Marks runs left `running` by dead processes as failed; returns their ids.
    fn recover_stale_runs(&self) -> Result<Vec<String>>;

    /// The value stored under `key`, if any.
    fn state(&self, key: &str) -> Result<Option<String>>;

    /// Stores `value` under `key`, replacing any old value.
    fn put_state(&self, key: &str, value: &str) -> Result<()> {
        self.put_states(&[(key, value)])
    }

    /// Stores several keys in one transaction.
    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()>;
}
