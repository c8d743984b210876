//! [`RestoreStore`] for SQLite: rows written with the values they are given (`afs migrate`).
//!
//! Records get the rowid a live write would give them (`ts_us × 1024 + n`, the first free
//! slot of their microsecond, see `rows.rs`) and their contribution is added straight to the
//! three rollup tables, once per model and bucket of the transaction, as a batch does
//! (`writer.rs`); the triggers on `usage` keep the running experiment's unit rows, which are
//! folded before the commit as a batch folds them. Experiments are written with their ids
//! and the running one is marked live (`units::start_experiment`) before any record comes.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::migrations::{push_rollup_sums, rollup_upsert_sql, N_ROLLUP_COLUMNS, ROLLUP_TABLES};
use super::rows::top_rowid;
use super::time::{first_rowid_at, micros_of, rfc3339, ROWID_SLOTS};
use super::{units, SqliteStore};
use afs_store::units::UnitTally;
use afs_store::{
    Experiment, ExperimentDump, ExperimentEvent, ExperimentStatus, FeedbackValue, ModelVersion,
    RestoreStore, Result, RetrainRun, SequentialState, StoreError, UsageRecord,
};

/// Whether `e` is SQLite refusing a duplicate key.
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The context of the errors of [`RestoreStore::restore_records`].
const RECORDS_CONTEXT: &str = "restore records";

/// Per rollup table (in [`ROLLUP_TABLES`] order), the summed contribution of the restored
/// records to each (model, bucket).
type RollupSums = Vec<BTreeMap<(String, i64), [f64; N_ROLLUP_COLUMNS]>>;

/// The covariate columns of `experiment_unit_pre`, in [`UnitTally`] order (no `n`).
const PRE_COLUMNS: &str = "n_q, sum_q, n_lat, sum_lat, n_fb, n_pos, n_neg";

impl RestoreStore for SqliteStore {
    fn is_empty(&self) -> Result<bool> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT NOT (EXISTS (SELECT 1 FROM usage) OR EXISTS (SELECT 1 FROM model_version) \
             OR EXISTS (SELECT 1 FROM experiment) OR EXISTS (SELECT 1 FROM retrain_runs) \
             OR EXISTS (SELECT 1 FROM afs_state))",
            [],
            |row| row.get(0),
        )
        .map_err(|e| crate::db("check whether the database is empty", e))
    }

    fn state_entries(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT key, value FROM afs_state ORDER BY key")
            .map_err(|e| crate::db("read state", e))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|e| crate::db("read state", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| crate::db("read state", e))
    }

    fn unit_covariates(&self, experiment_id: i64) -> Result<Vec<(String, UnitTally)>> {
        let conn = self.conn()?;
        let err = |e| crate::db(format!("read covariates of experiment {experiment_id}"), e);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT unit, {PRE_COLUMNS} FROM experiment_unit_pre WHERE experiment_id = ?1 \
                 ORDER BY unit"
            ))
            .map_err(err)?;
        let rows = stmt
            .query_map([experiment_id], |row| {
                let count =
                    |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
                Ok((
                    row.get(0)?,
                    UnitTally {
                        n: 0,
                        n_quality: count(1)?,
                        sum_quality: row.get(2)?,
                        n_latency: count(3)?,
                        sum_latency_ms: row.get(4)?,
                        n_feedback: count(5)?,
                        n_positive: count(6)?,
                        n_negative: count(7)?,
                    },
                ))
            })
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }

    fn restore_experiments(&self, dump: &ExperimentDump) -> Result<()> {
        self.write_txn("restore experiments", |tx| {
            refuse_if_experiments_exist(tx)?;
            let ids = insert_versions(tx, &dump.versions)?;
            insert_experiments(tx, &dump.experiments, &ids)?;
            insert_sequential_states(tx, &dump.states)?;
            insert_events(tx, &dump.events)?;
            insert_covariates(tx, &dump.covariates)?;
            start_running_experiments(tx, &dump.experiments)
        })
    }

    fn restore_records(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.bulk_write_txn(RECORDS_CONTEXT, |tx| {
            let rollups = insert_records(tx, records)?;
            add_to_rollups(tx, &rollups)?;
            // The running experiment's unit rows the triggers changed, folded as a batch
            // folds them.
            units::fold_running(tx)
        })
    }

    fn restore_runs(&self, runs: &[RetrainRun]) -> Result<()> {
        afs_store::check_runs_finished(runs)?;
        self.write_txn("restore runs", |tx| {
            for r in runs {
                let inserted = tx.execute(
                    "INSERT INTO retrain_runs (id, started_at, finished_at, status, trigger_type, \
                     trigger, run_dir, dataset_manifest, dataset_path, n_samples, model_path, \
                     metrics, error, owner_pid, owner_start) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                    params![
                        r.id,
                        rfc3339(r.started_at),
                        r.finished_at.map(rfc3339),
                        r.status.as_str(),
                        r.trigger_type,
                        r.trigger,
                        r.run_dir,
                        r.dataset_manifest,
                        r.dataset_path,
                        r.n_samples.map(|n| n as i64),
                        r.model_path,
                        r.metrics,
                        r.error,
                        r.owner_pid,
                        "restored",
                    ],
                );
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e) => {
                        return Err(StoreError::conflict(format!("run {} already exists", r.id)))
                    }
                    Err(e) => return Err(crate::db(format!("restore run {}", r.id), e)),
                }
            }
            Ok(())
        })
    }
}

/// The error of a failed restore write; `what` names the rows.
fn restore_error(what: &str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let what = what.to_string();
    move |e| crate::db(format!("restore {what}"), e)
}

/// `Conflict` when the database already holds a model version or an experiment.
fn refuse_if_experiments_exist(conn: &Connection) -> Result<()> {
    let taken: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM model_version) OR EXISTS (SELECT 1 FROM experiment)",
            [],
            |row| row.get(0),
        )
        .map_err(restore_error("experiments"))?;
    if taken {
        return Err(StoreError::conflict(
            "the database already holds model versions or experiments",
        ));
    }
    Ok(())
}

/// Writes the model versions with their ids; returns each version's id by name.
fn insert_versions<'a>(
    conn: &Connection,
    versions: &'a [ModelVersion],
) -> Result<BTreeMap<&'a str, i64>> {
    let mut ids = BTreeMap::new();
    for v in versions {
        conn.execute(
            "INSERT INTO model_version (id, name, model_path, status, traffic_weight, \
             created_at, promoted_at, retired_at, dataset, run_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                v.id,
                v.name,
                v.model_path,
                v.status.as_str(),
                v.traffic_weight,
                rfc3339(v.created_at),
                v.promoted_at.map(rfc3339),
                v.retired_at.map(rfc3339),
                v.dataset,
                v.run_id
            ],
        )
        .map_err(restore_error(&format!("model version {}", v.name)))?;
        ids.insert(v.name.as_str(), v.id);
    }
    Ok(ids)
}

/// The id of the restored model version `name` (`NotFound` when the dump has none).
fn version_id(ids: &BTreeMap<&str, i64>, name: &str) -> Result<i64> {
    ids.get(name).copied().ok_or_else(|| StoreError::NotFound {
        what: "model version",
        id: name.to_string(),
    })
}

/// Writes the experiments with their ids, each followed by its periods.
fn insert_experiments(
    conn: &Connection,
    experiments: &[Experiment],
    ids: &BTreeMap<&str, i64>,
) -> Result<()> {
    for e in experiments {
        let what = format!("experiment {}", e.id);
        conn.execute(
            "INSERT INTO experiment (id, champion_id, challenger_id, status, seed, \
             challenger_weight, started_at, ended_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.id,
                version_id(ids, &e.champion)?,
                version_id(ids, &e.challenger)?,
                e.status.as_str(),
                e.seed as i64,
                e.challenger_weight,
                rfc3339(e.started_at),
                e.ended_at.map(rfc3339)
            ],
        )
        .map_err(restore_error(&what))?;
        for p in &e.periods {
            conn.execute(
                "INSERT INTO experiment_period (experiment_id, idx, started_at, \
                 started_us, ended_at, challenger_weight, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.id,
                    p.index,
                    rfc3339(p.started_at),
                    micros_of(p.started_at),
                    p.ended_at.map(rfc3339),
                    p.challenger_weight,
                    p.source.as_str()
                ],
            )
            .map_err(restore_error(&what))?;
        }
    }
    Ok(())
}

/// Writes the sequential states, by experiment id.
fn insert_sequential_states(
    conn: &Connection,
    states: &[(i64, Vec<SequentialState>)],
) -> Result<()> {
    for (id, states) in states {
        super::experiments::upsert_sequential_states(conn, *id, states)
            .map_err(|(_, e)| restore_error(&format!("sequential state of experiment {id}"))(e))?;
    }
    Ok(())
}

/// Writes the experiment events with their ids.
fn insert_events(conn: &Connection, events: &[ExperimentEvent]) -> Result<()> {
    for ev in events {
        conn.execute(
            "INSERT INTO experiment_event (id, at, experiment_id, kind, model, decision, \
             weight, reason, statistics) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                ev.id,
                rfc3339(ev.at),
                ev.experiment_id,
                ev.kind.as_str(),
                ev.model,
                ev.decision.map(|d| d.as_str()),
                ev.weight,
                ev.reason,
                ev.statistics
            ],
        )
        .map_err(restore_error(&format!("event {}", ev.id)))?;
    }
    Ok(())
}

/// Writes the covariates (`experiment_unit_pre`), by experiment id.
fn insert_covariates(
    conn: &Connection,
    covariates: &[(i64, Vec<(String, UnitTally)>)],
) -> Result<()> {
    for (id, units) in covariates {
        let mut insert = conn
            .prepare(&format!(
                "INSERT INTO experiment_unit_pre (experiment_id, unit, {PRE_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))
            .map_err(restore_error("covariates"))?;
        for (unit, t) in units {
            insert
                .execute(params![
                    id,
                    unit,
                    t.n_quality as i64,
                    t.sum_quality,
                    t.n_latency as i64,
                    t.sum_latency_ms,
                    t.n_feedback as i64,
                    t.n_positive as i64,
                    t.n_negative as i64
                ])
                .map_err(restore_error(&format!("covariates of experiment {id}")))?;
        }
    }
    Ok(())
}

/// Marks the running experiment live (`units::start_experiment`), before any record comes.
fn start_running_experiments(conn: &Connection, experiments: &[Experiment]) -> Result<()> {
    for e in experiments {
        if e.status == ExperimentStatus::Running {
            units::start_experiment(
                conn,
                e.id,
                &e.champion,
                &e.challenger,
                micros_of(e.started_at),
            )?;
        }
    }
    Ok(())
}

/// Writes `records` in the order given, each with the rowid a live write would give it;
/// returns their contribution to the rollups.
fn insert_records(conn: &Connection, records: &[UsageRecord]) -> Result<RollupSums> {
    let mut top = top_rowid(conn).map_err(|e| crate::db(RECORDS_CONTEXT, e))?;
    let mut rollups: RollupSums = vec![BTreeMap::new(); ROLLUP_TABLES.len()];
    let mut statements = RecordStatements::prepare(conn)?;
    for r in records {
        let ts_us = micros_of(r.timestamp);
        let rowid = statements.free_rowid(top, r, ts_us)?;
        statements.insert(rowid, r, ts_us)?;
        top = top.max(Some(rowid));
        let delta =
            crate::rows::rollup_delta(r.feedback, r.quality_score, r.latency_ms, r.token_count);
        for (table, sums_by_bucket) in ROLLUP_TABLES.iter().zip(rollups.iter_mut()) {
            let sums = sums_by_bucket
                .entry((r.model.clone(), ts_us / table.width_us))
                .or_insert([0.0; N_ROLLUP_COLUMNS]);
            for (sum, d) in sums.iter_mut().zip(delta) {
                *sum += d;
            }
        }
    }
    Ok(rollups)
}

/// The statements [`insert_records`] runs for each record, prepared once.
struct RecordStatements<'c> {
    /// Inserts a record with its rowid.
    insert: rusqlite::CachedStatement<'c>,
    /// The highest rowid in a range (a microsecond's slots).
    slot: rusqlite::CachedStatement<'c>,
    /// Whether a record id is taken.
    exists: rusqlite::CachedStatement<'c>,
}

impl<'c> RecordStatements<'c> {
    /// Prepares the statements on `conn`.
    fn prepare(conn: &'c Connection) -> Result<Self> {
        let prepare = |sql: &str| {
            conn.prepare_cached(sql)
                .map_err(|e| crate::db(RECORDS_CONTEXT, e))
        };
        Ok(RecordStatements {
            insert: prepare(
                "INSERT INTO usage (rowid, id, timestamp, query, response, model, expert, \
                 latency_ms, token_count, quality_score, user_feedback, feedback_text, \
                 context_hash, dedupe_hash, created_at, ts_us, feedback_at, unit_id, \
                 pair_key, messages) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?,
            slot: prepare("SELECT MAX(rowid) FROM usage WHERE rowid >= ?1 AND rowid < ?2")?,
            exists: prepare("SELECT 1 FROM usage WHERE id = ?1")?,
        })
    }

    /// The rowid of record `r` (at `ts_us`), `top` being the highest rowid so far: the first
    /// free slot of its microsecond, as `InsertRow::insert` chooses it. A record never moves:
    /// a full microsecond is refused.
    fn free_rowid(&mut self, top: Option<i64>, r: &UsageRecord, ts_us: i64) -> Result<i64> {
        let first = first_rowid_at(ts_us);
        let last: Option<i64> = match top {
            Some(t) if t >= first => self
                .slot
                .query_row([first, first + ROWID_SLOTS], |row| row.get(0))
                .map_err(|e| crate::db(RECORDS_CONTEXT, e))?,
            _ => None,
        };
        match last {
            None => Ok(first),
            Some(last) if last + 1 < first + ROWID_SLOTS => Ok(last + 1),
            Some(_) => Err(StoreError::conflict(format!(
                "record {}: its microsecond already holds {ROWID_SLOTS} records",
                r.id
            ))),
        }
    }

    /// Inserts record `r` (at `ts_us`) with `rowid`; `Conflict` when its id is taken.
    fn insert(&mut self, rowid: i64, r: &UsageRecord, ts_us: i64) -> Result<()> {
        let inserted = self.insert.execute(params![
            rowid,
            r.id,
            rfc3339(r.timestamp),
            r.query,
            r.response,
            r.model,
            r.expert,
            r.latency_ms,
            r.token_count,
            r.quality_score,
            r.feedback.map(FeedbackValue::as_i64),
            r.feedback_text,
            r.context_hash,
            r.dedupe_hash,
            r.created_at.map(rfc3339),
            ts_us,
            r.feedback_at.map(rfc3339),
            r.unit_id,
            r.pair_key.as_ref().map(|k| &k[..]),
            r.messages.as_deref().map(afs_store::messages_to_json),
        ]);
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => {
                let duplicate = self
                    .exists
                    .query_row([&r.id], |_| Ok(()))
                    .optional()
                    .map_err(|e| crate::db(RECORDS_CONTEXT, e))?
                    .is_some();
                Err(if duplicate {
                    StoreError::conflict(format!("record {} already exists", r.id))
                } else {
                    crate::db(format!("restore record {}", r.id), e)
                })
            }
            Err(e) => Err(crate::db(format!("restore record {}", r.id), e)),
        }
    }
}

/// Adds `rollups` to the three rollup tables, one upsert per model and bucket.
fn add_to_rollups(conn: &Connection, rollups: &RollupSums) -> Result<()> {
    for (table, sums_by_bucket) in ROLLUP_TABLES.iter().zip(rollups) {
        let mut upsert = conn
            .prepare_cached(&rollup_upsert_sql(*table))
            .map_err(|e| crate::db("update rollups", e))?;
        for ((model, bucket), sums) in sums_by_bucket {
            let mut values: Vec<rusqlite::types::Value> =
                vec![model.clone().into(), (*bucket).into()];
            push_rollup_sums(&mut values, sums);
            upsert
                .execute(rusqlite::params_from_iter(values))
                .map_err(|e| crate::db("update rollups", e))?;
        }
    }
    Ok(())
}
