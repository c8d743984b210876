//! `AbTest`: the operations on versions and experiments, and the periodic check that judges
//! the running experiment, records the decision and applies it.

use std::sync::Arc;

use afs_store::{
    Decision, EventFilter, EventNote, Experiment, ExperimentEvent, ExperimentStore, ModelVersion,
    NewModelVersion, StatsWindow, UsageStore, WeightSource,
};

use crate::bandit::bandit_update;
use crate::comparison::Comparison;
use crate::config::AbTestConfig;
use crate::error::{AbTestError, Result};
use crate::judge::{Judge, JudgeInput, PeriodStats, SequentialJudge};
use crate::router::{Arm, Router, RoutingTable};

/// The serving state: the champion, the challenger and the running experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct AbStatus {
    /// The champion, if one was set.
    pub champion: Option<ModelVersion>,
    /// The challenger, while an experiment runs.
    pub challenger: Option<ModelVersion>,
    /// The running experiment.
    pub experiment: Option<Experiment>,
}

/// What one [`AbTest::check`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// The judge's report; `None` when no experiment runs.
    pub comparison: Option<Comparison>,
    /// The decision applied to the store (`Promote` or `Rollback`), if any.
    pub applied: Option<Decision>,
    /// The challenger weight the bandit set, if it reweighted.
    pub new_weight: Option<f64>,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The arm.
    pub arm: Arm,
    /// The model serving it.
    pub model: String,
}

/// Champion/challenger experiments over a store that holds both the usage log and the
/// experiment state (the SQLite store holds both in one file).
///
/// Every state change is one store transaction with its event row; times come from the
/// store's clock.
pub struct AbTest<S: ?Sized> {
    store: Arc<S>,
    config: AbTestConfig,
    judge: Box<dyn Judge>,
}

impl<S: ?Sized> std::fmt::Debug for AbTest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbTest")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: UsageStore + ExperimentStore + ?Sized> AbTest<S> {
    /// Experiments over `store` with `config` (validated) and the [`SequentialJudge`].
    pub fn new(store: Arc<S>, config: AbTestConfig) -> Result<Self> {
        let judge = Box::new(SequentialJudge::new(config.clone())?);
        Ok(AbTest {
            store,
            config,
            judge,
        })
    }

    /// Replaces the judge (the config still governs automatic application and bandits).
    pub fn with_judge(mut self, judge: Box<dyn Judge>) -> Self {
        self.judge = judge;
        self
    }

    /// The settings.
    pub fn config(&self) -> &AbTestConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The champion, the challenger and the running experiment.
    pub fn status(&self) -> Result<AbStatus> {
        let champion = self.store.champion()?;
        let experiment = self.store.running_experiment()?;
        let challenger = match &experiment {
            Some(e) => Some(self.store.model_version(&e.challenger)?),
            None => None,
        };
        Ok(AbStatus {
            champion,
            challenger,
            experiment,
        })
    }

    /// Registers `version` as champion outside any experiment (the first model, or a manual
    /// replacement; the previous champion retires). Refused while an experiment runs.
    pub fn set_champion(&self, version: &NewModelVersion, reason: &str) -> Result<ModelVersion> {
        Ok(self
            .store
            .set_champion(version, &EventNote::reason(reason))?)
    }

    /// Deploys `version` as challenger with `weight` (default `initial_challenger_traffic`)
    /// and a fresh random routing seed.
    pub fn deploy_challenger(
        &self,
        version: &NewModelVersion,
        weight: Option<f64>,
        reason: &str,
    ) -> Result<Experiment> {
        self.deploy_challenger_with_seed(version, weight, rand::random(), reason)
    }

    /// [`deploy_challenger`](Self::deploy_challenger) with a given routing seed
    /// (simulations, reproducible tests).
    pub fn deploy_challenger_with_seed(
        &self,
        version: &NewModelVersion,
        weight: Option<f64>,
        seed: u64,
        reason: &str,
    ) -> Result<Experiment> {
        let weight = weight.unwrap_or(self.config.initial_challenger_traffic);
        check_weight(weight)?;
        let experiment =
            self.store
                .deploy_challenger(version, weight, seed, &EventNote::reason(reason))?;
        self.record_covariates(&experiment)?;
        Ok(experiment)
    }

    /// Records the units' pre-experiment history as CUPED covariates (when `cuped` is on
    /// and the look-back is positive).
    fn record_covariates(&self, experiment: &Experiment) -> Result<()> {
        let days = self.config.cuped_lookback_days;
        if !self.config.cuped || days <= 0.0 {
            return Ok(());
        }
        let lookback = chrono::Duration::milliseconds((days * 86_400_000.0) as i64);
        let units = self
            .store
            .record_unit_covariates(experiment.id, experiment.started_at - lookback)?;
        tracing::info!(
            experiment = experiment.id,
            units,
            "recorded pre-experiment covariates"
        );
        Ok(())
    }

    /// Sets the challenger's weight in the running experiment. Same experiment, same seed:
    /// raising the weight only moves champion units to the challenger. Starts a new period.
    pub fn set_weight(&self, weight: f64, reason: &str) -> Result<Experiment> {
        check_weight(weight)?;
        let experiment = self.running()?;
        Ok(self.store.set_challenger_weight(
            experiment.id,
            weight,
            WeightSource::Manual,
            &EventNote::reason(reason),
        )?)
    }

    /// Promotes the challenger now, whatever the judge says; the event row carries `reason`
    /// and the judge's current report.
    pub fn promote(&self, reason: &str) -> Result<Experiment> {
        let experiment = self.running()?;
        let note = self.manual_note(&experiment, reason)?;
        Ok(self.store.promote(experiment.id, &note)?)
    }

    /// Rolls the challenger back now; the event row carries `reason` and the judge's
    /// current report.
    pub fn rollback(&self, reason: &str) -> Result<Experiment> {
        let experiment = self.running()?;
        let note = self.manual_note(&experiment, reason)?;
        Ok(self.store.rollback(experiment.id, &note)?)
    }

    /// The current routing snapshot. `NoChampion` before a champion is set.
    pub fn routing_table(&self) -> Result<RoutingTable> {
        if let Some(experiment) = self.store.running_experiment()? {
            return Ok(RoutingTable::from_experiment(&experiment));
        }
        match self.store.champion()? {
            Some(champion) => Ok(RoutingTable::champion_only(champion.name)),
            None => Err(AbTestError::NoChampion),
        }
    }

    /// Routes one request with `router` against the current routing snapshot. Reads the
    /// store; a server routing many requests should keep a [`RoutingTable`] and refresh it.
    pub fn route(&self, router: &dyn Router, unit: Option<&str>) -> Result<Route> {
        let table = self.routing_table()?;
        let arm = router.route(&table, unit);
        Ok(Route {
            arm,
            model: table.model(arm).to_string(),
        })
    }

    /// Both arms' statistics per period of `experiment`, from the store's rollups.
    pub fn period_stats(&self, experiment: &Experiment) -> Result<Vec<PeriodStats>> {
        let mut out = Vec::with_capacity(experiment.periods.len());
        for (i, period) in experiment.periods.iter().enumerate() {
            // The last period is open-ended so that records stamped slightly ahead of this
            // process's clock still count.
            let until = experiment.periods.get(i + 1).map(|next| next.started_at);
            let arm = |model: &str| -> Result<afs_store::UsageStats> {
                let window = StatsWindow {
                    since: Some(period.started_at),
                    until,
                    model: Some(model.to_string()),
                };
                Ok(self
                    .store
                    .stats_by_model(&window)?
                    .remove(model)
                    .unwrap_or_default())
            };
            out.push(PeriodStats {
                challenger_weight: period.challenger_weight,
                champion: arm(&experiment.champion)?,
                challenger: arm(&experiment.challenger)?,
            });
        }
        Ok(out)
    }

    /// The judge's report on the running experiment now, without recording or applying
    /// anything (`None` when no experiment runs).
    pub fn compare(&self) -> Result<Option<Comparison>> {
        let Some(experiment) = self.store.running_experiment()? else {
            return Ok(None);
        };
        let periods = self.period_stats(&experiment)?;
        Ok(Some(self.judge_now(&experiment, &periods)?))
    }

    /// One scheduled look at the running experiment: judges it, records the decision and
    /// the sequential state, applies a promotion or rollback when the config allows (in the
    /// same transaction), and lets the bandit reweight when it is due.
    pub fn check(&self) -> Result<CheckOutcome> {
        let Some(experiment) = self.store.running_experiment()? else {
            return Ok(CheckOutcome {
                comparison: None,
                applied: None,
                new_weight: None,
            });
        };
        let periods = self.period_stats(&experiment)?;
        let comparison = self.judge_now(&experiment, &periods)?;
        let decision = comparison.decision;
        let apply = match decision {
            Decision::Promote => self.config.enable_auto_promotion,
            Decision::Rollback => self.config.enable_auto_rollback,
            Decision::KeepTesting | Decision::Hold => false,
        };
        let mut reason = comparison.reason.clone();
        if !apply && matches!(decision, Decision::Promote | Decision::Rollback) {
            reason.push_str(" (not applied: automatic action is disabled)");
        }
        let note = EventNote {
            reason,
            statistics: Some(comparison.to_json().to_string()),
        };
        self.store
            .record_decision(experiment.id, decision, &comparison.states, &note, apply)?;
        tracing::info!(
            experiment = experiment.id,
            decision = decision.as_str(),
            applied = apply,
            reason = %comparison.reason,
            "checked experiment"
        );
        let mut new_weight = None;
        if decision == Decision::KeepTesting {
            let now = self.store.clock().now();
            if let Some(update) = bandit_update(
                &self.config,
                &experiment,
                &periods,
                (comparison.champion_units, comparison.challenger_units),
                now,
            ) {
                self.store.set_challenger_weight(
                    experiment.id,
                    update.weight,
                    WeightSource::Bandit,
                    &EventNote::reason(update.reason),
                )?;
                new_weight = Some(update.weight);
            }
        }
        Ok(CheckOutcome {
            comparison: Some(comparison),
            applied: apply.then_some(decision),
            new_weight,
        })
    }

    /// The event log, newest first, at most `limit` rows.
    pub fn history(&self, limit: Option<u64>) -> Result<Vec<ExperimentEvent>> {
        Ok(self.store.events(&EventFilter {
            limit,
            newest_first: true,
            ..EventFilter::default()
        })?)
    }

    fn running(&self) -> Result<Experiment> {
        self.store
            .running_experiment()?
            .ok_or(AbTestError::NoRunningExperiment)
    }

    fn judge_now(&self, experiment: &Experiment, periods: &[PeriodStats]) -> Result<Comparison> {
        let previous = self.store.sequential_states(experiment.id)?;
        let now = self.store.clock().now();
        let units = self.unit_stats(experiment, now)?;
        Ok(self.judge.judge(&JudgeInput {
            experiment,
            periods,
            units: &units,
            previous: &previous,
            now,
        }))
    }

    /// The experiment's per-unit statistics, with the feedback maturity cut at `now`.
    pub fn unit_stats(
        &self,
        experiment: &Experiment,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<afs_store::UnitCohort>> {
        let hours = self.config.feedback_maturity_hours;
        let cut = (hours > 0.0)
            .then(|| now - chrono::Duration::milliseconds((hours * 3_600_000.0) as i64));
        Ok(self.store.unit_stats(experiment.id, cut)?)
    }

    fn manual_note(&self, experiment: &Experiment, reason: &str) -> Result<EventNote> {
        let periods = self.period_stats(experiment)?;
        let comparison = self.judge_now(experiment, &periods)?;
        let reason = if reason.is_empty() { "manual" } else { reason };
        Ok(EventNote {
            reason: format!(
                "{reason} (the judge said: {}: {})",
                comparison.decision.as_str(),
                comparison.reason
            ),
            statistics: Some(comparison.to_json().to_string()),
        })
    }
}

fn check_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && (0.0..=1.0).contains(&weight) {
        Ok(())
    } else {
        Err(AbTestError::invalid(
            "weight",
            format!("{weight} is not within [0, 1]"),
        ))
    }
}
