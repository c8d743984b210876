//! What one iteration did (`IterationReport`), in data and in words, and what a run of the
//! loop did (`LoopRunSummary`).

use afs_store::{Decision, RunStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// The look at the running experiment an iteration took.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentStep {
    /// The experiment.
    pub experiment_id: i64,
    /// Its champion.
    pub champion: String,
    /// Its challenger.
    pub challenger: String,
    /// Hours since the challenger was deployed.
    pub elapsed_hours: f64,
    /// The judge's decision.
    pub decision: Decision,
    /// The decision applied to the store (`Promote` or `Rollback`), if any.
    pub applied: Option<Decision>,
    /// The judge's reason.
    pub reason: String,
    /// The challenger weight a bandit set, if it reweighted.
    pub new_weight: Option<f64>,
}

/// What the retrain step of an iteration did.
#[derive(Debug, Clone, PartialEq)]
pub enum RetrainStep {
    /// Triggers were not checked because an experiment is running: one challenger is tested
    /// at a time, and data logged during a test mixes two models.
    Deferred {
        /// Why.
        reason: String,
    },
    /// No trigger fired.
    NotTriggered {
        /// The triggers' reason.
        reason: String,
    },
    /// A trigger fired but another retrain is running (this or another process).
    AlreadyRunning {
        /// What is running.
        reason: String,
    },
    /// The run was refused (recorded as failed): too few samples in the dataset.
    Refused {
        /// The run.
        run_id: String,
        /// Samples in the dataset.
        n_samples: u64,
        /// Why.
        reason: String,
    },
    /// Generation or training failed or timed out; the run records why.
    Failed {
        /// The run.
        run_id: String,
        /// `failed` or `timed_out`.
        status: RunStatus,
        /// What went wrong.
        error: String,
    },
    /// The trainer produced a model.
    Completed {
        /// The run.
        run_id: String,
        /// The trigger that fired (`sample_count`, `scheduled`, ...).
        trigger_type: String,
        /// Why it fired.
        trigger_reason: String,
        /// The training file.
        dataset_path: String,
        /// Samples in it.
        n_samples: u64,
        /// The model the trainer reported.
        model_path: String,
        /// The trainer's metrics.
        metrics: Map<String, Value>,
    },
}

impl RetrainStep {
    /// `deferred`, `not_triggered`, `already_running`, `refused`, `failed`, `completed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RetrainStep::Deferred { .. } => "deferred",
            RetrainStep::NotTriggered { .. } => "not_triggered",
            RetrainStep::AlreadyRunning { .. } => "already_running",
            RetrainStep::Refused { .. } => "refused",
            RetrainStep::Failed { .. } => "failed",
            RetrainStep::Completed { .. } => "completed",
        }
    }

    /// The run this step recorded, if one started.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            RetrainStep::Refused { run_id, .. }
            | RetrainStep::Failed { run_id, .. }
            | RetrainStep::Completed { run_id, .. } => Some(run_id),
            _ => None,
        }
    }
}

/// The evaluation gate's verdict on a new model.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    /// Whether the model may be deployed.
    pub passed: bool,
    /// The script that ran: the template with each placeholder replaced by a reference to
    /// its `AFS_*` variable (values are never pasted into it).
    pub command: String,
    /// Why it passed or failed: exit status, timeout, or the start error, with the tail of
    /// its stderr when it failed.
    pub detail: String,
    /// Real time it took, seconds.
    pub seconds: f64,
}

/// What happened to a newly trained model.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployStep {
    /// Deployed as challenger; an experiment started.
    Challenger {
        /// Its name.
        name: String,
        /// Its path.
        model_path: String,
        /// Its share of traffic.
        weight: f64,
        /// The experiment.
        experiment_id: i64,
    },
    /// Made champion directly (no champion existed, or A/B testing is off).
    Champion {
        /// Its name.
        name: String,
        /// Its path.
        model_path: String,
        /// Why directly.
        reason: String,
    },
    /// Not deployed.
    NotDeployed {
        /// Its name, when one was chosen.
        name: Option<String>,
        /// Its path.
        model_path: String,
        /// Why (the gate rejected it, the store refused, automatic deployment is off).
        reason: String,
    },
}

impl DeployStep {
    /// `challenger`, `champion` or `not_deployed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeployStep::Challenger { .. } => "challenger",
            DeployStep::Champion { .. } => "champion",
            DeployStep::NotDeployed { .. } => "not_deployed",
        }
    }
}

/// What one iteration did.
#[derive(Debug, Clone, PartialEq)]
pub struct IterationReport {
    /// The iteration's number (counted over the database's lifetime).
    pub number: u64,
    /// When it started (the store's clock).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Runs left `running` by dead processes, marked failed at the start of this iteration.
    pub recovered_runs: Vec<String>,
    /// The look at the running experiment, when one was running.
    pub experiment: Option<ExperimentStep>,
    /// The retrain step.
    pub retrain: RetrainStep,
    /// The evaluation gate's verdict, when a model was trained and a gate is configured.
    pub gate: Option<GateOutcome>,
    /// What happened to the new model, when one was trained.
    pub deploy: Option<DeployStep>,
    /// What happened, in words, in order.
    pub notes: Vec<String>,
    /// Problems met (a failed run, a rejected model, a refused deployment); also recorded
    /// in the loop status.
    pub errors: Vec<String>,
}

impl IterationReport {
    /// The model promoted in this iteration, if any.
    pub fn promoted(&self) -> Option<&str> {
        self.experiment
            .as_ref()
            .filter(|e| e.applied == Some(Decision::Promote))
            .map(|e| e.challenger.as_str())
    }

    /// The model rolled back in this iteration, if any.
    pub fn rolled_back(&self) -> Option<&str> {
        self.experiment
            .as_ref()
            .filter(|e| e.applied == Some(Decision::Rollback))
            .map(|e| e.challenger.as_str())
    }

    /// The model deployed as challenger in this iteration, if any.
    pub fn deployed_challenger(&self) -> Option<&str> {
        match &self.deploy {
            Some(DeployStep::Challenger { name, .. }) => Some(name),
            _ => None,
        }
    }

    /// One line saying what the iteration did.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.experiment {
            parts.push(match e.applied {
                Some(Decision::Promote) => format!("promoted {}", e.challenger),
                Some(Decision::Rollback) => format!("rolled back {}", e.challenger),
                _ => format!(
                    "experiment {} ({} vs {}): {}",
                    e.experiment_id,
                    e.champion,
                    e.challenger,
                    e.decision.as_str()
                ),
            });
        }
        parts.push(match &self.retrain {
            RetrainStep::Deferred { .. } => "retrain deferred while the experiment runs".into(),
            RetrainStep::NotTriggered { .. } => "no retrain triggered".into(),
            RetrainStep::AlreadyRunning { .. } => "a retrain is already running".into(),
            RetrainStep::Refused {
                run_id, n_samples, ..
            } => {
                format!("retrain {run_id} refused ({n_samples} samples)")
            }
            RetrainStep::Failed { run_id, status, .. } => {
                format!("retrain {run_id} {}", status.as_str())
            }
            RetrainStep::Completed {
                run_id, n_samples, ..
            } => format!("retrain {run_id} trained on {n_samples} samples"),
        });
        if let Some(gate) = &self.gate {
            if !gate.passed {
                parts.push("evaluation gate rejected the model".into());
            }
        }
        match &self.deploy {
            Some(DeployStep::Challenger { name, weight, .. }) => parts.push(format!(
                "deployed {name} as challenger with {:.0}% of traffic",
                weight * 100.0
            )),
            Some(DeployStep::Champion { name, .. }) => {
                parts.push(format!("made {name} the champion"))
            }
            Some(DeployStep::NotDeployed { .. }) | None => {}
        }
        format!("iteration {}: {}", self.number, parts.join("; "))
    }

    /// The report as JSON, for `afs loop once --json` and logs.
    pub fn to_json(&self) -> Value {
        let experiment = self.experiment.as_ref().map(|e| {
            json!({
                "experiment_id": e.experiment_id,
                "champion": e.champion,
                "challenger": e.challenger,
                "elapsed_hours": e.elapsed_hours,
                "decision": e.decision.as_str(),
                "applied": e.applied.map(Decision::as_str),
                "reason": e.reason,
                "new_weight": e.new_weight,
            })
        });
        let retrain = match &self.retrain {
            RetrainStep::Deferred { reason }
            | RetrainStep::NotTriggered { reason }
            | RetrainStep::AlreadyRunning { reason } => {
                json!({ "status": self.retrain.as_str(), "reason": reason })
            }
            RetrainStep::Refused {
                run_id,
                n_samples,
                reason,
            } => json!({
                "status": "refused", "run_id": run_id, "n_samples": n_samples, "reason": reason,
            }),
            RetrainStep::Failed {
                run_id,
                status,
                error,
            } => json!({
                "status": "failed", "run_id": run_id, "run_status": status.as_str(), "error": error,
            }),
            RetrainStep::Completed {
                run_id,
                trigger_type,
                trigger_reason,
                dataset_path,
                n_samples,
                model_path,
                metrics,
            } => json!({
                "status": "completed",
                "run_id": run_id,
                "trigger": trigger_type,
                "trigger_reason": trigger_reason,
                "dataset_path": dataset_path,
                "n_samples": n_samples,
                "model_path": model_path,
                "metrics": metrics,
            }),
        };
        let gate = self.gate.as_ref().map(|g| {
            json!({ "passed": g.passed, "command": g.command, "detail": g.detail, "seconds": g.seconds })
        });
        let deploy = self.deploy.as_ref().map(|d| match d {
            DeployStep::Challenger {
                name,
                model_path,
                weight,
                experiment_id,
            } => json!({
                "action": "challenger", "name": name, "model_path": model_path,
                "weight": weight, "experiment_id": experiment_id,
            }),
            DeployStep::Champion {
                name,
                model_path,
                reason,
            } => json!({ "action": "champion", "name": name, "model_path": model_path, "reason": reason }),
            DeployStep::NotDeployed {
                name,
                model_path,
                reason,
            } => json!({ "action": "not_deployed", "name": name, "model_path": model_path, "reason": reason }),
        });
        json!({
            "iteration": self.number,
            "started_at": time(self.started_at),
            "finished_at": time(self.finished_at),
            "recovered_runs": self.recovered_runs,
            "experiment": experiment,
            "retrain": retrain,
            "gate": gate,
            "deploy": deploy,
            "notes": self.notes,
            "errors": self.errors,
            "summary": self.summary(),
        })
    }
}

/// Why [`crate::ContinuousLearningLoop::run_loop`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop was requested.
    Stopped,
    /// `max_iterations` iterations ran.
    MaxIterations,
}

/// What one call of [`crate::ContinuousLearningLoop::run_loop`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopRunSummary {
    /// Iterations run.
    pub iterations: u64,
    /// Of those, iterations that ended with an error or a panic.
    pub failed_iterations: u64,
    /// Why it returned.
    pub stop_reason: StopReason,
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
