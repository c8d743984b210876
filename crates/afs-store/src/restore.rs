//! Copying a whole store into a new one (`afs migrate`): the writes that keep what they are
//! given (ids, times, hashes) instead of stamping new ones, and the few reads a copy needs
//! that the other traits do not offer.
//!
//! A copy goes in this order: [`RestoreStore::restore_experiments`] (versions, experiments
//! with their periods, events, sequential states and the running experiment's covariates),
//! then the log in batches with [`RestoreStore::restore_records`] (so the per-unit
//! statistics of a running experiment are built by the same code that keeps them on every
//! write), then [`RestoreStore::restore_runs`] and the controller state
//! ([`crate::RunStore::put_states`]). The per-unit statistics of ended experiments are not
//! carried: they are rebuilt for the running experiment only.

use crate::error::Result;
use crate::experiment::{Experiment, ExperimentEvent, ModelVersion, SequentialState};
use crate::record::UsageRecord;
use crate::runs::RetrainRun;
use crate::units::UnitTally;

/// Everything of the experiment store a copy carries, as read from the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentDump {
    /// Every model version, by id.
    pub versions: Vec<ModelVersion>,
    /// Every experiment with its periods, by id.
    pub experiments: Vec<Experiment>,
    /// Every event row, by id.
    pub events: Vec<ExperimentEvent>,
    /// The sequential states of each experiment that has some, by experiment id.
    pub states: Vec<(i64, Vec<SequentialState>)>,
    /// The covariates (CUPED look-back sums per unit, see
    /// [`RestoreStore::unit_covariates`]) of the running experiment, by experiment id.
    pub covariates: Vec<(i64, Vec<(String, UnitTally)>)>,
}

/// The writes and reads that copy one store into another, empty one. Each write is one
/// transaction (all or nothing) and keeps every value it is given: ids, timestamps,
/// `created_at`, feedback with its time, hashes.
pub trait RestoreStore: Send + Sync {
    /// Whether the store holds nothing: no record, model version, experiment, run or state
    /// entry.
    fn is_empty(&self) -> Result<bool>;

    /// Every controller state entry (key, value), by key.
    fn state_entries(&self) -> Result<Vec<(String, String)>>;

    /// The covariates recorded for experiment `experiment_id` by
    /// [`record_unit_covariates`](crate::ExperimentStore::record_unit_covariates): per unit,
    /// its sums over the look-back window, by unit. A backend that does not keep a sum
    /// (SQLite keeps no record count `n`) returns 0 for it.
    fn unit_covariates(&self, experiment_id: i64) -> Result<Vec<(String, UnitTally)>>;

    /// Writes versions, experiments (with their periods), events, sequential states and
    /// covariates exactly as given, with their ids, and starts the per-unit statistics of a
    /// running experiment (empty until records arrive). `Conflict` when the store already
    /// holds a version or an experiment; invariants of [`crate::ExperimentStore`] (one
    /// champion, one running experiment, unique names) are checked by the database.
    fn restore_experiments(&self, dump: &ExperimentDump) -> Result<()>;

    /// Writes records exactly as given (id, timestamp, feedback and its time, `created_at`,
    /// dedupe hash, pair key), in one transaction, keeping the rollups and the running
    /// experiment's per-unit statistics as every write keeps them. `Conflict` when a
    /// record with one of the ids exists. Records should come in time order (as a stream
    /// oldest first gives them), so that records of one microsecond keep their order.
    fn restore_records(&self, records: &[UsageRecord]) -> Result<()>;

    /// Writes finished runs exactly as given, in one transaction. `Conflict` when a run with
    /// one of the ids exists; `InvalidInput` for a run still `running` (its owner cannot be
    /// carried to another database).
    fn restore_runs(&self, runs: &[RetrainRun]) -> Result<()>;
}
