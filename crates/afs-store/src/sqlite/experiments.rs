//! `ExperimentStore` for SQLite: model versions, experiments, their periods, sequential
//! state and event log (schema version 3), and the per-unit statistics of experiments
//! (schema version 7, in `sqlite/units.rs`).

use chrono::{DateTime, Utc};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::time::{micros_of, rfc3339};
use super::{units, SqliteStore};
use crate::error::{Result, StoreError};
use crate::experiment::{
    Decision, EventFilter, EventKind, EventNote, Experiment, ExperimentEvent, ExperimentPeriod,
    ExperimentStatus, ExperimentStore, ModelVersion, NewModelVersion, SequentialState,
    VersionStatus, WeightSource,
};
use crate::units::UnitCohort;
use crate::UsageStore;

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
        .map_err(|e| StoreError::db("migration 3", e))
}

const VERSION_COLUMNS: &str = "id, name, model_path, status, traffic_weight, created_at, \
    promoted_at, retired_at, dataset, run_id";

const EXPERIMENT_COLUMNS: &str = "e.id, c.name, h.name, e.status, e.seed, e.challenger_weight, \
    e.started_at, e.ended_at";

const EXPERIMENT_FROM: &str = "experiment e JOIN model_version c ON c.id = e.champion_id \
    JOIN model_version h ON h.id = e.challenger_id";

const STATE_COLUMNS: &str = "metric, n_looks, baseline, tau, theta0, p_better, p_worse, \
    cs_lower, cs_upper, started_at, updated_at";

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

fn check_weight(weight: f64) -> Result<()> {
    if !weight.is_finite() || !(0.0..=1.0).contains(&weight) {
        return Err(StoreError::invalid(
            "weight",
            format!("{weight} is not a number within [0, 1]"),
        ));
    }
    Ok(())
}

fn conflict(reason: impl Into<String>) -> StoreError {
    StoreError::Conflict {
        reason: reason.into(),
    }
}

/// One event row to write.
struct EventRow<'a> {
    experiment_id: Option<i64>,
    kind: EventKind,
    model: Option<&'a str>,
    decision: Option<Decision>,
    weight: Option<f64>,
    note: &'a EventNote,
}

/// Largest accepted model path, in bytes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

impl SqliteStore {
    fn check_text(&self, field: &'static str, value: &str, required: bool) -> Result<()> {
        if required && value.trim().is_empty() {
            return Err(StoreError::invalid(field, "must not be empty"));
        }
        // A version's name is the `model` of its records (a rollup key and a metric label),
        // and a model path is a path: both are bounded like them.
        let limit = match field {
            "name" => crate::MAX_NAME_BYTES,
            "model_path" => MAX_PATH_BYTES,
            _ => self.config().max_field_bytes,
        }
        .min(self.config().max_field_bytes);
        if value.len() > limit {
            return Err(StoreError::invalid(
                field,
                format!("{} bytes exceeds the limit of {limit} bytes", value.len()),
            ));
        }
        Ok(())
    }

    fn check_version(&self, version: &NewModelVersion) -> Result<()> {
        self.check_text("name", &version.name, true)?;
        self.check_text("model_path", &version.model_path, true)?;
        if let Some(dataset) = &version.dataset {
            self.check_text("dataset", dataset, false)?;
        }
        if let Some(run_id) = &version.run_id {
            self.check_text("run_id", run_id, false)?;
        }
        Ok(())
    }

    fn check_note(&self, note: &EventNote) -> Result<()> {
        self.check_text("reason", &note.reason, false)?;
        if let Some(statistics) = &note.statistics {
            self.check_text("statistics", statistics, false)?;
        }
        Ok(())
    }

    fn now_text(&self) -> String {
        rfc3339(self.clock().now())
    }

    /// Runs `f` in one immediate (write-locking) transaction and commits it.
    fn write<T>(&self, what: &str, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.write_txn(what, |tx| f(tx))
    }

    fn insert_event(&self, conn: &Connection, row: &EventRow<'_>) -> Result<ExperimentEvent> {
        let at = self.now_text();
        conn.execute(
            "INSERT INTO experiment_event (at, experiment_id, kind, model, decision, weight, reason, statistics) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                at,
                row.experiment_id,
                row.kind.as_str(),
                row.model,
                row.decision.map(Decision::as_str),
                row.weight,
                row.note.reason,
                row.note.statistics,
            ],
        )
        .map_err(|e| StoreError::db(format!("write {} event", row.kind.as_str()), e))?;
        let id = conn.last_insert_rowid();
        conn.query_row(
            &format!("SELECT {EVENT_COLUMNS} FROM experiment_event WHERE id = ?1"),
            [id],
            event_from_row,
        )
        .map_err(|e| StoreError::db("read event", e))
    }

    /// Fails with `Conflict` when `name` was ever used by a version.
    fn check_name_unused(&self, conn: &Connection, name: &str) -> Result<()> {
        let existing: Option<(i64, String)> = conn
            .query_row(
                "SELECT id, status FROM model_version WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| StoreError::db("look up model version", e))?;
        match existing {
            Some((id, status)) => Err(conflict(format!(
                "model name {name:?} is already used by version {id} ({status}); names are never \
                 reused because usage statistics are kept per model name"
            ))),
            None => Ok(()),
        }
    }

    fn insert_version(
        &self,
        conn: &Connection,
        version: &NewModelVersion,
        status: VersionStatus,
        weight: f64,
    ) -> Result<i64> {
        let now = self.now_text();
        let promoted_at = (status == VersionStatus::Champion).then_some(now.as_str());
        conn.execute(
            "INSERT INTO model_version (name, model_path, status, traffic_weight, created_at, promoted_at, dataset, run_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
        .map_err(|e| StoreError::db("insert model version", e))?;
        Ok(conn.last_insert_rowid())
    }

    fn read_version(conn: &Connection, id: i64) -> Result<ModelVersion> {
        conn.query_row(
            &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE id = ?1"),
            [id],
            version_from_row,
        )
        .map_err(|e| StoreError::db("read model version", e))
    }

    fn read_experiment(conn: &Connection, id: i64) -> Result<Experiment> {
        let found = conn
            .query_row(
                &format!("SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} WHERE e.id = ?1"),
                [id],
                experiment_from_row,
            )
            .optional()
            .map_err(|e| StoreError::db("read experiment", e))?;
        let mut experiment = found.ok_or_else(|| StoreError::NotFound {
            what: "experiment",
            id: id.to_string(),
        })?;
        experiment.periods = Self::read_periods(conn, id)?;
        Ok(experiment)
    }

    fn read_periods(conn: &Connection, experiment_id: i64) -> Result<Vec<ExperimentPeriod>> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, started_at, ended_at, challenger_weight, source FROM experiment_period \
                 WHERE experiment_id = ?1 ORDER BY idx",
            )
            .map_err(|e| StoreError::db("read experiment periods", e))?;
        let rows = stmt
            .query_map([experiment_id], |row| {
                let source: String = row.get(4)?;
                Ok(ExperimentPeriod {
                    index: row.get(0)?,
                    started_at: time_at(row, 1, "started_at")?,
                    ended_at: optional_time_at(row, 2, "ended_at")?,
                    challenger_weight: row.get(3)?,
                    source: WeightSource::parse(&source)
                        .ok_or_else(|| corrupt("source", &source))?,
                })
            })
            .map_err(|e| StoreError::db("read experiment periods", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| StoreError::db("read experiment periods", e))
    }

    /// The ids of the running experiment `id` and its champion and challenger versions, or
    /// `Conflict`/`NotFound` when it is not running.
    fn running_ids(conn: &Connection, id: i64) -> Result<(i64, i64)> {
        let row: Option<(String, i64, i64)> = conn
            .query_row(
                "SELECT status, champion_id, challenger_id FROM experiment WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| StoreError::db("read experiment", e))?;
        match row {
            None => Err(StoreError::NotFound {
                what: "experiment",
                id: id.to_string(),
            }),
            Some((status, champion, challenger))
                if status == ExperimentStatus::Running.as_str() =>
            {
                Ok((champion, challenger))
            }
            Some((status, ..)) => Err(conflict(format!(
                "experiment {id} is not running (it is {status})"
            ))),
        }
    }

    fn end_experiment(
        &self,
        conn: &Connection,
        id: i64,
        outcome: ExperimentStatus,
        note: &EventNote,
        decision: Option<Decision>,
    ) -> Result<()> {
        let (champion_id, challenger_id) = Self::running_ids(conn, id)?;
        let now = self.now_text();
        let db = |e| StoreError::db(format!("{} experiment {id}", outcome.as_str()), e);
        let (winner, loser) = match outcome {
            ExperimentStatus::Promoted => (challenger_id, champion_id),
            _ => (champion_id, challenger_id),
        };
        // Retire first: the unique indexes allow one champion and one challenger at a time.
        conn.execute(
            "UPDATE model_version SET status = 'retired', traffic_weight = 0, retired_at = ?2 WHERE id = ?1",
            params![loser, now],
        )
        .map_err(db)?;
        conn.execute(
            "UPDATE model_version SET status = 'champion', traffic_weight = 1, \
             promoted_at = CASE WHEN status = 'champion' THEN promoted_at ELSE ?2 END WHERE id = ?1",
            params![winner, now],
        )
        .map_err(db)?;
        conn.execute(
            "UPDATE experiment SET status = ?2, ended_at = ?3 WHERE id = ?1",
            params![id, outcome.as_str(), now],
        )
        .map_err(db)?;
        conn.execute(
            "UPDATE experiment_period SET ended_at = ?2 WHERE experiment_id = ?1 AND ended_at IS NULL",
            params![id, now],
        )
        .map_err(db)?;
        units::end_experiment(conn, id)?;
        let model: String = conn
            .query_row(
                "SELECT name FROM model_version WHERE id = ?1",
                [challenger_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        let kind = if outcome == ExperimentStatus::Promoted {
            EventKind::Promote
        } else {
            EventKind::Rollback
        };
        self.insert_event(
            conn,
            &EventRow {
                experiment_id: Some(id),
                kind,
                model: Some(&model),
                decision,
                weight: None,
                note,
            },
        )?;
        Ok(())
    }

    fn check_state(state: &SequentialState) -> Result<()> {
        if state.metric.trim().is_empty() {
            return Err(StoreError::invalid("metric", "must not be empty"));
        }
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
        Ok(())
    }
}

impl ExperimentStore for SqliteStore {
    fn champion(&self) -> Result<Option<ModelVersion>> {
        let conn = self.conn()?;
        conn.query_row(
            &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE status = 'champion'"),
            [],
            version_from_row,
        )
        .optional()
        .map_err(|e| StoreError::db("read champion", e))
    }

    fn model_versions(&self) -> Result<Vec<ModelVersion>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM model_version ORDER BY id"
            ))
            .map_err(|e| StoreError::db("read model versions", e))?;
        let rows = stmt
            .query_map([], version_from_row)
            .map_err(|e| StoreError::db("read model versions", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| StoreError::db("read model versions", e))
    }

    fn model_version(&self, name: &str) -> Result<ModelVersion> {
        let conn = self.conn()?;
        conn.query_row(
            &format!("SELECT {VERSION_COLUMNS} FROM model_version WHERE name = ?1"),
            [name],
            version_from_row,
        )
        .optional()
        .map_err(|e| StoreError::db("read model version", e))?
        .ok_or_else(|| StoreError::NotFound {
            what: "model version",
            id: name.to_string(),
        })
    }

    fn running_experiment(&self) -> Result<Option<Experiment>> {
        let conn = self.conn()?;
        let id: Option<i64> = conn
            .query_row(
                "SELECT id FROM experiment WHERE status = 'running'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| StoreError::db("read running experiment", e))?;
        id.map(|id| Self::read_experiment(&conn, id)).transpose()
    }

    fn experiment(&self, id: i64) -> Result<Experiment> {
        Self::read_experiment(&*self.conn()?, id)
    }

    fn experiments(&self) -> Result<Vec<Experiment>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {EXPERIMENT_COLUMNS} FROM {EXPERIMENT_FROM} ORDER BY e.id"
            ))
            .map_err(|e| StoreError::db("read experiments", e))?;
        let mut experiments = stmt
            .query_map([], experiment_from_row)
            .map_err(|e| StoreError::db("read experiments", e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| StoreError::db("read experiments", e))?;
        for experiment in &mut experiments {
            experiment.periods = Self::read_periods(&conn, experiment.id)?;
        }
        Ok(experiments)
    }

    fn set_champion(&self, version: &NewModelVersion, note: &EventNote) -> Result<ModelVersion> {
        self.check_version(version)?;
        self.check_note(note)?;
        self.write("set champion", |conn| {
            let running: Option<i64> = conn
                .query_row("SELECT id FROM experiment WHERE status = 'running'", [], |r| r.get(0))
                .optional()
                .map_err(|e| StoreError::db("read running experiment", e))?;
            if let Some(id) = running {
                return Err(conflict(format!(
                    "experiment {id} is running; promote or roll back its challenger before setting a champion"
                )));
            }
            self.check_name_unused(conn, &version.name)?;
            conn.execute(
                "UPDATE model_version SET status = 'retired', traffic_weight = 0, retired_at = ?1 WHERE status = 'champion'",
                [self.now_text()],
            )
            .map_err(|e| StoreError::db("retire champion", e))?;
            let id = self.insert_version(conn, version, VersionStatus::Champion, 1.0)?;
            self.insert_event(
                conn,
                &EventRow {
                    experiment_id: None,
                    kind: EventKind::SetChampion,
                    model: Some(&version.name),
                    decision: None,
                    weight: Some(1.0),
                    note,
                },
            )?;
            Self::read_version(conn, id)
        })
    }

    fn deploy_challenger(
        &self,
        version: &NewModelVersion,
        weight: f64,
        seed: u64,
        note: &EventNote,
    ) -> Result<Experiment> {
        self.check_version(version)?;
        self.check_note(note)?;
        check_weight(weight)?;
        self.write("deploy challenger", |conn| {
            let champion: Option<(i64, String)> = conn
                .query_row("SELECT id, name FROM model_version WHERE status = 'champion'", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(|e| StoreError::db("read champion", e))?;
            let Some((champion_id, champion_name)) = champion else {
                return Err(conflict("no champion is set; set a champion before deploying a challenger"));
            };
            let running: Option<i64> = conn
                .query_row("SELECT id FROM experiment WHERE status = 'running'", [], |r| r.get(0))
                .optional()
                .map_err(|e| StoreError::db("read running experiment", e))?;
            if let Some(id) = running {
                return Err(conflict(format!(
                    "experiment {id} is already running; promote or roll back its challenger first"
                )));
            }
            self.check_name_unused(conn, &version.name)?;
            let challenger_id = self.insert_version(conn, version, VersionStatus::Challenger, weight)?;
            conn.execute("UPDATE model_version SET traffic_weight = ?2 WHERE id = ?1", params![champion_id, 1.0 - weight])
                .map_err(|e| StoreError::db("update champion weight", e))?;
            let at = self.clock().now();
            let (now, now_us) = (rfc3339(at), micros_of(at));
            conn.execute(
                "INSERT INTO experiment (champion_id, challenger_id, status, seed, challenger_weight, started_at) \
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![champion_id, challenger_id, seed as i64, weight, now],
            )
            .map_err(|e| StoreError::db("insert experiment", e))?;
            let id = conn.last_insert_rowid();
            conn.execute(
                "INSERT INTO experiment_period (experiment_id, idx, started_at, started_us, challenger_weight, source) \
                 VALUES (?1, 0, ?2, ?3, ?4, 'initial')",
                params![id, now, now_us, weight],
            )
            .map_err(|e| StoreError::db("insert experiment period", e))?;
            units::start_experiment(conn, id, &champion_name, &version.name, now_us)?;
            self.insert_event(
                conn,
                &EventRow {
                    experiment_id: Some(id),
                    kind: EventKind::Deploy,
                    model: Some(&version.name),
                    decision: None,
                    weight: Some(weight),
                    note,
                },
            )?;
            Self::read_experiment(conn, id)
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
        self.check_note(note)?;
        self.write("set weight", |conn| {
            let (champion_id, challenger_id) = Self::running_ids(conn, experiment_id)?;
            let at = self.clock().now();
            let (now, now_us) = (rfc3339(at), micros_of(at));
            let db = |e| StoreError::db(format!("set weight of experiment {experiment_id}"), e);
            let last: u32 = conn
                .query_row(
                    "SELECT MAX(idx) FROM experiment_period WHERE experiment_id = ?1",
                    [experiment_id],
                    |r| r.get(0),
                )
                .map_err(db)?;
            conn.execute(
                "UPDATE experiment_period SET ended_at = ?3 WHERE experiment_id = ?1 AND idx = ?2",
                params![experiment_id, last, now],
            )
            .map_err(db)?;
            conn.execute(
                "INSERT INTO experiment_period (experiment_id, idx, started_at, started_us, challenger_weight, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![experiment_id, last + 1, now, now_us, weight, source.as_str()],
            )
            .map_err(db)?;
            units::start_period(conn, experiment_id, last, last + 1, now_us)?;
            conn.execute("UPDATE experiment SET challenger_weight = ?2 WHERE id = ?1", params![experiment_id, weight])
                .map_err(db)?;
            conn.execute("UPDATE model_version SET traffic_weight = ?2 WHERE id = ?1", params![challenger_id, weight])
                .map_err(db)?;
            conn.execute("UPDATE model_version SET traffic_weight = ?2 WHERE id = ?1", params![champion_id, 1.0 - weight])
                .map_err(db)?;
            self.insert_event(
                conn,
                &EventRow {
                    experiment_id: Some(experiment_id),
                    kind: EventKind::SetWeight,
                    model: None,
                    decision: None,
                    weight: Some(weight),
                    note,
                },
            )?;
            Self::read_experiment(conn, experiment_id)
        })
    }

    fn promote(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment> {
        self.check_note(note)?;
        self.write("promote", |conn| {
            self.end_experiment(conn, experiment_id, ExperimentStatus::Promoted, note, None)?;
            Self::read_experiment(conn, experiment_id)
        })
    }

    fn rollback(&self, experiment_id: i64, note: &EventNote) -> Result<Experiment> {
        self.check_note(note)?;
        self.write("rollback", |conn| {
            self.end_experiment(
                conn,
                experiment_id,
                ExperimentStatus::RolledBack,
                note,
                None,
            )?;
            Self::read_experiment(conn, experiment_id)
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
        self.check_note(note)?;
        for state in states {
            Self::check_state(state)?;
        }
        self.write("record decision", |conn| {
            Self::running_ids(conn, experiment_id)?;
            let mut upsert = conn
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO experiment_sequential_state (experiment_id, {STATE_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ))
                .map_err(|e| StoreError::db("write sequential state", e))?;
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
                    ])
                    .map_err(|e| StoreError::db(format!("write sequential state of {}", s.metric), e))?;
            }
            let event = self.insert_event(
                conn,
                &EventRow {
                    experiment_id: Some(experiment_id),
                    kind: EventKind::Decision,
                    model: None,
                    decision: Some(decision),
                    weight: None,
                    note,
                },
            )?;
            if apply {
                match decision {
                    Decision::Promote => {
                        self.end_experiment(conn, experiment_id, ExperimentStatus::Promoted, note, Some(decision))?
                    }
                    Decision::Rollback => {
                        self.end_experiment(conn, experiment_id, ExperimentStatus::RolledBack, note, Some(decision))?
                    }
                    Decision::KeepTesting | Decision::Hold => {}
                }
            }
            Ok(event)
        })
    }

    fn sequential_states(&self, experiment_id: i64) -> Result<Vec<SequentialState>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {STATE_COLUMNS} FROM experiment_sequential_state WHERE experiment_id = ?1 ORDER BY metric"
            ))
            .map_err(|e| StoreError::db("read sequential state", e))?;
        let rows = stmt
            .query_map([experiment_id], state_from_row)
            .map_err(|e| StoreError::db("read sequential state", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| StoreError::db("read sequential state", e))
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<ExperimentEvent>> {
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
        let sql = format!("SELECT {EVENT_COLUMNS} FROM experiment_event {where_clause} ORDER BY id {order} {limit}");
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&sql)
            .map_err(|e| StoreError::db("read events", e))?;
        let rows = stmt
            .query_map(params_from_iter(args), event_from_row)
            .map_err(|e| StoreError::db("read events", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| StoreError::db("read events", e))
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        // Unit rows changed since the last look are folded into the cohort sums first, in
        // the transaction that reads them, so the cohort, loose and unit rows read are one
        // snapshot; without such rows a read transaction suffices.
        let fold_and_read = || {
            self.write("fold and read unit statistics", |conn| {
                let experiment = Self::read_experiment(conn, experiment_id)?;
                units::fold(conn, experiment_id)?;
                units::unit_stats(conn, &experiment, feedback_before)
            })
        };
        let dirty = {
            let conn = self.conn()?;
            units::needs_fold(&conn, experiment_id)?
        };
        if dirty {
            return fold_and_read();
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::db("begin reading unit statistics", e))?;
        let experiment = Self::read_experiment(&tx, experiment_id)?;
        if units::needs_fold(&tx, experiment_id)? {
            // Rows changed between the check and this snapshot: fold them, as above.
            drop(tx);
            drop(conn);
            return fold_and_read();
        }
        let cohorts = units::unit_stats(&tx, &experiment, feedback_before)?;
        tx.commit()
            .map_err(|e| StoreError::db("end reading unit statistics", e))?;
        Ok(cohorts)
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        self.write("record unit covariates", |conn| {
            let experiment = Self::read_experiment(conn, experiment_id)?;
            units::record_covariates(
                conn,
                experiment_id,
                micros_of(since),
                micros_of(experiment.started_at),
            )
        })
    }
}
