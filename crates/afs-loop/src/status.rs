//! The status summary (the seed's `get_status_summary`), readable from any process that
//! opens the store: no loop needs to be running.

use std::collections::BTreeMap;

use afs_store::{
    Experiment, ExperimentStore, ModelVersion, RetrainRun, RunStatus, RunStore, StatsWindow,
    UsageStats, UsageStore,
};
use afs_trigger::TriggerState;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::error::{LoopError, Result};
use crate::report::time;
use crate::state::LoopState;

/// Everything `afs status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSummary {
    /// When the summary was taken (the store's clock).
    pub now: DateTime<Utc>,
    /// The loop's persisted status: iterations, last check, last iteration, the iteration in
    /// progress, last errors.
    pub loop_state: LoopState,
    /// Retrain runs ever started (any outcome).
    pub total_retrains: u64,
    /// Of those, completed ones.
    pub successful_retrains: u64,
    /// Of those, failed, timed-out or interrupted ones.
    pub failed_retrains: u64,
    /// The newest run.
    pub last_retrain: Option<RetrainRun>,
    /// The newest completed run.
    pub last_successful_retrain: Option<RetrainRun>,
    /// The run in progress, if any.
    pub running_retrain: Option<RetrainRun>,
    /// The champion.
    pub champion: Option<ModelVersion>,
    /// The challenger, while an experiment runs.
    pub challenger: Option<ModelVersion>,
    /// The running experiment.
    pub experiment: Option<Experiment>,
    /// Share of traffic per serving model (champion first).
    pub traffic_split: Vec<(String, f64)>,
    /// Usage over the whole log.
    pub usage: UsageStats,
    /// Usage over the last 24 hours.
    pub usage_last_24h: UsageStats,
    /// Usage per model over the whole log.
    pub usage_by_model: BTreeMap<String, UsageStats>,
    /// The triggers' persisted state (last retrain, baseline, ...).
    pub trigger: TriggerState,
}

/// Reads the status summary from `store`.
pub fn status_summary<S>(store: &S) -> Result<StatusSummary>
where
    S: UsageStore + RunStore + ExperimentStore + ?Sized,
{
    let now = store.clock().now();
    let loop_state = LoopState::load(store)?;
    let runs = store.runs(usize::MAX)?;
    let count = |f: &dyn Fn(&RetrainRun) -> bool| runs.iter().filter(|r| f(r)).count() as u64;
    let successful_retrains = count(&|r| r.status == RunStatus::Completed);
    let failed_retrains = count(&|r| {
        matches!(
            r.status,
            RunStatus::Failed | RunStatus::TimedOut | RunStatus::Interrupted
        )
    });
    let champion = store.champion()?;
    let experiment = store.running_experiment()?;
    let challenger = match &experiment {
        Some(e) => Some(store.model_version(&e.challenger)?),
        None => None,
    };
    let mut traffic_split = Vec::new();
    if let Some(champion) = &champion {
        let challenger_weight = experiment.as_ref().map_or(0.0, |e| e.challenger_weight);
        traffic_split.push((champion.name.clone(), 1.0 - challenger_weight));
        if let Some(e) = &experiment {
            traffic_split.push((e.challenger.clone(), challenger_weight));
        }
    }
    let all = StatsWindow::default();
    let day = StatsWindow {
        since: Some(now - chrono::Duration::hours(24)),
        until: None,
        model: None,
    };
    let trigger = TriggerState::load(store).map_err(LoopError::Trigger)?;
    Ok(StatusSummary {
        now,
        total_retrains: runs.len() as u64,
        successful_retrains,
        failed_retrains,
        last_retrain: runs.first().cloned(),
        last_successful_retrain: runs
            .iter()
            .find(|r| r.status == RunStatus::Completed)
            .cloned(),
        running_retrain: runs
            .iter()
            .find(|r| r.status == RunStatus::Running)
            .cloned(),
        champion,
        challenger,
        experiment,
        traffic_split,
        usage: store.stats(&all)?,
        usage_last_24h: store.stats(&day)?,
        usage_by_model: store.stats_by_model(&all)?,
        trigger,
        loop_state,
    })
}

fn stats_json(s: &UsageStats) -> Value {
    json!({
        "total": s.total,
        "with_feedback": s.with_feedback,
        "positive_feedback": s.positive_feedback,
        "negative_feedback": s.negative_feedback,
        "feedback_rate": s.feedback_rate(),
        "avg_quality_score": s.avg_quality_score(),
        "avg_latency_ms": s.avg_latency_ms(),
        "total_tokens": s.total_tokens,
    })
}

fn run_json(run: &RetrainRun) -> Value {
    json!({
        "id": run.id,
        "status": run.status.as_str(),
        "trigger": run.trigger_type,
        "started_at": time(run.started_at),
        "finished_at": run.finished_at.map(time),
        "n_samples": run.n_samples,
        "model_path": run.model_path,
        "error": run.error,
    })
}

fn version_json(v: &ModelVersion) -> Value {
    json!({
        "name": v.name,
        "model_path": v.model_path,
        "status": v.status.as_str(),
        "traffic_weight": v.traffic_weight,
        "created_at": time(v.created_at),
        "promoted_at": v.promoted_at.map(time),
        "run_id": v.run_id,
    })
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3}"))
}

impl StatusSummary {
    /// The summary as JSON (`afs status --json`); the seed's keys `total_retrains`,
    /// `champion_model`, `challenger_model`, `last_check`, `last_retrain` and `errors` are
    /// under `status`.
    pub fn to_json(&self) -> Value {
        let state = &self.loop_state;
        json!({
            "now": time(self.now),
            "status": {
                "iterations": state.iterations,
                "failed_iterations": state.failed_iterations,
                "interrupted_iterations": state.interrupted_iterations,
                "last_check": state.last_check_at.map(time),
                "last_retrain": self.last_retrain.as_ref().map(|r| time(r.started_at)),
                "total_retrains": self.total_retrains,
                "successful_retrains": self.successful_retrains,
                "failed_retrains": self.failed_retrains,
                "champion_model": self.champion.as_ref().map(|c| c.name.clone()),
                "challenger_model": self.challenger.as_ref().map(|c| c.name.clone()),
                "in_progress": state.in_progress.as_ref().map(|p| json!({
                    "iteration": p.number,
                    "started_at": time(p.started_at),
                    "phase": p.phase,
                    "pid": p.pid,
                })),
                "last_iteration": state.last_iteration.as_ref().map(|i| json!({
                    "iteration": i.number,
                    "started_at": time(i.started_at),
                    "finished_at": time(i.finished_at),
                    "outcome": i.outcome,
                    "summary": i.summary,
                })),
                "errors": state.errors.iter().map(|e| json!({
                    "at": time(e.at),
                    "iteration": e.iteration,
                    "message": e.message,
                })).collect::<Vec<_>>(),
            },
            "retrains": {
                "last": self.last_retrain.as_ref().map(run_json),
                "last_successful": self.last_successful_retrain.as_ref().map(run_json),
                "running": self.running_retrain.as_ref().map(run_json),
            },
            "champion": self.champion.as_ref().map(version_json),
            "challenger": self.challenger.as_ref().map(version_json),
            "experiment": self.experiment.as_ref().map(|e| json!({
                "id": e.id,
                "champion": e.champion,
                "challenger": e.challenger,
                "challenger_weight": e.challenger_weight,
                "started_at": time(e.started_at),
            })),
            "traffic_split": self.traffic_split.iter().map(|(model, share)| json!({
                "model": model, "share": share,
            })).collect::<Vec<_>>(),
            "usage": stats_json(&self.usage),
            "usage_last_24h": stats_json(&self.usage_last_24h),
            "usage_by_model": self.usage_by_model.iter()
                .map(|(model, s)| (model.clone(), stats_json(s)))
                .collect::<serde_json::Map<_, _>>(),
            "trigger": {
                "last_retrain_at": self.trigger.last_retrain_at.map(time),
                "last_success_at": self.trigger.last_success_at.map(time),
                "baseline_quality": self.trigger.baseline.as_ref().map(|b| b.mean),
            },
        })
    }

    /// The summary as lines of text for people (`afs status`).
    pub fn lines(&self) -> Vec<String> {
        let state = &self.loop_state;
        let mut out = Vec::new();
        out.push(format!(
            "loop: {} iterations ({} failed, {} interrupted); last check {}",
            state.iterations,
            state.failed_iterations,
            state.interrupted_iterations,
            state.last_check_at.map_or("never".into(), time)
        ));
        if let Some(p) = &state.in_progress {
            out.push(format!(
                "in progress: iteration {} since {} ({}, pid {})",
                p.number,
                time(p.started_at),
                p.phase,
                p.pid
            ));
        }
        if let Some(i) = &state.last_iteration {
            out.push(format!("last iteration ({}): {}", i.outcome, i.summary));
        }
        out.push(format!(
            "retrains: {} total, {} completed, {} failed; last {}",
            self.total_retrains,
            self.successful_retrains,
            self.failed_retrains,
            self.last_retrain
                .as_ref()
                .map_or("never".into(), |r| format!(
                    "{} ({}, {})",
                    r.id,
                    r.status.as_str(),
                    time(r.started_at)
                ))
        ));
        out.push(format!(
            "champion: {}",
            self.champion
                .as_ref()
                .map_or("none".into(), |c| c.name.clone())
        ));
        out.push(format!(
            "challenger: {}",
            match (&self.challenger, &self.experiment) {
                (Some(c), Some(e)) => format!(
                    "{} (experiment {} since {})",
                    c.name,
                    e.id,
                    time(e.started_at)
                ),
                _ => "none".into(),
            }
        ));
        if !self.traffic_split.is_empty() {
            let split: Vec<String> = self
                .traffic_split
                .iter()
                .map(|(model, share)| format!("{model} {:.1}%", share * 100.0))
                .collect();
            out.push(format!("traffic: {}", split.join(", ")));
        }
        out.push(format!(
            "usage: {} records, {} with feedback ({:.1}%), average quality {}; last 24 h: {} records",
            self.usage.total,
            self.usage.with_feedback,
            self.usage.feedback_rate() * 100.0,
            pct(self.usage.avg_quality_score()),
            self.usage_last_24h.total
        ));
        for (model, s) in &self.usage_by_model {
            out.push(format!(
                "  {model}: {} records, average quality {}, thumbs up {}",
                s.total,
                pct(s.avg_quality_score()),
                s.positive_rate()
                    .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
            ));
        }
        if state.errors.is_empty() {
            out.push("errors: none".into());
        } else {
            out.push(format!("errors (last {}):", state.errors.len()));
            for e in &state.errors {
                out.push(format!("  {} {}", time(e.at), e.message));
            }
        }
        out
    }
}
