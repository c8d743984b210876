//! [`ExperimentBackend`] in memory: the reads and writes the rules of
//! [`afs_store::backend`] run on, and the per-unit statistics. No rule is written here.
//!
//! A transaction works on a copy of the versions, experiments and sequential states (a few
//! rows), appends its events to a list of its own and queues its changes to the per-unit
//! statistics; all of it replaces the store's state only when the rules return `Ok`, under
//! the write lock, so an error leaves nothing written.

use afs_store::backend::{ExperimentBackend, ExperimentTx, NewEvent, NewExperiment};
use afs_store::{
    EventFilter, EventKind, Experiment, ExperimentEvent, ExperimentPeriod, ExperimentStatus,
    ModelVersion, NewModelVersion, Result, SequentialState, StoreError, UnitCohort, VersionStatus,
    WeightSource,
};
use chrono::{DateTime, Utc};

use crate::state::{micros_of, Meta};
use crate::store::MemStore;
use crate::units::ExpUnits;

/// A change to the per-unit statistics, applied at commit.
#[derive(Debug)]
enum UnitOp {
    Start {
        id: i64,
        champion: String,
        challenger: String,
        started_us: i64,
    },
    Period {
        id: i64,
        index: u32,
        started_us: i64,
    },
    End {
        id: i64,
    },
}

struct MemTx<'a> {
    now: DateTime<Utc>,
    meta: Meta,
    events: &'a [ExperimentEvent],
    new_events: Vec<ExperimentEvent>,
    unit_ops: Vec<UnitOp>,
}

fn version_not_found(id: i64) -> StoreError {
    StoreError::NotFound {
        what: "model version",
        id: id.to_string(),
    }
}

fn experiment_not_found(id: i64) -> StoreError {
    StoreError::NotFound {
        what: "experiment",
        id: id.to_string(),
    }
}

impl MemTx<'_> {
    fn version_mut(&mut self, id: i64) -> Result<&mut ModelVersion> {
        self.meta
            .versions
            .iter_mut()
            .find(|v| v.id == id)
            .ok_or_else(|| version_not_found(id))
    }

    fn experiment_mut(&mut self, id: i64) -> Result<&mut Experiment> {
        self.meta
            .experiments
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| experiment_not_found(id))
    }
}

impl ExperimentTx for MemTx<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.now
    }

    fn champion(&mut self) -> Result<Option<ModelVersion>> {
        Ok(self
            .meta
            .versions
            .iter()
            .find(|v| v.status == VersionStatus::Champion)
            .cloned())
    }

    fn versions(&mut self) -> Result<Vec<ModelVersion>> {
        Ok(self.meta.versions.clone())
    }

    fn version(&mut self, id: i64) -> Result<ModelVersion> {
        self.version_mut(id).map(|v| v.clone())
    }

    fn version_named(&mut self, name: &str) -> Result<Option<ModelVersion>> {
        Ok(self.meta.versions.iter().find(|v| v.name == name).cloned())
    }

    fn running_experiment_id(&mut self) -> Result<Option<i64>> {
        Ok(self
            .meta
            .experiments
            .iter()
            .find(|e| e.status == ExperimentStatus::Running)
            .map(|e| e.id))
    }

    fn experiment(&mut self, id: i64) -> Result<Option<Experiment>> {
        Ok(self.meta.experiments.iter().find(|e| e.id == id).cloned())
    }

    fn experiments(&mut self) -> Result<Vec<Experiment>> {
        Ok(self.meta.experiments.clone())
    }

    fn sequential_states(&mut self, experiment_id: i64) -> Result<Vec<SequentialState>> {
        Ok(self
            .meta
            .states
            .range((experiment_id, String::new())..)
            .take_while(|((id, _), _)| *id == experiment_id)
            .map(|(_, s)| s.clone())
            .collect())
    }

    fn events(&mut self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>> {
        let selected = |e: &&ExperimentEvent| {
            filter
                .experiment_id
                .is_none_or(|id| e.experiment_id == Some(id))
                && (filter.kinds.is_empty() || filter.kinds.contains(&e.kind))
        };
        let all = self.events.iter().chain(&self.new_events);
        let limit = filter
            .limit
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok(if filter.newest_first {
            all.rev().filter(selected).take(limit).cloned().collect()
        } else {
            all.filter(selected).take(limit).cloned().collect()
        })
    }

    fn count_events(&mut self, kind: EventKind) -> Result<u64> {
        Ok(self
            .events
            .iter()
            .chain(&self.new_events)
            .filter(|e| e.kind == kind)
            .count() as u64)
    }

    fn insert_version(
        &mut self,
        version: &NewModelVersion,
        status: VersionStatus,
        weight: f64,
        at: DateTime<Utc>,
    ) -> Result<i64> {
        let id = self.meta.versions.last().map_or(1, |v| v.id + 1);
        self.meta.versions.push(ModelVersion {
            id,
            name: version.name.clone(),
            model_path: version.model_path.clone(),
            status,
            traffic_weight: weight,
            created_at: at,
            promoted_at: (status == VersionStatus::Champion).then_some(at),
            retired_at: None,
            dataset: version.dataset.clone(),
            run_id: version.run_id.clone(),
        });
        Ok(id)
    }

    fn retire_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        let v = self.version_mut(id)?;
        v.status = VersionStatus::Retired;
        v.traffic_weight = 0.0;
        v.retired_at = Some(at);
        Ok(())
    }

    fn crown_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        let v = self.version_mut(id)?;
        if v.status != VersionStatus::Champion {
            v.promoted_at = Some(at);
        }
        v.status = VersionStatus::Champion;
        v.traffic_weight = 1.0;
        Ok(())
    }

    fn set_version_weight(&mut self, id: i64, weight: f64) -> Result<()> {
        self.version_mut(id)?.traffic_weight = weight;
        Ok(())
    }

    fn insert_experiment(&mut self, new: &NewExperiment<'_>) -> Result<i64> {
        let id = self.meta.experiments.last().map_or(1, |e| e.id + 1);
        self.meta.experiments.push(Experiment {
            id,
            champion: new.champion.name.clone(),
            challenger: new.challenger.name.clone(),
            status: ExperimentStatus::Running,
            seed: new.seed,
            challenger_weight: new.weight,
            started_at: new.at,
            ended_at: None,
            periods: vec![ExperimentPeriod {
                index: 0,
                started_at: new.at,
                ended_at: None,
                challenger_weight: new.weight,
                source: WeightSource::Initial,
            }],
        });
        self.unit_ops.push(UnitOp::Start {
            id,
            champion: new.champion.name.clone(),
            challenger: new.challenger.name.clone(),
            started_us: micros_of(new.at),
        });
        Ok(id)
    }

    fn start_period(
        &mut self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let experiment = self.experiment_mut(experiment_id)?;
        let index = experiment.periods.last().map_or(0, |p| p.index + 1);
        if let Some(last) = experiment.periods.last_mut() {
            last.ended_at = Some(at);
        }
        experiment.periods.push(ExperimentPeriod {
            index,
            started_at: at,
            ended_at: None,
            challenger_weight: weight,
            source,
        });
        experiment.challenger_weight = weight;
        self.unit_ops.push(UnitOp::Period {
            id: experiment_id,
            index,
            started_us: micros_of(at),
        });
        Ok(())
    }

    fn end_experiment(
        &mut self,
        experiment_id: i64,
        status: ExperimentStatus,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let experiment = self.experiment_mut(experiment_id)?;
        experiment.status = status;
        experiment.ended_at = Some(at);
        for period in &mut experiment.periods {
            if period.ended_at.is_none() {
                period.ended_at = Some(at);
            }
        }
        self.unit_ops.push(UnitOp::End { id: experiment_id });
        Ok(())
    }

    fn put_sequential_states(
        &mut self,
        experiment_id: i64,
        states: &[SequentialState],
    ) -> Result<()> {
        // Kept whole: the numbers and a judge's own `state` text come back as given.
        for s in states {
            self.meta
                .states
                .insert((experiment_id, s.metric.clone()), s.clone());
        }
        Ok(())
    }

    fn insert_event(&mut self, event: &NewEvent<'_>) -> Result<ExperimentEvent> {
        let id = self.events.len() as i64 + self.new_events.len() as i64 + 1;
        let stored = ExperimentEvent {
            id,
            at: event.at,
            experiment_id: event.experiment_id,
            kind: event.kind,
            model: event.model.map(str::to_string),
            decision: event.decision,
            weight: event.weight,
            reason: event.note.reason.clone(),
            statistics: event.note.statistics.clone(),
        };
        self.new_events.push(stored.clone());
        Ok(stored)
    }
}

impl ExperimentBackend for MemStore {
    fn max_field_bytes(&self) -> usize {
        MemStore::max_field_bytes(self)
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T> {
        let now = self.now();
        let state = self.lock_read();
        let mut tx = MemTx {
            now,
            meta: state.meta.clone(),
            events: &state.events,
            new_events: Vec::new(),
            unit_ops: Vec::new(),
        };
        f(&mut tx)
    }

    fn write<T>(
        &self,
        _what: &str,
        f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>,
    ) -> Result<T> {
        let now = self.now();
        let mut guard = self.lock_write();
        let state = &mut *guard;
        let mut tx = MemTx {
            now,
            meta: state.meta.clone(),
            events: &state.events,
            new_events: Vec::new(),
            unit_ops: Vec::new(),
        };
        let value = f(&mut tx)?;
        let MemTx {
            meta,
            new_events,
            unit_ops,
            ..
        } = tx;
        state.meta = meta;
        state.events.extend(new_events);
        for op in unit_ops {
            match op {
                UnitOp::Start {
                    id,
                    champion,
                    challenger,
                    started_us,
                } => {
                    let units = ExpUnits::start(&champion, &challenger, started_us, &state.records);
                    state.units.insert(id, units);
                    state.live = Some(id);
                }
                UnitOp::Period {
                    id,
                    index,
                    started_us,
                } => {
                    if let Some(units) = state.units.get_mut(&id) {
                        units.start_period(index, started_us, &state.records);
                    }
                }
                UnitOp::End { id } => {
                    if state.live == Some(id) {
                        state.live = None;
                    }
                }
            }
        }
        Ok(value)
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        let state = self.lock_read();
        let experiment = state
            .meta
            .experiments
            .iter()
            .find(|e| e.id == experiment_id)
            .ok_or_else(|| experiment_not_found(experiment_id))?;
        let Some(units) = state.units.get(&experiment_id) else {
            return Ok(Vec::new());
        };
        let cut = feedback_before.map(|cut| (micros_of(cut), experiment.ended_at.map(micros_of)));
        Ok(units.cohorts(cut, &state.records, &state.with_feedback))
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        let mut guard = self.lock_write();
        let state = &mut *guard;
        if !state.meta.experiments.iter().any(|e| e.id == experiment_id) {
            return Err(experiment_not_found(experiment_id));
        }
        Ok(state.units.get_mut(&experiment_id).map_or(0, |units| {
            units.record_covariates(micros_of(since), &state.records)
        }))
    }
}
