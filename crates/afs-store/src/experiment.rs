//! Model versions, champion/challenger experiments and their event log: the store side of
//! afs-abtest, database-neutral.
//!
//! The store keeps the *state* of experiments (which version serves, with which weight, since
//! when, what the sequential test remembered at its last look) and an append-only log of
//! every state change and every decision. It does not interpret statistics: the numbers and the
//! opaque `state` of a [`SequentialState`] and the JSON text of an event are the judge's
//! business.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::serde_time;
use crate::units::UnitCohort;

/// The role of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionStatus {
    /// Serves all traffic not given to a challenger. At most one version is champion.
    Champion,
    /// Serves a share of traffic in the running experiment. At most one version is challenger.
    Challenger,
    /// No longer serves; kept for history.
    Retired,
}

impl VersionStatus {
    /// The lowercase name stored and shown: `champion`, `challenger`, `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Champion => "champion",
            VersionStatus::Challenger => "challenger",
            VersionStatus::Retired => "retired",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "champion" => VersionStatus::Champion,
            "challenger" => VersionStatus::Challenger,
            "retired" => VersionStatus::Retired,
            _ => return None,
        })
    }
}

/// A model version to register.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewModelVersion {
    /// The version's name: the `model` value its service logs with every call (non-empty).
    /// Names are never reused, because usage statistics are kept per model name.
    pub name: String,
    /// Where the model lives (a path or URI; non-empty).
    pub model_path: String,
    /// The dataset it was trained on, free-form (a path, a hash), if known.
    pub dataset: Option<String>,
    /// The retrain run that produced it, free-form, if known.
    pub run_id: Option<String>,
}

impl NewModelVersion {
    /// A version with a name and a path and no provenance.
    pub fn new(name: impl Into<String>, model_path: impl Into<String>) -> Self {
        NewModelVersion {
            name: name.into(),
            model_path: model_path.into(),
            ..Self::default()
        }
    }
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    /// Store-assigned id, increasing with registration order.
    pub id: i64,
    /// The version's name (the `model` of its usage records).
    pub name: String,
    /// Where the model lives.
    pub model_path: String,
    /// Its current role.
    pub status: VersionStatus,
    /// Its current share of traffic in [0, 1] (0 once retired).
    pub traffic_weight: f64,
    /// When it was registered.
    #[serde(serialize_with = "serde_time::at")]
    pub created_at: DateTime<Utc>,
    /// When it last became champion, if ever.
    #[serde(serialize_with = "serde_time::at_opt")]
    pub promoted_at: Option<DateTime<Utc>>,
    /// When it was retired, if it was.
    #[serde(serialize_with = "serde_time::at_opt")]
    pub retired_at: Option<DateTime<Utc>>,
    /// The dataset it was trained on, if recorded.
    pub dataset: Option<String>,
    /// The retrain run that produced it, if recorded.
    pub run_id: Option<String>,
}

/// Where an experiment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExperimentStatus {
    /// Traffic is split; the judge looks at it. At most one experiment runs at a time.
    Running,
    /// Ended with the challenger promoted to champion.
    Promoted,
    /// Ended with the challenger retired.
    RolledBack,
}

impl ExperimentStatus {
    /// The lowercase name stored and shown: `running`, `promoted`, `rolled_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentStatus::Running => "running",
            ExperimentStatus::Promoted => "promoted",
            ExperimentStatus::RolledBack => "rolled_back",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => ExperimentStatus::Running,
            "promoted" => ExperimentStatus::Promoted,
            "rolled_back" => ExperimentStatus::RolledBack,
            _ => return None,
        })
    }
}

/// Who set a period's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightSource {
    /// The weight given when the challenger was deployed.
    Initial,
    /// An operator or library call.
    Manual,
    /// The bandit (Thompson sampling) reweighting.
    Bandit,
}

impl WeightSource {
    /// The lowercase name stored and shown: `initial`, `manual`, `bandit`.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightSource::Initial => "initial",
            WeightSource::Manual => "manual",
            WeightSource::Bandit => "bandit",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "initial" => WeightSource::Initial,
            "manual" => WeightSource::Manual,
            "bandit" => WeightSource::Bandit,
            _ => return None,
        })
    }
}

/// A stretch of an experiment with one challenger weight. Every weight change ends the
/// current period and starts the next, so expected arm counts (sample-ratio checks) and
/// estimates can be computed per period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentPeriod {
    /// Position within the experiment, from 0.
    pub index: u32,
    /// When the period started.
    #[serde(serialize_with = "serde_time::at")]
    pub started_at: DateTime<Utc>,
    /// When it ended (the next period's start, or the experiment's end); `None` while current.
    #[serde(serialize_with = "serde_time::at_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    /// The challenger's share of traffic during the period, in [0, 1].
    pub challenger_weight: f64,
    /// Who set the weight.
    pub source: WeightSource,
}

/// A champion/challenger experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    /// Store-assigned id, increasing.
    pub id: i64,
    /// Name of the champion version the experiment compares against.
    pub champion: String,
    /// Name of the challenger version.
    pub challenger: String,
    /// Where it stands.
    pub status: ExperimentStatus,
    /// The routing seed: sticky assignment hashes it with the unit id. Fixed for the
    /// experiment's lifetime, so weight changes keep every unit's hash position.
    pub seed: u64,
    /// The challenger's current share of traffic (the last period's weight).
    pub challenger_weight: f64,
    /// When the challenger was deployed.
    #[serde(serialize_with = "serde_time::at")]
    pub started_at: DateTime<Utc>,
    /// When it was promoted or rolled back.
    #[serde(serialize_with = "serde_time::at_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Its periods, oldest first; never empty.
    pub periods: Vec<ExperimentPeriod>,
}

impl Experiment {
    /// When the weight last changed (the start of the current period).
    pub fn weight_updated_at(&self) -> DateTime<Utc> {
        self.periods
            .last()
            .map_or(self.started_at, |p| p.started_at)
    }
}

/// What a judge remembers about one metric (or any question it tracks) between looks: the
/// store keeps one per `(experiment, metric)` key, verbatim, and never interprets it.
///
/// # Who uses which field
///
/// * **Every judge:** `metric` (the key; non-empty, unique per experiment), `n_looks`,
///   `started_at` and `updated_at` (the caller's times, kept to the microsecond).
/// * **The default judge** (`afs_abtest::SequentialJudge`, mSPRT) keeps its test in the
///   numeric fields `baseline`, `tau`, `theta0`, `p_better`, `p_worse`, `cs_lower` and
///   `cs_upper` (afs-abtest documents their meaning) and leaves `state` at `None`.
/// * **Any other judge** (Bayesian, fixed-horizon, alpha-spending, ...) keeps what it must
///   remember in `state`: text of its own, conventionally JSON, at most the store's
///   `max_field_bytes` (1 MiB by default) — keep it bounded, e.g. no history that grows with
///   every look. It may leave the numeric fields at their neutral values
///   ([`SequentialState::custom`]: 0, and 1 for the p-values, meaning "no evidence", so that
///   a reader expecting mSPRT numbers finds nothing significant), and should give its keys a
///   prefix of its own (`bayes.positive_rate`) so that no other judge run on the same
///   experiment mistakes its entries for its own.
///
/// Every number must be finite (`InvalidInput` naming the field otherwise): the backends
/// store them in `NOT NULL` floating-point columns, where a NaN cannot be kept.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialState {
    /// The metric's key, e.g. `quality` (non-empty; unique per experiment).
    pub metric: String,
    /// Looks taken so far.
    pub n_looks: u64,
    /// The baseline frozen at the first look (e.g. the champion's mean). Default judge.
    pub baseline: f64,
    /// The mixture scale of the test. Default judge.
    pub tau: f64,
    /// The null value of the tested difference. Default judge.
    pub theta0: f64,
    /// Running minimum p-value for "challenger better than the null". Default judge.
    pub p_better: f64,
    /// Running minimum p-value for "challenger worse than the null". Default judge.
    pub p_worse: f64,
    /// Running intersection of the confidence sequence: lower end. Default judge.
    pub cs_lower: f64,
    /// Running intersection of the confidence sequence: upper end. Default judge.
    pub cs_upper: f64,
    /// When the first look was taken.
    pub started_at: DateTime<Utc>,
    /// When the last look was taken.
    pub updated_at: DateTime<Utc>,
    /// A judge's own state, opaque to the store (conventionally JSON text): kept and given
    /// back byte for byte, refused with `InvalidInput` (field `state`) above
    /// `max_field_bytes`. `None` for the default judge.
    pub state: Option<String>,
}

impl SequentialState {
    /// The state of a judge that keeps everything in [`state`](Self::state): the numeric
    /// fields at their neutral values (0, and 1 for `p_better` and `p_worse`).
    pub fn custom(
        metric: impl Into<String>,
        n_looks: u64,
        state: impl Into<String>,
        started_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        SequentialState {
            metric: metric.into(),
            n_looks,
            baseline: 0.0,
            tau: 0.0,
            theta0: 0.0,
            p_better: 1.0,
            p_worse: 1.0,
            cs_lower: 0.0,
            cs_upper: 0.0,
            started_at,
            updated_at,
            state: Some(state.into()),
        }
    }
}

/// A judge's verdict at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The challenger won: make it champion.
    Promote,
    /// Not enough evidence either way yet.
    KeepTesting,
    /// The challenger lost or broke a guardrail: retire it.
    Rollback,
    /// The data cannot be trusted (e.g. sample-ratio mismatch): act on nothing, tell someone.
    Hold,
}

impl Decision {
    /// The lowercase name stored and shown: `promote`, `keep_testing`, `rollback`, `hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Promote => "promote",
            Decision::KeepTesting => "keep_testing",
            Decision::Rollback => "rollback",
            Decision::Hold => "hold",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "promote" => Decision::Promote,
            "keep_testing" => Decision::KeepTesting,
            "rollback" => Decision::Rollback,
            "hold" => Decision::Hold,
            _ => return None,
        })
    }
}

/// The kind of an event-log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A version became champion outside an experiment.
    SetChampion,
    /// A challenger was deployed and its experiment started.
    Deploy,
    /// The challenger's weight changed (a new period started).
    SetWeight,
    /// The challenger became champion; the old champion retired.
    Promote,
    /// The challenger was retired.
    Rollback,
    /// A judge looked at the experiment and decided.
    Decision,
}

impl EventKind {
    /// The lowercase name stored and shown: `set_champion`, `deploy`, `set_weight`,
    /// `promote`, `rollback`, `decision`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SetChampion => "set_champion",
            EventKind::Deploy => "deploy",
            EventKind::SetWeight => "set_weight",
            EventKind::Promote => "promote",
            EventKind::Rollback => "rollback",
            EventKind::Decision => "decision",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "set_champion" => EventKind::SetChampion,
            "deploy" => EventKind::Deploy,
            "set_weight" => EventKind::SetWeight,
            "promote" => EventKind::Promote,
            "rollback" => EventKind::Rollback,
            "decision" => EventKind::Decision,
            _ => return None,
        })
    }
}

/// Why a state change or decision happened, as written to the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventNote {
    /// A human-readable reason (may be empty for routine changes).
    pub reason: String,
    /// The statistics behind it, as JSON text, if any. Stored verbatim.
    pub statistics: Option<String>,
}

impl EventNote {
    /// A note with a reason and no statistics.
    pub fn reason(reason: impl Into<String>) -> Self {
        EventNote {
            reason: reason.into(),
            statistics: None,
        }
    }
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentEvent {
    /// Store-assigned id, increasing with time of writing.
    pub id: i64,
    /// When it happened (the store's clock).
    #[serde(serialize_with = "serde_time::at")]
    pub at: DateTime<Utc>,
    /// The experiment concerned, if any (`set_champion` has none).
    pub experiment_id: Option<i64>,
    /// What happened.
    pub kind: EventKind,
    /// The version acted on: the new champion, the deployed, promoted or rolled-back
    /// challenger; `None` for decisions and weight changes.
    pub model: Option<String>,
    /// The judge's decision, for `decision` rows and for the promotions and rollbacks it
    /// triggered.
    pub decision: Option<Decision>,
    /// The weight set, for `deploy` and `set_weight` rows.
    pub weight: Option<f64>,
    /// Why.
    pub reason: String,
    /// The statistics behind it, JSON text, if any.
    #[serde(serialize_with = "serde_time::json_text")]
    pub statistics: Option<String>,
}

/// Which event-log rows to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only rows of this experiment.
    pub experiment_id: Option<i64>,
    /// Only rows of these kinds; empty = every kind.
    pub kinds: Vec<EventKind>,
    /// At most this many rows (the newest ones when `newest_first`).
    pub limit: Option<u64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

/// The persistent state of model versions and champion/challenger experiments.
///
/// # Contract
///
/// * **Invariants** that hold after every call: at most one version is champion and at most
///   one is challenger; a challenger exists exactly when an experiment is running, and the
///   running experiment's `challenger` is that version; a running experiment's champion is
///   the current champion; version names are unique across the whole history; every
///   experiment has at least one period, periods are contiguous (each ends where the next
///   starts) and the last one of a running experiment is open; the experiment's
///   `challenger_weight` equals its last period's weight; the champion's `traffic_weight`
///   is `1 − challenger weight` (1 without an experiment), a retired version's is 0.
/// * **Atomicity.** Each method that writes is one transaction, and each writes exactly the
///   event rows named in its documentation in that same transaction: a state change without
///   its event row (or the reverse) is never visible. On error nothing was written.
/// * **Concurrency.** Writers serialize (several processes may share one store); a method
///   acting on an experiment takes its id and re-checks inside the transaction that it is
///   still running, so two processes promoting and rolling back at once cannot both win:
///   the loser gets a [`crate::ErrorKind::Conflict`] error.
/// * **Time.** Every timestamp the store writes (created, started, ended, promoted, retired,
///   event `at`) comes from the store's clock; a [`SequentialState`]'s times are the caller's.
/// * **Errors.** Bad input is [`crate::ErrorKind::InvalidInput`] naming the field
///   (`name`, `model_path`, `weight`, `metric`, ...); an unknown id or name is
///   [`crate::ErrorKind::NotFound`]; a call that does not fit the current state (deploying
///   while an experiment runs, reusing a name, acting on an ended experiment, deploying
///   without a champion) is [`crate::ErrorKind::Conflict`]; driver failures are
///   [`crate::ErrorKind::Database`].
/// * **History.** Nothing is deleted: retired versions, ended experiments, their periods,
///   their sequential states and every event stay readable.
pub trait ExperimentStore: Send + Sync {
    /// The current champion, if one was ever set.
    fn champion(&self) -> Result<Option<ModelVersion>>;

    /// Every version ever registered, oldest first (retired ones included).
    fn model_versions(&self) -> Result<Vec<ModelVersion>>;

    /// The version named `name`; `NotFound` when there is none.
    fn model_version(&self, name: &str) -> Result<ModelVersion>;

    /// The running experiment, if any.
    fn running_experiment(&self) -> Result<Option<Experiment>>;

    /// Experiment `id`, running or ended; `NotFound` when there is none.
    fn experiment(&self, id: i64) -> Result<Experiment>;

    /// Every experiment, oldest first.
    fn experiments(&self) -> Result<Vec<Experiment>>;

    /// Registers `version` as the champion outside any experiment (the first model, or an
    /// operator's manual replacement). The previous champion, if any, is retired. Writes one
    /// `set_champion` event. `Conflict` while an experiment runs (promote or roll back first)
    /// or when the name was ever used.
    fn set_champion(&self, version: &NewModelVersion, note: &EventNote) -> Result<ModelVersion>;

    /// Registers `version` as challenger with share `weight` of traffic (in [0, 1]) and
    /// starts an experiment against the current champion with routing seed `seed` and one
    /// open period. Writes one `deploy` event. `Conflict` without a champion, while another
    /// experiment runs, or when the name was ever used.
    fn deploy_challenger(
        &self,
        version: &NewModelVersion,
        weight: f64,
        seed: u64,
        note: &EventNote,
    ) -> Result<Experiment>;

    /// Changes the challenger's share of running experiment `experiment_id` to `weight`
    /// (in [0, 1]): closes the current period and opens a new one at the clock's time; the
    /// seed does not change. Writes one `set_weight` event. `Conflict` when the experiment
    /// is not running.
    fn set_challenger_weight(
        &self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        note: &EventNote,
    ) -> Result<Experiment>;

    /// Makes the challenger of running experiment `experiment_id` the champion (weight 1,
    /// `promoted_at` set), retires the old champion, closes the last period and ends the
    /// experiment as `promoted`. Writes one `promote` event. `Conflict` when the experiment
    /// is not running.
    fn promote(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment>;

    /// Retires the challenger of running experiment `experiment_id`, gives the champion all
    /// traffic, closes the last period and ends the experiment as `rolled_back`. Writes one
    /// `rollback` event. `Conflict` when the experiment is not running.
    fn rollback(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment>;

    /// Records a judge's look at running experiment `experiment_id`: one `decision` event
    /// with `decision`, and `states` replacing the stored sequential state of each metric
    /// they name (others are kept). When `apply` is true and the decision is
    /// [`Decision::Promote`] or [`Decision::Rollback`], the same transaction also performs
    /// [`promote`](Self::promote) or [`rollback`](Self::rollback) (with their event, which
    /// carries the same decision and note). Returns the `decision` event. `Conflict` when the
    /// experiment is not running.
    fn record_decision(
        &self,
        experiment_id: i64,
        decision: Decision,
        states: &[SequentialState],
        note: &EventNote,
        apply: bool,
    ) -> Result<ExperimentEvent>;

    /// The stored sequential state of experiment `experiment_id`, one entry per metric,
    /// ordered by metric key; empty before the first recorded look.
    fn sequential_states(&self, experiment_id: i64) -> Result<Vec<SequentialState>>;

    /// Event-log rows matching `filter`.
    fn events(&self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>>;

    /// How many event rows are of `kind`, without reading them.
    fn count_events(&self, kind: EventKind) -> Result<u64>;

    /// The per-unit statistics of experiment `experiment_id`, one [`UnitCohort`] per period
    /// and arm that has units, ordered by period, champion first (definitions in
    /// [`crate::units`]). With `feedback_before`, feedback counts only on records logged
    /// before that time (the maturity cut). Kept current by every write to the log (log,
    /// feedback, quality updates, deletions) while the experiment runs; for an ended
    /// experiment, as they stood when it ended. Must equal
    /// [`unit_cohorts_from_records`](crate::unit_cohorts_from_records) over the log, and must
    /// not scan the log: its cost grows with the number of units in the experiment (plus the
    /// records with feedback after the maturity cut), not with the number of records. A
    /// backend may bring its sums up to date here, or add the changes since its last fold
    /// as it reads (SQLite does the latter: a look writes nothing). `NotFound` for an
    /// unknown experiment.
    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>>;

    /// Records, for experiment `experiment_id`, each unit's sums over its records logged in
    /// `[since, experiment start)` (any model) as its covariate for variance reduction
    /// (CUPED), replacing any recorded before; returns how many units have such history.
    /// Reads the log of that window once. `NotFound` for an unknown experiment.
    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64>;
}

/// The enums serialise as their `as_str` names, the names the database stores: one spelling
/// everywhere.
macro_rules! serialize_as_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    )*};
}

serialize_as_str!(
    VersionStatus,
    ExperimentStatus,
    WeightSource,
    Decision,
    EventKind
);
