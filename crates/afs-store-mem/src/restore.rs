//! [`RestoreStore`] in memory: records, versions, experiments, events and runs kept as
//! given (`afs migrate`, and tests of it).
//!
//! Records go through the same insertion primitive as every write (`State::insert`), so the
//! per-minute sums and the running experiment's per-unit statistics follow; the running
//! experiment's statistics start empty (with its periods and covariates) before any record.

use std::collections::BTreeMap;

use afs_store::units::UnitTally;
use afs_store::{
    ExperimentDump, ExperimentStatus, RestoreStore, Result, RetrainRun, StoreError, UsageRecord,
};

use crate::state::{micros_of, to_micros};
use crate::units::ExpUnits;
use crate::MemStore;

impl RestoreStore for MemStore {
    fn is_empty(&self) -> Result<bool> {
        let state = self.lock_read();
        Ok(state.records.is_empty()
            && state.meta.versions.is_empty()
            && state.meta.experiments.is_empty()
            && state.runs.is_empty()
            && state.kv.is_empty())
    }

    fn state_entries(&self) -> Result<Vec<(String, String)>> {
        let state = self.lock_read();
        let sorted: BTreeMap<&String, &String> = state.kv.iter().collect();
        Ok(sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn unit_covariates(&self, experiment_id: i64) -> Result<Vec<(String, UnitTally)>> {
        let state = self.lock_read();
        let Some(units) = state.units.get(&experiment_id) else {
            return Ok(Vec::new());
        };
        let sorted: BTreeMap<&String, &UnitTally> = units.pre.iter().collect();
        Ok(sorted
            .into_iter()
            .map(|(unit, tally)| (unit.clone(), *tally))
            .collect())
    }

    fn restore_experiments(&self, dump: &ExperimentDump) -> Result<()> {
        let mut guard = self.lock_write();
        let state = &mut *guard;
        if !state.meta.versions.is_empty() || !state.meta.experiments.is_empty() {
            return Err(StoreError::conflict(
                "the store already holds model versions or experiments",
            ));
        }
        state.meta.versions = dump.versions.clone();
        state.meta.experiments = dump.experiments.clone();
        for (id, states) in &dump.states {
            for s in states {
                state.meta.states.insert((*id, s.metric.clone()), s.clone());
            }
        }
        state.events = dump.events.clone();
        for e in &dump.experiments {
            if e.status != ExperimentStatus::Running {
                continue;
            }
            let mut units = ExpUnits::start(
                &e.champion,
                &e.challenger,
                micros_of(e.started_at),
                &state.records,
            );
            for p in e.periods.iter().skip(1) {
                units.start_period(p.index, micros_of(p.started_at), &state.records);
            }
            if let Some((_, pre)) = dump.covariates.iter().find(|(id, _)| *id == e.id) {
                units.pre = pre.iter().cloned().collect();
            }
            state.units.insert(e.id, units);
            state.live = Some(e.id);
        }
        Ok(())
    }

    fn restore_records(&self, records: &[UsageRecord]) -> Result<()> {
        let mut state = self.lock_write();
        for r in records {
            if state.by_id.contains_key(&r.id) {
                return Err(StoreError::conflict(format!(
                    "record {} already exists",
                    r.id
                )));
            }
        }
        for r in records {
            let mut record = r.clone();
            record.timestamp = to_micros(record.timestamp);
            state.insert(record);
        }
        Ok(())
    }

    fn restore_runs(&self, runs: &[RetrainRun]) -> Result<()> {
        afs_store::check_runs_finished(runs)?;
        let mut state = self.lock_write();
        if let Some(run) = runs.iter().find(|r| state.runs.contains_key(&r.id)) {
            return Err(StoreError::conflict(format!(
                "run {} already exists",
                run.id
            )));
        }
        for run in runs {
            state.runs.insert(run.id.clone(), run.clone());
        }
        Ok(())
    }
}
