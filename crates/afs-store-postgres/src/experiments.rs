//! [`ExperimentBackend`] on PostgreSQL: transactions over [`ExperimentTx`]; the rules
//! (one champion, one running experiment, names never reused, ...) are afs-store's
//! ([`afs_store::backend`]), never written here.
//!
//! # Design
//!
//! * **Tables** (`src/schema/experiments.sql`): `afs_model_version`, `afs_experiment`,
//!   `afs_experiment_period`, `afs_experiment_sequential_state` and `afs_experiment_event`,
//!   the same columns as the SQLite store's, with every time a `bigint` of microseconds since
//!   the epoch (UTC). Partial unique indexes allow one champion, one challenger and one
//!   running experiment, as a last line behind the rules.
//! * **Reads** ([`ExperimentBackend::read`]) run in one `REPEATABLE READ READ ONLY`
//!   transaction: every read of a call (an experiment and its periods, say) sees one
//!   snapshot.
//! * **Writes** ([`ExperimentBackend::write`]) begin a read-committed transaction and first
//!   take the transaction-level advisory lock [`EXPERIMENT_LOCK`]: writers of every process
//!   and host sharing the database run one after the other, each seeing what the previous
//!   one committed, so the rules' reads and writes are serialisable. The transaction commits
//!   when the closure returns `Ok`; otherwise it is rolled back and nothing is written.
//!   Because writers are serialised, a new id is the largest id so far plus one (as SQLite's
//!   rowids), with no sequence gaps.
//! * **Per-unit statistics** are started, moved to a new period and frozen by
//!   [`ExperimentTx::insert_experiment`], [`ExperimentTx::start_period`] and
//!   [`ExperimentTx::end_experiment`] through `src/units.rs`, which also answers
//!   [`ExperimentBackend::unit_stats`] and [`ExperimentBackend::record_unit_covariates`].

use afs_store::backend::{ExperimentBackend, ExperimentTx, NewEvent, NewExperiment};
use afs_store::{
    Decision, EventFilter, EventKind, Experiment, ExperimentEvent, ExperimentPeriod,
    ExperimentStatus, ModelVersion, NewModelVersion, Result, SequentialState, StoreError,
    UnitCohort, VersionStatus, WeightSource,
};
use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{IsolationLevel, Row, Transaction};

use crate::error::{db, dbe};
use crate::store::PgStore;

/// The transaction-level advisory lock every experiment write takes first (any process of
/// any host sharing the database).
pub(crate) const EXPERIMENT_LOCK: i64 = 0x0afd_0002;

/// Microseconds since the epoch of `t` (how every time is stored).
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time of a stored microsecond count.
pub(crate) fn time_of(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A text column that must hold a value written by this module; anything else is corruption.
pub(crate) fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Database {
        context: format!("reading {column}"),
        source: Box::new(std::io::Error::other(format!(
            "unexpected {column} {value:?} in the database"
        ))),
    }
}

const VERSION_COLUMNS: &str = "id, name, model_path, status, traffic_weight, created_at_us, \
    promoted_at_us, retired_at_us, dataset, run_id";

const EXPERIMENT_COLUMNS: &str = "e.id, c.name, h.name, e.status, e.seed, e.challenger_weight, \
    e.started_at_us, e.ended_at_us";

const EXPERIMENT_FROM: &str = "afs_experiment e JOIN afs_model_version c ON c.id = e.champion_id \
    JOIN afs_model_version h ON h.id = e.challenger_id";

const STATE_COLUMNS: &str = "metric, n_looks, baseline, tau, theta0, p_better, p_worse, \
    cs_lower, cs_upper, started_at_us, updated_at_us, state";

const EVENT_COLUMNS: &str =
    "id, at_us, experiment_id, kind, model, decision, weight, reason, statistics";

/// A version from a row of [`VERSION_COLUMNS`].
fn version_from_row(row: &Row) -> Result<ModelVersion> {
    let status: String = row.get(3);
    Ok(ModelVersion {
        id: row.get(0),
        name: row.get(1),
        model_path: row.get(2),
        status: VersionStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        traffic_weight: row.get(4),
        created_at: time_of(row.get(5)),
        promoted_at: row.get::<_, Option<i64>>(6).map(time_of),
        retired_at: row.get::<_, Option<i64>>(7).map(time_of),
        dataset: row.get(8),
        run_id: row.get(9),
    })
}

/// An experiment (without its periods) from a row of [`EXPERIMENT_COLUMNS`].
fn experiment_from_row(row: &Row) -> Result<Experiment> {
    let status: String = row.get(3);
    Ok(Experiment {
        id: row.get(0),
        champion: row.get(1),
        challenger: row.get(2),
        status: ExperimentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        // The seed is a u64 stored in a signed bigint, bit for bit.
        seed: row.get::<_, i64>(4) as u64,
        challenger_weight: row.get(5),
        started_at: time_of(row.get(6)),
        ended_at: row.get::<_, Option<i64>>(7).map(time_of),
        periods: Vec::new(),
    })
}

/// Writes `states` of experiment `experiment_id`, each replacing the state of its metric
/// (the store's writes, and a restore into an empty database). A failure names its metric.
pub(crate) fn upsert_sequential_states(
    tx: &mut Transaction<'_>,
    experiment_id: i64,
    states: &[SequentialState],
) -> std::result::Result<(), (String, postgres::Error)> {
    let statement = tx
        .prepare(&format!(
            "INSERT INTO afs_experiment_sequential_state (experiment_id, {STATE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (experiment_id, metric) DO UPDATE SET \
             n_looks = excluded.n_looks, baseline = excluded.baseline, tau = excluded.tau, \
             theta0 = excluded.theta0, p_better = excluded.p_better, \
             p_worse = excluded.p_worse, cs_lower = excluded.cs_lower, \
             cs_upper = excluded.cs_upper, started_at_us = excluded.started_at_us, \
             updated_at_us = excluded.updated_at_us, state = excluded.state"
        ))
        .map_err(|e| (String::new(), e))?;
    for s in states {
        let n_looks = i64::try_from(s.n_looks).unwrap_or(i64::MAX);
        tx.execute(
            &statement,
            &[
                &experiment_id,
                &s.metric,
                &n_looks,
                &s.baseline,
                &s.tau,
                &s.theta0,
                &s.p_better,
                &s.p_worse,
                &s.cs_lower,
                &s.cs_upper,
                &micros(s.started_at),
                &micros(s.updated_at),
                &s.state,
            ],
        )
        .map_err(|e| (s.metric.clone(), e))?;
    }
    Ok(())
}

/// A sequential state from a row of [`STATE_COLUMNS`].
fn state_from_row(row: &Row) -> Result<SequentialState> {
    Ok(SequentialState {
        metric: row.get(0),
        n_looks: row.get::<_, i64>(1).max(0) as u64,
        baseline: row.get(2),
        tau: row.get(3),
        theta0: row.get(4),
        p_better: row.get(5),
        p_worse: row.get(6),
        cs_lower: row.get(7),
        cs_upper: row.get(8),
        started_at: time_of(row.get(9)),
        updated_at: time_of(row.get(10)),
        state: row.get(11),
    })
}

/// An event from a row of [`EVENT_COLUMNS`].
fn event_from_row(row: &Row) -> Result<ExperimentEvent> {
    let kind: String = row.get(3);
    let decision: Option<String> = row.get(5);
    Ok(ExperimentEvent {
        id: row.get(0),
        at: time_of(row.get(1)),
        experiment_id: row.get(2),
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        model: row.get(4),
        decision: decision
            .map(|d| Decision::parse(&d).ok_or_else(|| corrupt("decision", &d)))
            .transpose()?,
        weight: row.get(6),
        reason: row.get(7),
        statistics: row.get(8),
    })
}

/// The periods of experiment `experiment_id`, by index.
pub(crate) fn read_periods(
    tx: &mut Transaction<'_>,
    experiment_id: i64,
) -> Result<Vec<ExperimentPeriod>> {
    let rows = tx
        .query(
            "SELECT idx, started_us, ended_us, challenger_weight, source \
             FROM afs_experiment_period WHERE experiment_id = $1 ORDER BY idx",
            &[&experiment_id],
        )
        .map_err(dbe("read experiment periods"))?;
    rows.iter()
        .map(|row| {
            let source: String = row.get(4);
            Ok(ExperimentPeriod {
                index: row.get::<_, i32>(0).max(0) as u32,
                started_at: time_of(row.get(1)),
                ended_at: row.get::<_, Option<i64>>(2).map(time_of),
                challenger_weight: row.get(3),
                source: WeightSource::parse(&source).ok_or_else(|| corrupt("source", &source))?,
            })
        })
        .collect()
}

/// The experiment `id` with its periods, if any.
pub(crate) fn read_experiment(tx: &mut Transaction<'_>, id: i64) -> Result<Option<Experiment>> {
    let row = tx
        .query_opt(
            &format!("SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} WHERE e.id = $1"),
            &[&id],
        )
        .map_err(dbe("read experiment"))?;
    let Some(row) = row else { return Ok(None) };
    let mut experiment = experiment_from_row(&row)?;
    experiment.periods = read_periods(tx, id)?;
    Ok(Some(experiment))
}

/// `NotFound` for experiment `id`.
pub(crate) fn experiment_not_found(id: i64) -> StoreError {
    StoreError::NotFound {
        what: "experiment",
        id: id.to_string(),
    }
}

/// The experiment store's reads and writes inside the transaction that
/// [`ExperimentBackend::read`] or [`ExperimentBackend::write`] opened.
struct PgTx<'a, 't> {
    /// The open transaction.
    tx: &'a mut Transaction<'t>,
    /// The store (for its clock).
    store: &'a PgStore,
}

impl PgTx<'_, '_> {
    /// The rows of `sql` with `args`, each read by `from_row`.
    fn read_all<T>(
        &mut self,
        what: &str,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
        from_row: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.tx.query(sql, args).map_err(dbe(what))?;
        rows.iter().map(from_row).collect()
    }

    /// Runs one statement that changes rows.
    fn exec(&mut self, what: &str, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.tx.execute(sql, args).map_err(dbe(what))
    }

    /// The next id of `table`: the largest so far plus one (writers are serialised).
    fn next_id(&mut self, table: &str) -> Result<i64> {
        let row = self
            .tx
            .query_one(
                &format!("SELECT COALESCE(max(id), 0) + 1 FROM {table}"),
                &[],
            )
            .map_err(dbe("allocate an id"))?;
        Ok(row.get(0))
    }
}

impl ExperimentTx for PgTx<'_, '_> {
    fn now(&self) -> DateTime<Utc> {
        self.store.clock.now()
    }

    fn champion(&mut self) -> Result<Option<ModelVersion>> {
        self.tx
            .query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM afs_model_version WHERE status = 'champion'"
                ),
                &[],
            )
            .map_err(dbe("read champion"))?
            .map(|row| version_from_row(&row))
            .transpose()
    }

    fn versions(&mut self) -> Result<Vec<ModelVersion>> {
        self.read_all(
            "read model versions",
            &format!("SELECT {VERSION_COLUMNS} FROM afs_model_version ORDER BY id"),
            &[],
            version_from_row,
        )
    }

    fn version(&mut self, id: i64) -> Result<ModelVersion> {
        self.tx
            .query_opt(
                &format!("SELECT {VERSION_COLUMNS} FROM afs_model_version WHERE id = $1"),
                &[&id],
            )
            .map_err(dbe("read model version"))?
            .map(|row| version_from_row(&row))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                what: "model version",
                id: id.to_string(),
            })
    }

    fn version_named(&mut self, name: &str) -> Result<Option<ModelVersion>> {
        self.tx
            .query_opt(
                &format!("SELECT {VERSION_COLUMNS} FROM afs_model_version WHERE name = $1"),
                &[&name],
            )
            .map_err(dbe("read model version"))?
            .map(|row| version_from_row(&row))
            .transpose()
    }

    fn running_experiment_id(&mut self) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT id FROM afs_experiment WHERE status = 'running'",
                &[],
            )
            .map_err(dbe("read running experiment"))?
            .map(|row| row.get(0)))
    }

    fn experiment(&mut self, id: i64) -> Result<Option<Experiment>> {
        read_experiment(self.tx, id)
    }

    fn experiments(&mut self) -> Result<Vec<Experiment>> {
        let mut experiments = self.read_all(
            "read experiments",
            &format!("SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} ORDER BY e.id"),
            &[],
            experiment_from_row,
        )?;
        for experiment in &mut experiments {
            experiment.periods = read_periods(self.tx, experiment.id)?;
        }
        Ok(experiments)
    }

    fn sequential_states(&mut self, experiment_id: i64) -> Result<Vec<SequentialState>> {
        self.read_all(
            "read sequential state",
            &format!(
                "SELECT {STATE_COLUMNS} FROM afs_experiment_sequential_state \
                 WHERE experiment_id = $1 ORDER BY metric"
            ),
            &[&experiment_id],
            state_from_row,
        )
    }

    fn events(&mut self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>> {
        let mut conds = Vec::new();
        let kinds: Vec<String> = filter
            .kinds
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(id) = &filter.experiment_id {
            args.push(id);
            conds.push(format!("experiment_id = ${}", args.len()));
        }
        if !kinds.is_empty() {
            args.push(&kinds);
            conds.push(format!("kind = ANY(${})", args.len()));
        }
        let where_clause = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let limit = match filter.limit {
            Some(n) => format!("LIMIT {}", n.min(i64::MAX as u64)),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM afs_experiment_event {where_clause} \
             ORDER BY id {order} {limit}"
        );
        self.read_all("read events", &sql, &args, event_from_row)
    }

    fn count_events(&mut self, kind: EventKind) -> Result<u64> {
        let row = self
            .tx
            .query_one(
                "SELECT count(*) FROM afs_experiment_event WHERE kind = $1",
                &[&kind.as_str()],
            )
            .map_err(dbe("count events"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn insert_version(
        &mut self,
        version: &NewModelVersion,
        status: VersionStatus,
        weight: f64,
        at: DateTime<Utc>,
    ) -> Result<i64> {
        let id = self.next_id("afs_model_version")?;
        let now = micros(at);
        let promoted = (status == VersionStatus::Champion).then_some(now);
        self.exec(
            "insert model version",
            "INSERT INTO afs_model_version (id, name, model_path, status, traffic_weight, \
             created_at_us, promoted_at_us, dataset, run_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &version.name,
                &version.model_path,
                &status.as_str(),
                &weight,
                &now,
                &promoted,
                &version.dataset,
                &version.run_id,
            ],
        )?;
        Ok(id)
    }

    fn retire_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.exec(
            &format!("retire model version {id}"),
            "UPDATE afs_model_version SET status = 'retired', traffic_weight = 0, \
             retired_at_us = $2 WHERE id = $1",
            &[&id, &micros(at)],
        )?;
        Ok(())
    }

    fn crown_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.exec(
            &format!("make model version {id} champion"),
            "UPDATE afs_model_version SET status = 'champion', traffic_weight = 1, \
             promoted_at_us = CASE WHEN status = 'champion' THEN promoted_at_us ELSE $2 END \
             WHERE id = $1",
            &[&id, &micros(at)],
        )?;
        Ok(())
    }

    fn set_version_weight(&mut self, id: i64, weight: f64) -> Result<()> {
        self.exec(
            &format!("set the weight of model version {id}"),
            "UPDATE afs_model_version SET traffic_weight = $2 WHERE id = $1",
            &[&id, &weight],
        )?;
        Ok(())
    }

    fn insert_experiment(&mut self, new: &NewExperiment<'_>) -> Result<i64> {
        let id = self.next_id("afs_experiment")?;
        let now = micros(new.at);
        // The seed is a u64 stored in a signed bigint, bit for bit.
        let seed = new.seed as i64;
        self.exec(
            "insert experiment",
            "INSERT INTO afs_experiment (id, champion_id, challenger_id, status, seed, \
             challenger_weight, started_at_us) VALUES ($1, $2, $3, 'running', $4, $5, $6)",
            &[
                &id,
                &new.champion.id,
                &new.challenger.id,
                &seed,
                &new.weight,
                &now,
            ],
        )?;
        self.exec(
            "insert experiment period",
            "INSERT INTO afs_experiment_period (experiment_id, idx, started_us, \
             challenger_weight, source) VALUES ($1, 0, $2, $3, 'initial')",
            &[&id, &now, &new.weight],
        )?;
        crate::units::start_experiment(self.tx, id, &new.champion.name, &new.challenger.name, now)?;
        Ok(id)
    }

    fn start_period(
        &mut self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let now = micros(at);
        let what = format!("set weight of experiment {experiment_id}");
        let last: i32 = self
            .tx
            .query_one(
                "SELECT COALESCE(max(idx), 0) FROM afs_experiment_period WHERE experiment_id = $1",
                &[&experiment_id],
            )
            .map_err(|e| db(what.clone(), e))?
            .get(0);
        self.exec(
            &what,
            "UPDATE afs_experiment_period SET ended_us = $3 WHERE experiment_id = $1 AND idx = $2",
            &[&experiment_id, &last, &now],
        )?;
        self.exec(
            &what,
            "INSERT INTO afs_experiment_period (experiment_id, idx, started_us, \
             challenger_weight, source) VALUES ($1, $2, $3, $4, $5)",
            &[&experiment_id, &(last + 1), &now, &weight, &source.as_str()],
        )?;
        crate::units::start_period(self.tx, experiment_id, last, last + 1, now)?;
        self.exec(
            &what,
            "UPDATE afs_experiment SET challenger_weight = $2 WHERE id = $1",
            &[&experiment_id, &weight],
        )?;
        Ok(())
    }

    fn end_experiment(
        &mut self,
        id: i64,
        status: ExperimentStatus,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let now = micros(at);
        let what = format!("{} experiment {id}", status.as_str());
        // Freeze the statistics first: no record logged after this commits counts.
        crate::units::end_experiment(self.tx, id)?;
        self.exec(
            &what,
            "UPDATE afs_experiment SET status = $2, ended_at_us = $3 WHERE id = $1",
            &[&id, &status.as_str(), &now],
        )?;
        self.exec(
            &what,
            "UPDATE afs_experiment_period SET ended_us = $2 \
             WHERE experiment_id = $1 AND ended_us IS NULL",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn put_sequential_states(
        &mut self,
        experiment_id: i64,
        states: &[SequentialState],
    ) -> Result<()> {
        upsert_sequential_states(self.tx, experiment_id, states)
            .map_err(|(metric, e)| db(format!("write sequential state of {metric}"), e))
    }

    fn insert_event(&mut self, event: &NewEvent<'_>) -> Result<ExperimentEvent> {
        let id = self.next_id("afs_experiment_event")?;
        let row = self
            .tx
            .query_one(
                &format!(
                    "INSERT INTO afs_experiment_event (id, at_us, experiment_id, kind, model, \
                     decision, weight, reason, statistics) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {EVENT_COLUMNS}"
                ),
                &[
                    &id,
                    &micros(event.at),
                    &event.experiment_id,
                    &event.kind.as_str(),
                    &event.model,
                    &event.decision.map(Decision::as_str),
                    &event.weight,
                    &event.note.reason,
                    &event.note.statistics,
                ],
            )
            .map_err(|e| db(format!("write {} event", event.kind.as_str()), e))?;
        event_from_row(&row)
    }
}

impl PgStore {
    /// Runs `f` in one `REPEATABLE READ READ ONLY` transaction (one snapshot).
    pub(crate) fn snapshot<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| db(format!("begin {what}"), e))?;
        let value = f(&mut tx)?;
        tx.commit().map_err(|e| db(format!("end {what}"), e))?;
        Ok(value)
    }

    /// Runs `f` in one read-committed transaction holding [`EXPERIMENT_LOCK`], and commits
    /// it when `f` returns `Ok`. Writers are serialised by the lock, so there is nothing to
    /// retry; an error rolls everything back.
    pub(crate) fn experiment_write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.locked_transaction(what, EXPERIMENT_LOCK, f)
    }
}

impl ExperimentBackend for PgStore {
    fn max_field_bytes(&self) -> usize {
        self.config.max_field_bytes
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T> {
        self.snapshot("reading experiments", |tx| f(&mut PgTx { tx, store: self }))
    }

    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>,
    ) -> Result<T> {
        self.experiment_write(what, |tx| f(&mut PgTx { tx, store: self }))
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        self.snapshot("reading unit statistics", |tx| {
            let experiment = read_experiment(tx, experiment_id)?
                .ok_or_else(|| experiment_not_found(experiment_id))?;
            crate::units::unit_stats(tx, &experiment, feedback_before)
        })
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        self.experiment_write("record unit covariates", |tx| {
            let experiment = read_experiment(tx, experiment_id)?
                .ok_or_else(|| experiment_not_found(experiment_id))?;
            crate::units::record_covariates(
                tx,
                experiment_id,
                micros(since),
                micros(experiment.started_at),
            )
        })
    }
}
