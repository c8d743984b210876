//! `ExperimentStore` for SQLite: model versions, experiments, their periods, sequential
//! state and event log (schema version 3), the per-unit statistics of experiments
//! (schema version 7, in `units.rs`), and a judge's own state beside the sequential state
//! (schema version 9: the nullable column `experiment_sequential_state.state`).

//!
//! The rules (one champion, one running experiment, ...) are not here: they are written once
//! in [`afs_store::backend`], over the reads and writes [`SqliteTx`] offers.

use chrono::{DateTime, Utc};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::time::{micros_of, rfc3339};
use super::{units, SqliteStore};
use afs_store::backend::{ExperimentBackend, ExperimentTx, NewEvent, NewExperiment};
use afs_store::units::UnitCohort;
use afs_store::UsageStore;
use afs_store::{
    Decision, EventFilter, EventKind, Experiment, ExperimentEvent, ExperimentPeriod,
    ExperimentStatus, ModelVersion, NewModelVersion, SequentialState, VersionStatus, WeightSource,
};
use afs_store::{Result, StoreError};

const V3_EXPERIMENTS: &str = "
CREATE TABLE model_version (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model_path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('champion', 'challenger', 'retired')),
    traffic_weight REAL NOT NULL,
    created_at TEXT NOT NULL,
    promoted_at TEXT,
    retired_at TEXT,
    dataset TEXT,
    run_id TEXT
);
CREATE UNIQUE INDEX model_version_one_champion ON model_version (status) WHERE status = 'champion';
CREATE UNIQUE INDEX model_version_one_challenger ON model_version (status) WHERE status = 'challenger';
CREATE TABLE experiment (
    id INTEGER PRIMARY KEY,
    champion_id INTEGER NOT NULL REFERENCES model_version (id),
    challenger_id INTEGER NOT NULL REFERENCES model_version (id),
    status TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'rolled_back')),
    seed INTEGER NOT NULL,
    challenger_weight REAL NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE UNIQUE INDEX experiment_one_running ON experiment (status) WHERE status = 'running';
CREATE TABLE experiment_period (
    experiment_id INTEGER NOT NULL REFERENCES experiment (id),
    idx INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    challenger_weight REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('initial', 'manual', 'bandit')),
    PRIMARY KEY (experiment_id, idx)
) WITHOUT ROWID;
CREATE TABLE experiment_sequential_state (
    experiment_id INTEGER NOT NULL REFERENCES experiment (id),
    metric TEXT NOT NULL,
    n_looks INTEGER NOT NULL,
    baseline REAL NOT NULL,
    tau REAL NOT NULL,
    theta0 REAL NOT NULL,
    p_better REAL NOT NULL,
    p_worse REAL NOT NULL,
    cs_lower REAL NOT NULL,
    cs_upper REAL NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (experiment_id, metric)
) WITHOUT ROWID;
CREATE TABLE experiment_event (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    experiment_id INTEGER REFERENCES experiment (id),
    kind TEXT NOT NULL,
    model TEXT,
    decision TEXT,
    weight REAL,
    reason TEXT NOT NULL,
    statistics TEXT
);
CREATE INDEX experiment_event_by_experiment ON experiment_event (experiment_id, id);
";

/// Migration 3: model versions, experiments, periods, sequential state and the event log.
pub(crate) fn migrate_v3(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(V3_EXPERIMENTS)
        .map_err(|e| crate::db("migration 3", e))
}

/// Migration 9: a judge's own state ([`SequentialState::state`]), opaque text; `NULL` for
/// the default judge's states and for every state written before.
pub(crate) fn migrate_v9(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch("ALTER TABLE experiment_sequential_state ADD COLUMN state TEXT")
        .map_err(|e| crate::db("migration 9", e))
}

const VERSION_COLUMNS: &str = "id, name, model_path, status, traffic_weight, created_at, \
    promoted_at, retired_at, dataset, run_id";

const EXPERIMENT_COLUMNS: &str = "e.id, c.name, h.name, e.status, e.seed, e.challenger_weight, \
    e.started_at, e.ended_at";

const EXPERIMENT_FROM: &str = "experiment e JOIN model_version c ON c.id = e.champion_id \
    JOIN model_version h ON h.id = e.challenger_id";

const STATE_COLUMNS: &str = "metric, n_looks, baseline, tau, theta0, p_better, p_worse, \
    cs_lower, cs_upper, started_at, updated_at, state";

const EVENT_COLUMNS: &str =
    "id, at, experiment_id, kind, model, decision, weight, reason, statistics";

/// A text column that must hold a value written by this module; anything else is corruption.
fn corrupt(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(std::io::Error::other(format!(
            "unexpected {column} {value:?}"
        ))),
    )
}

fn parse_time(column: &str, text: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| corrupt(column, text))
}

fn time_at(row: &Row<'_>, i: usize, column: &str) -> rusqlite::Result<DateTime<Utc>> {
    parse_time(column, &row.get::<_, String>(i)?)
}

fn optional_time_at(
    row: &Row<'_>,
    i: usize,
    column: &str,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    row.get::<_, Option<String>>(i)?
        .map(|t| parse_time(column, &t))
        .transpose()
}

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<ModelVersion> {
    let status: String = row.get(3)?;
    Ok(ModelVersion {
        id: row.get(0)?,
        name: row.get(1)?,
        model_path: row.get(2)?,
        status: VersionStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        traffic_weight: row.get(4)?,
        created_at: time_at(row, 5, "created_at")?,
        promoted_at: optional_time_at(row, 6, "promoted_at")?,
        retired_at: optional_time_at(row, 7, "retired_at")?,
        dataset: row.get(8)?,
        run_id: row.get(9)?,
    })
}

fn experiment_from_row(row: &Row<'_>) -> rusqlite::Result<Experiment> {
    let status: String = row.get(3)?;
    Ok(Experiment {
        id: row.get(0)?,
        champion: row.get(1)?,
        challenger: row.get(2)?,
        status: ExperimentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        // The seed is a u64 stored in SQLite's signed 64-bit integer, bit for bit.
        seed: row.get::<_, i64>(4)? as u64,
        challenger_weight: row.get(5)?,
        started_at: time_at(row, 6, "started_at")?,
        ended_at: optional_time_at(row, 7, "ended_at")?,
        periods: Vec::new(),
    })
}

fn state_from_row(row: &Row<'_>) -> rusqlite::Result<SequentialState> {
    Ok(SequentialState {
        metric: row.get(0)?,
        n_looks: row.get::<_, i64>(1)?.max(0) as u64,
        baseline: row.get(2)?,
        tau: row.get(3)?,
        theta0: row.get(4)?,
        p_better: row.get(5)?,
        p_worse: row.get(6)?,
        cs_lower: row.get(7)?,
        cs_upper: row.get(8)?,
        started_at: time_at(row, 9, "started_at")?,
        updated_at: time_at(row, 10, "updated_at")?,
        state: row.get(11)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<ExperimentEvent> {
    let kind: String = row.get(3)?;
    let decision: Option<String> = row.get(5)?;
    Ok(ExperimentEvent {
        id: row.get(0)?,
        at: time_at(row, 1, "at")?,
        experiment_id: row.get(2)?,
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        model: row.get(4)?,
        decision: decision
            .map(|d| Decision::parse(&d).ok_or_else(|| corrupt("decision", &d)))
            .transpose()?,
        weight: row.get(6)?,
        reason: row.get(7)?,
        statistics: row.get(8)?,
    })
}

/// The experiment store's reads and writes on one SQLite connection, inside the transaction
/// [`ExperimentBackend::read`] or [`ExperimentBackend::write`] opened on it.
struct SqliteTx<'a> {
    conn: &'a Connection,
    store: &'a SqliteStore,
}

/// Writes `states` of experiment `experiment_id`, each replacing the state of its metric
/// (the store's writes, and a restore into an empty database). A failure names its metric.
pub(crate) fn upsert_sequential_states(
    conn: &Connection,
    experiment_id: i64,
    states: &[SequentialState],
) -> std::result::Result<(), (String, rusqlite::Error)> {
    let mut upsert = conn
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO experiment_sequential_state (experiment_id, {STATE_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))
        .map_err(|e| (String::new(), e))?;
    for s in states {
        upsert
            .execute(params![
                experiment_id,
                s.metric,
                s.n_looks as i64,
                s.baseline,
                s.tau,
                s.theta0,
                s.p_better,
                s.p_worse,
                s.cs_lower,
                s.cs_upper,
                rfc3339(s.started_at),
                rfc3339(s.updated_at),
                s.state,
            ])
            .map_err(|e| (s.metric.clone(), e))?;
    }
    Ok(())
}

fn read_experiment(conn: &Connection, id: i64) -> Result<Option<Experiment>> {
    let found = conn
        .query_row(
            &format!("SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} WHERE e.id = ?1"),
            [id],
            experiment_from_row,
        )
        .optional()
        .map_err(|e| crate::db("read experiment", e))?;
    let Some(mut experiment) = found else {
        return Ok(None);
    };
    experiment.periods = read_periods(conn, id)?;
    Ok(Some(experiment))
}

fn read_periods(conn: &Connection, experiment_id: i64) -> Result<Vec<ExperimentPeriod>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT idx, started_at, ended_at, challenger_weight, source FROM experiment_period \
             WHERE experiment_id = ?1 ORDER BY idx",
        )
        .map_err(|e| crate::db("read experiment periods", e))?;
    let rows = stmt
        .query_map([experiment_id], |row| {
            let source: String = row.get(4)?;
            Ok(ExperimentPeriod {
                index: row.get(0)?,
                started_at: time_at(row, 1, "started_at")?,
                ended_at: optional_time_at(row, 2, "ended_at")?,
                challenger_weight: row.get(3)?,
                source: WeightSource::parse(&source).ok_or_else(|| corrupt("source", &source))?,
            })
        })
        .map_err(|e| crate::db("read experiment periods", e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| crate::db("read experiment periods", e))
}

/// The rows of `sql` (which takes `args`), each read by `from_row`.
fn read_all<T>(
    conn: &Connection,
    what: &str,
    sql: &str,
    args: impl rusqlite::Params,
    from_row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| crate::db(what, e))?;
    let rows = stmt
        .query_map(args, from_row)
        .map_err(|e| crate::db(what, e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| crate::db(what, e))
}

impl ExperimentTx for SqliteTx<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.store.clock().now()
    }

    fn champion(&mut self) -> Result<Option<ModelVersion>> {
        self.conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE status = 'champion'"),
                [],
                version_from_row,
            )
            .optional()
            .map_err(|e| crate::db("read champion", e))
    }

    fn versions(&mut self) -> Result<Vec<ModelVersion>> {
        read_all(
            self.conn,
            "read model versions",
            &format!("SELECT {VERSION_COLUMNS} FROM model_version ORDER BY id"),
            [],
            version_from_row,
        )
    }

    fn version(&mut self, id: i64) -> Result<ModelVersion> {
        self.conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE id = ?1"),
                [id],
                version_from_row,
            )
            .optional()
            .map_err(|e| crate::db("read model version", e))?
            .ok_or_else(|| StoreError::NotFound {
                what: "model version",
                id: id.to_string(),
            })
    }

    fn version_named(&mut self, name: &str) -> Result<Option<ModelVersion>> {
        self.conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE name = ?1"),
                [name],
                version_from_row,
            )
            .optional()
            .map_err(|e| crate::db("read model version", e))
    }

    fn running_experiment_id(&mut self) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT id FROM experiment WHERE status = 'running'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| crate::db("read running experiment", e))
    }

    fn experiment(&mut self, id: i64) -> Result<Option<Experiment>> {
        read_experiment(self.conn, id)
    }

    fn experiments(&mut self) -> Result<Vec<Experiment>> {
        let mut experiments = read_all(
            self.conn,
            "read experiments",
            &format!("SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} ORDER BY e.id"),
            [],
            experiment_from_row,
        )?;
        for experiment in &mut experiments {
            experiment.periods = read_periods(self.conn, experiment.id)?;
        }
        Ok(experiments)
    }

    fn sequential_states(&mut self, experiment_id: i64) -> Result<Vec<SequentialState>> {
        read_all(
            self.conn,
            "read sequential state",
            &format!(
                "SELECT {STATE_COLUMNS} FROM experiment_sequential_state \
                 WHERE experiment_id = ?1 ORDER BY metric"
            ),
            [experiment_id],
            state_from_row,
        )
    }

    fn events(&mut self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>> {
        let mut conds = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(id) = filter.experiment_id {
            conds.push("experiment_id = ?".to_string());
            args.push(id.into());
        }
        if !filter.kinds.is_empty() {
            let marks = vec!["?"; filter.kinds.len()].join(", ");
            conds.push(format!("kind IN ({marks})"));
            args.extend(
                filter
                    .kinds
                    .iter()
                    .map(|k| rusqlite::types::Value::from(k.as_str().to_string())),
            );
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
            "SELECT {EVENT_COLUMNS} FROM experiment_event {where_clause} ORDER BY id {order} {limit}"
        );
        read_all(
            self.conn,
            "read events",
            &sql,
            params_from_iter(args),
            event_from_row,
        )
    }

    fn count_events(&mut self, kind: EventKind) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM experiment_event WHERE kind = ?1",
                [kind.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| crate::db("count events", e))
    }

    fn insert_version(
        &mut self,
        version: &NewModelVersion,
        status: VersionStatus,
        weight: f64,
        at: DateTime<Utc>,
    ) -> Result<i64> {
        let now = rfc3339(at);
        let promoted_at = (status == VersionStatus::Champion).then_some(now.as_str());
        self.conn
            .execute(
                "INSERT INTO model_version (name, model_path, status, traffic_weight, created_at, \
                 promoted_at, dataset, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    version.name,
                    version.model_path,
                    status.as_str(),
                    weight,
                    now,
                    promoted_at,
                    version.dataset,
                    version.run_id
                ],
            )
            .map_err(|e| crate::db("insert model version", e))?;
        Ok(self.conn.last_insert_rowid())
    }

    fn retire_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE model_version SET status = 'retired', traffic_weight = 0, retired_at = ?2 \
                 WHERE id = ?1",
                params![id, rfc3339(at)],
            )
            .map_err(|e| crate::db(format!("retire model version {id}"), e))?;
        Ok(())
    }

    fn crown_version(&mut self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE model_version SET status = 'champion', traffic_weight = 1, \
                 promoted_at = CASE WHEN status = 'champion' THEN promoted_at ELSE ?2 END \
                 WHERE id = ?1",
                params![id, rfc3339(at)],
            )
            .map_err(|e| crate::db(format!("make model version {id} champion"), e))?;
        Ok(())
    }

    fn set_version_weight(&mut self, id: i64, weight: f64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE model_version SET traffic_weight = ?2 WHERE id = ?1",
                params![id, weight],
            )
            .map_err(|e| crate::db(format!("set the weight of model version {id}"), e))?;
        Ok(())
    }

    fn insert_experiment(&mut self, new: &NewExperiment<'_>) -> Result<i64> {
        let (now, now_us) = (rfc3339(new.at), micros_of(new.at));
        self.conn
            .execute(
                "INSERT INTO experiment (champion_id, challenger_id, status, seed, \
                 challenger_weight, started_at) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                // The seed is a u64 stored in SQLite's signed 64-bit integer, bit for bit.
                params![
                    new.champion.id,
                    new.challenger.id,
                    new.seed as i64,
                    new.weight,
                    now
                ],
            )
            .map_err(|e| crate::db("insert experiment", e))?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .execute(
                "INSERT INTO experiment_period (experiment_id, idx, started_at, started_us, \
                 challenger_weight, source) VALUES (?1, 0, ?2, ?3, ?4, 'initial')",
                params![id, now, now_us, new.weight],
            )
            .map_err(|e| crate::db("insert experiment period", e))?;
        units::start_experiment(
            self.conn,
            id,
            &new.champion.name,
            &new.challenger.name,
            now_us,
        )?;
        Ok(id)
    }

    fn start_period(
        &mut self,
        experiment_id: i64,
        weight: f64,
        source: WeightSource,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let (now, now_us) = (rfc3339(at), micros_of(at));
        let db = |e| crate::db(format!("set weight of experiment {experiment_id}"), e);
        let last: u32 = self
            .conn
            .query_row(
                "SELECT MAX(idx) FROM experiment_period WHERE experiment_id = ?1",
                [experiment_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        self.conn
            .execute(
                "UPDATE experiment_period SET ended_at = ?3 WHERE experiment_id = ?1 AND idx = ?2",
                params![experiment_id, last, now],
            )
            .map_err(db)?;
        self.conn
            .execute(
                "INSERT INTO experiment_period (experiment_id, idx, started_at, started_us, \
                 challenger_weight, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    experiment_id,
                    last + 1,
                    now,
                    now_us,
                    weight,
                    source.as_str()
                ],
            )
            .map_err(db)?;
        units::start_period(self.conn, experiment_id, last, last + 1, now_us)?;
        self.conn
            .execute(
                "UPDATE experiment SET challenger_weight = ?2 WHERE id = ?1",
                params![experiment_id, weight],
            )
            .map_err(db)?;
        Ok(())
    }

    fn end_experiment(
        &mut self,
        id: i64,
        status: ExperimentStatus,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let now = rfc3339(at);
        let db = |e| crate::db(format!("{} experiment {id}", status.as_str()), e);
        self.conn
            .execute(
                "UPDATE experiment SET status = ?2, ended_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), now],
            )
            .map_err(db)?;
        self.conn
            .execute(
                "UPDATE experiment_period SET ended_at = ?2 \
                 WHERE experiment_id = ?1 AND ended_at IS NULL",
                params![id, now],
            )
            .map_err(db)?;
        units::end_experiment(self.conn, id)
    }

    fn put_sequential_states(
        &mut self,
        experiment_id: i64,
        states: &[SequentialState],
    ) -> Result<()> {
        upsert_sequential_states(self.conn, experiment_id, states)
            .map_err(|(metric, e)| crate::db(format!("write sequential state of {metric}"), e))
    }

    fn insert_event(&mut self, row: &NewEvent<'_>) -> Result<ExperimentEvent> {
        self.conn
            .execute(
                "INSERT INTO experiment_event (at, experiment_id, kind, model, decision, weight, \
                 reason, statistics) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    rfc3339(row.at),
                    row.experiment_id,
                    row.kind.as_str(),
                    row.model,
                    row.decision.map(Decision::as_str),
                    row.weight,
                    row.note.reason,
                    row.note.statistics,
                ],
            )
            .map_err(|e| crate::db(format!("write {} event", row.kind.as_str()), e))?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .query_row(
                &format!("SELECT {EVENT_COLUMNS} FROM experiment_event WHERE id = ?1"),
                [id],
                event_from_row,
            )
            .map_err(|e| crate::db("read event", e))
    }
}

impl ExperimentBackend for SqliteStore {
    fn max_field_bytes(&self) -> usize {
        self.config().max_field_bytes
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        // One snapshot for every read of the call (an experiment and its periods, say).
        let tx = conn
            .transaction()
            .map_err(|e| crate::db("begin reading experiments", e))?;
        let value = f(&mut SqliteTx {
            conn: &tx,
            store: self,
        })?;
        tx.commit()
            .map_err(|e| crate::db("end reading experiments", e))?;
        Ok(value)
    }

    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>,
    ) -> Result<T> {
        self.write_txn(what, |tx| {
            f(&mut SqliteTx {
                conn: tx,
                store: self,
            })
        })
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        let not_found = || StoreError::NotFound {
            what: "experiment",
            id: experiment_id.to_string(),
        };
        // One read transaction: the cohort rows, the unit rows changed since the last fold
        // (added in by the read) and the loose rows are one snapshot. Nothing is written.
        let mut conn = self.conn()?;
        let tx = conn
            .transaction()
            .map_err(|e| crate::db("begin reading unit statistics", e))?;
        let experiment = read_experiment(&tx, experiment_id)?.ok_or_else(not_found)?;
        let cohorts = units::unit_stats(&tx, &experiment, feedback_before)?;
        tx.commit()
            .map_err(|e| crate::db("end reading unit statistics", e))?;
        Ok(cohorts)
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        self.write_txn("record unit covariates", |conn| {
            let experiment =
                read_experiment(conn, experiment_id)?.ok_or_else(|| StoreError::NotFound {
                    what: "experiment",
                    id: experiment_id.to_string(),
                })?;
            units::record_covariates(
                conn,
                experiment_id,
                micros_of(since),
                micros_of(experiment.started_at),
            )
        })
    }
}
