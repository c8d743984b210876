//! The boundary between the store's domain rules and a storage backend.
//!
//! The rules of model versions and experiments (one champion, at most one running
//! experiment, names never reused, the champion's weight is `1 − challenger weight`,
//! contiguous periods, one event row per change, bad input refused before anything is
//! written) are written once, here, over [`ExperimentTx`]: the few reads and writes a backend
//! does inside one transaction. A backend implements [`ExperimentBackend`] (how to run a
//! transaction, plus the per-unit statistics it keeps its own way) and gets
//! [`ExperimentStore`] from the blanket implementation below; it never re-implements a rule.
//!
//! # What a backend must guarantee
//!
//! * [`ExperimentBackend::write`] runs its closure in one serialisable write transaction:
//!   writers of every process sharing the store are serialised, and an error returned by the
//!   closure (or a failure to commit) leaves nothing written.
//! * [`ExperimentBackend::read`] sees one consistent snapshot.
//! * [`ExperimentTx`]'s methods do exactly what their documentation says and nothing else;
//!   timestamps they store are the ones given (the rules take them from the backend's clock
//!   through [`ExperimentTx::now`]), kept to at least microsecond precision.
//!
//! The conformance suite (`afs_store::conformance`, feature `testing`) checks the result.

use chrono::{DateTime, Utc};

use crate::error::{Result, StoreError};
use crate::experiment::{
    Decision, EventFilter, EventKind, EventNote, Experiment, ExperimentEvent, ExperimentStatus,
    ExperimentStore, ModelVersion, NewModelVersion, SequentialState, VersionStatus, WeightSource,
};
use crate::units::UnitCohort;

/// Largest accepted model path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// One event row to write.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The experiment concerned, if any.
    pub experiment_id: Option<i64>,
    /// What happened.
    pub kind: EventKind,
    /// The version acted on, if any.
    pub model: Option<&'a str>,
    /// The judge's decision, if any.
    pub decision: Option<Decision>,
    /// The weight set, if any.
    pub weight: Option<f64>,
    /// Why, and the statistics behind it.
    pub note: &'a EventNote,
}

/// An experiment to start: its first period (index 0, source [`WeightSource::Initial`])
/// starts with it.
#[derive(Debug, Clone, Copy)]
pub struct NewExperiment<'a> {
    /// The champion it compares against.
    pub champion: &'a ModelVersion,
    /// The challenger just registered.
    pub challenger: &'a ModelVersion,
    /// The routing seed.
    pub seed: u64,
    /// The challenger's share of traffic.
    pub weight: f64,
    /// When it starts.
    pub at: DateTime<Utc>,
}

/// The reads and writes a backend offers inside one transaction of
/// [`ExperimentBackend::read`] or [`ExperimentBackend::write`]. Writes are called only
/// within `write`. No method checks a rule: the caller (this module) has.
pub trait ExperimentTx {
    /// The backend's clock, read once per call of a rule.
    fn now(&self) -> DateTime<Utc>;

    /// The version whose status is champion, if any.
    fn champion(&mut self) -> Result<Option<ModelVersion>>;
    /// Every version, by id.
    fn versions(&mut self) -> Result<Vec<ModelVersion>>;
    /// The version with this id; `NotFound` when there is none.
    fn version(&mut self, id: i64) -> Result<ModelVersion>;
    /// The version with this name, if any.
    fn version_named(&mut self, name: &str) -> Result<Option<ModelVersion>>;
    /// The id of the experiment whose status is running, if any.
    fn running_experiment_id(&mut self) -> Result<Option<i64>>;
    /// The experiment with this id and its periods, if any.
    fn experiment(&mut self, id: i64) -> Result<Option<Experiment>>;
    /// Every experiment with its periods, by id.
    fn experiments(&mut self) -> Result<Vec<Experiment>>;
    /// The sequential states of an experiment, by metric.
    fn sequential_states(&mut self, experiment_id: i64) -> Result<Vec<SequentialState>>;
    /// The event rows `filter` selects, by id (descending when `newest_first`).
    fn events(&mut self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>>;
    /// How many event rows are of `kind`. The default reads them; a backend counts where
    /// the data is.
    fn count_events(&mut self, kind: EventKind) -> Result<u64> {
        let filter = EventFilter {
            kinds: vec![kind],
            ..EventFilter::default()
        };
        Ok(self.events(&filter)?.len() as u64)
    }

    /// Registers a version with this status and traffic weight, created `at` (and promoted
    /// `at` when it is the champion); returns its id, greater than every id before.
    fn insert_version(
        &mut self,
        version: &NewModelVersion,
        status: VersionStatus,
        weight: f64,
        at: DateTime<Utc>,
    ) -> Result<i64>;
    /// Retires a version: status retired, weight 0, retired `at`.
    fn retire_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()>;
    /// Makes a version champion with weight 1, promoted `at` unless it already was champion.
    fn crown_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()>;
    /// Sets a version's traffic weight.
    fn set_version_weight(&mut self, id: i64, weight: f64) -> Result<()>;
    /// Starts a running experiment and its first period; returns its id, greater than every
    /// id before. A backend keeping per-unit statistics starts them here.
    fn insert_experiment(&mut self, experiment: &NewExperiment<'_>) -> Result<i64>;
    /// Ends the experiment's open period `at` and starts the next (index + 1) with this
    /// weight and source; sets the experiment's `challenger_weight` to it.
    fn start_period(
        &mut self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Sets the experiment's status and end time, and ends its open period `at`.
    fn end_experiment(
        &mut self,
        experiment_id: i64,
        status: ExperimentStatus,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Replaces the stored states of these metrics (others are kept).
    fn put_sequential_states(
        &mut self,
        experiment_id: i64,
        states: &[SequentialState],
    ) -> Result<()>;
    /// Appends an event row; returns it as stored, with its id.
    fn insert_event(&mut self, event: &NewEvent<'_>) -> Result<ExperimentEvent>;
}

/// A backend of the experiment store: transactions over [`ExperimentTx`], plus the per-unit
/// statistics, which each backend keeps in its own way. Implementing it gives
/// [`ExperimentStore`] with every rule.
pub trait ExperimentBackend: Send + Sync {
    /// The most bytes a free-text field (reason, statistics, dataset) may hold.
    fn max_field_bytes(&self) -> usize;

    /// Runs `f` in one read transaction.
    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T>;

    /// Runs `f` in one write transaction and commits it when `f` returns `Ok`; `what` names
    /// the change in error messages.
    fn write<T>(&self, what: &str, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>)
        -> Result<T>;

    /// See [`ExperimentStore::unit_stats`].
    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>>;

    /// See [`ExperimentStore::record_unit_covariates`].
    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64>;
}

/// Refuses a weight outside [0, 1].
pub fn check_weight(weight: f64) -> Result<()> {
    if !weight.is_finite() || !(0.0..=1.0).contains(&weight) {
        return Err(StoreError::invalid(
            "weight",
            format!("{weight} is not a number within [0, 1]"),
        ));
    }
    Ok(())
}

/// Refuses an empty required field and any field over its limit: a version's name is the
/// `model` of its records (a rollup key and a metric label) and is bounded like them, a path
/// like a path, other text by `max_field_bytes`.
fn check_text(
    max_field_bytes: usize,
    field: &'static str,
    value: &str,
    required: bool,
) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    let limit = match field {
        "name" => crate::MAX_NAME_BYTES,
        "model_path" => MAX_PATH_BYTES,
        _ => max_field_bytes,
    }
    .min(max_field_bytes);
    if value.len() > limit {
        return Err(StoreError::invalid(
            field,
            format!("{} bytes exceeds the limit of {limit} bytes", value.len()),
        ));
    }
    Ok(())
}

/// Checks a version to register: name and path present and bounded, provenance bounded.
pub fn check_version(max_field_bytes: usize, version: &NewModelVersion) -> Result<()> {
    check_text(max_field_bytes, "name", &version.name, true)?;
    check_text(max_field_bytes, "model_path", &version.model_path, true)?;
    if let Some(dataset) = &version.dataset {
        check_text(max_field_bytes, "dataset", dataset, false)?;
    }
    if let Some(run_id) = &version.run_id {
        check_text(max_field_bytes, "run_id", run_id, false)?;
    }
    Ok(())
}

/// Checks an event note: reason and statistics bounded.
pub fn check_note(max_field_bytes: usize, note: &EventNote) -> Result<()> {
    check_text(max_field_bytes, "reason", &note.reason, false)?;
    if let Some(statistics) = &note.statistics {
        check_text(max_field_bytes, "statistics", statistics, false)?;
    }
    Ok(())
}

/// Checks a sequential state: a metric name, finite numbers (the backends keep them in
/// `NOT NULL` floating-point columns), and a judge's own `state` within `max_field_bytes`.
/// The `state` text is never parsed: its meaning is the judge's.
pub fn check_state(max_field_bytes: usize, state: &SequentialState) -> Result<()> {
    check_text(max_field_bytes, "metric", &state.metric, true)?;
    let numbers = [
        ("baseline", state.baseline),
        ("tau", state.tau),
        ("theta0", state.theta0),
        ("p_better", state.p_better),
        ("p_worse", state.p_worse),
        ("cs_lower", state.cs_lower),
        ("cs_upper", state.cs_upper),
    ];
    for (field, value) in numbers {
        if !value.is_finite() {
            return Err(StoreError::invalid(
                field,
                format!("{value} is not finite (metric {})", state.metric),
            ));
        }
    }
    if let Some(text) = &state.state {
        check_text(max_field_bytes, "state", text, false)?;
    }
    Ok(())
}

/// Fails with `Conflict` when `name` was ever used by a version.
fn check_name_unused(tx: &mut dyn ExperimentTx, name: &str) -> Result<()> {
    match tx.version_named(name)? {
        Some(v) => Err(StoreError::conflict(format!(
            "model name {name:?} is already used by version {} ({}); names are never reused \
             because usage statistics are kept per model name",
            v.id,
            v.status.as_str()
        ))),
        None => Ok(()),
    }
}

fn not_found(id: i64) -> StoreError {
    StoreError::NotFound {
        what: "experiment",
        id: id.to_string(),
    }
}

/// The experiment `id` and its champion and challenger versions, or `Conflict`/`NotFound`
/// when it is not running.
fn running(tx: &mut dyn ExperimentTx, id: i64) -> Result<(Experiment, ModelVersion, ModelVersion)> {
    let experiment = tx.experiment(id)?.ok_or_else(|| not_found(id))?;
    if experiment.status != ExperimentStatus::Running {
        return Err(StoreError::conflict(format!(
            "experiment {id} is not running (it is {})",
            experiment.status.as_str()
        )));
    }
    let mut named = |name: &str| {
        tx.version_named(name)?.ok_or_else(|| StoreError::NotFound {
            what: "model version",
            id: name.to_string(),
        })
    };
    let champion = named(&experiment.champion)?;
    let challenger = named(&experiment.challenger)?;
    Ok((experiment, champion, challenger))
}

/// Ends the running experiment `id`: the winner becomes (or stays) champion, the loser
/// retires, the experiment and its open period end, and a promote or rollback event is
/// written.
fn end_experiment(
    tx: &mut dyn ExperimentTx,
    id: i64,
    outcome: ExperimentStatus,
    note: &EventNote,
    decision: Option<Decision>,
) -> Result<()> {
    let (_, champion, challenger) = running(tx, id)?;
    let at = tx.now();
    let (winner, loser) = match outcome {
        ExperimentStatus::Promoted => (challenger.id, champion.id),
        _ => (champion.id, challenger.id),
    };
    // Retire first: a backend may allow one champion and one challenger at a time.
    tx.retire_version(loser, at)?;
    tx.crown_version(winner, at)?;
    tx.end_experiment(id, outcome, at)?;
    let kind = if outcome == ExperimentStatus::Promoted {
        EventKind::Promote
    } else {
        EventKind::Rollback
    };
    tx.insert_event(&NewEvent {
        at,
        experiment_id: Some(id),
        kind,
        model: Some(&challenger.name),
        decision,
        weight: None,
        note,
    })?;
    Ok(())
}

fn experiment_by_id(tx: &mut dyn ExperimentTx, id: i64) -> Result<Experiment> {
    tx.experiment(id)?.ok_or_else(|| not_found(id))
}

impl<B: ExperimentBackend> ExperimentStore for B {
    fn champion(&self) -> Result<Option<ModelVersion>> {
        self.read(|tx| tx.champion())
    }

    fn model_versions(&self) -> Result<Vec<ModelVersion>> {
        self.read(|tx| tx.versions())
    }

    fn model_version(&self, name: &str) -> Result<ModelVersion> {
        self.read(|tx| tx.version_named(name))?
            .ok_or_else(|| StoreError::NotFound {
                what: "model version",
                id: name.to_string(),
            })
    }

    fn running_experiment(&self) -> Result<Option<Experiment>> {
        self.read(|tx| match tx.running_experiment_id()? {
            Some(id) => tx.experiment(id),
            None => Ok(None),
        })
    }

    fn experiment(&self, id: i64) -> Result<Experiment> {
        self.read(|tx| experiment_by_id(tx, id))
    }

    fn experiments(&self) -> Result<Vec<Experiment>> {
        self.read(|tx| tx.experiments())
    }

    fn set_champion(&self, version: &NewModelVersion, note: &EventNote) -> Result<ModelVersion> {
        check_version(self.max_field_bytes(), version)?;
        check_note(self.max_field_bytes(), note)?;
        self.write("set champion", |tx| {
            if let Some(id) = tx.running_experiment_id()? {
                return Err(StoreError::conflict(format!(
                    "experiment {id} is running; promote or roll back its challenger before \
                     setting a champion"
                )));
            }
            check_name_unused(tx, &version.name)?;
            let at = tx.now();
            if let Some(old) = tx.champion()? {
                tx.retire_version(old.id, at)?;
            }
            let id = tx.insert_version(version, VersionStatus::Champion, 1.0, at)?;
            tx.insert_event(&NewEvent {
                at,
                experiment_id: None,
                kind: EventKind::SetChampion,
                model: Some(&version.name),
                decision: None,
                weight: Some(1.0),
                note,
            })?;
            tx.version(id)
        })
    }

    fn deploy_challenger(
        &self,
        version: &NewModelVersion,
        weight: f64,
        seed: u64,
        note: &EventNote,
    ) -> Result<Experiment> {
        check_version(self.max_field_bytes(), version)?;
        check_note(self.max_field_bytes(), note)?;
        check_weight(weight)?;
        self.write("deploy challenger", |tx| {
            let Some(champion) = tx.champion()? else {
                return Err(StoreError::conflict(
                    "no champion is set; set a champion before deploying a challenger",
                ));
            };
            if let Some(id) = tx.running_experiment_id()? {
                return Err(StoreError::conflict(format!(
                    "experiment {id} is already running; promote or roll back its challenger first"
                )));
            }
            check_name_unused(tx, &version.name)?;
            let at = tx.now();
            let challenger_id =
                tx.insert_version(version, VersionStatus::Challenger, weight, at)?;
            tx.set_version_weight(champion.id, 1.0 - weight)?;
            let challenger = tx.version(challenger_id)?;
            let id = tx.insert_experiment(&NewExperiment {
                champion: &champion,
                challenger: &challenger,
                seed,
                weight,
                at,
            })?;
            tx.insert_event(&NewEvent {
                at,
                experiment_id: Some(id),
                kind: EventKind::Deploy,
                model: Some(&version.name),
                decision: None,
                weight: Some(weight),
                note,
            })?;
            experiment_by_id(tx, id)
        })
    }

    fn set_challenger_weight(
        &self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        note: &EventNote,
    ) -> Result<Experiment> {
        check_weight(weight)?;
        check_note(self.max_field_bytes(), note)?;
        self.write("set weight", |tx| {
            let (_, champion, challenger) = running(tx, experiment_id)?;
            let at = tx.now();
            tx.start_period(experiment_id, weight, source, at)?;
            tx.set_version_weight(challenger.id, weight)?;
            tx.set_version_weight(champion.id, 1.0 - weight)?;
            tx.insert_event(&NewEvent {
                at,
                experiment_id: Some(experiment_id),
                kind: EventKind::SetWeight,
                model: None,
                decision: None,
                weight: Some(weight),
                note,
            })?;
            experiment_by_id(tx, experiment_id)
        })
    }

    fn promote(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment> {
        check_note(self.max_field_bytes(), note)?;
        self.write("promote", |tx| {
            end_experiment(tx, experiment_id, ExperimentStatus::Promoted, note, None)?;
            experiment_by_id(tx, experiment_id)
        })
    }

    fn rollback(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment> {
        check_note(self.max_field_bytes(), note)?;
        self.write("rollback", |tx| {
            end_experiment(tx, experiment_id, ExperimentStatus::RolledBack, note, None)?;
            experiment_by_id(tx, experiment_id)
        })
    }

    fn record_decision(
        &self,
        experiment_id: i64,
        decision: Decision,
        states: &[SequentialState],
        note: &EventNote,
        apply: bool,
    ) -> Result<ExperimentEvent> {
        check_note(self.max_field_bytes(), note)?;
        for state in states {
            check_state(self.max_field_bytes(), state)?;
        }
        self.write("record decision", |tx| {
            running(tx, experiment_id)?;
            tx.put_sequential_states(experiment_id, states)?;
            let event = tx.insert_event(&NewEvent {
                at: tx.now(),
                experiment_id: Some(experiment_id),
                kind: EventKind::Decision,
                model: None,
                decision: Some(decision),
                weight: None,
                note,
            })?;
            if apply {
                let outcome = match decision {
                    Decision::Promote => Some(ExperimentStatus::Promoted),
                    Decision::Rollback => Some(ExperimentStatus::RolledBack),
                    Decision::KeepTesting | Decision::Hold => None,
                };
                if let Some(outcome) = outcome {
                    end_experiment(tx, experiment_id, outcome, note, Some(decision))?;
                }
            }
            Ok(event)
        })
    }

    fn sequential_states(&self, experiment_id: i64) -> Result<Vec<SequentialState>> {
        self.read(|tx| tx.sequential_states(experiment_id))
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>> {
        self.read(|tx| tx.events(filter))
    }

    fn count_events(&self, kind: EventKind) -> Result<u64> {
        self.read(|tx| tx.count_events(kind))
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        ExperimentBackend::unit_stats(self, experiment_id, feedback_before)
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        ExperimentBackend::record_unit_covariates(self, experiment_id, since)
    }
}
