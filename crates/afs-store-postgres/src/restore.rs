//! [`RestoreStore`] for PostgreSQL: rows written with the values they are given
//! (`afs migrate`).
//!
//! Records go in with one binary `COPY` per batch, in the order given (so `seq`, which
//! breaks ties within a microsecond, follows it); `COPY` fires the statement-level insert
//! triggers, so the rollups and the running experiment's per-unit statistics follow as they
//! do for `log_batch`. Experiments are written under the experiment lock with their ids, and
//! the running one is started for the triggers (`units::start_experiment`) before any
//! record comes. Restored runs are finished, so no process owns them: `owner_host` is
//! `restored` and `owner_backend_pid` 0.

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::Transaction;

use afs_store::units::UnitTally;
use afs_store::{
    Experiment, ExperimentDump, ExperimentEvent, ExperimentStatus, FeedbackValue, ModelVersion,
    RestoreStore, Result, RetrainRun, SequentialState, StoreError, UsageRecord,
};

use crate::error::{db, dbe};
use crate::experiments::micros;
use crate::store::PgStore;

/// The columns a restored record fills and their types: the log's insert columns (`seq` is
/// generated).
use crate::usage_rows::{INSERT_COLUMNS as COPY_COLUMNS, INSERT_TYPES as COPY_TYPES};

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// `Conflict` for a duplicate key (`what` names the rows), else the driver error.
fn write_error(what: &str, e: postgres::Error) -> StoreError {
    if is_unique_violation(&e) {
        let detail = e
            .as_db_error()
            .and_then(|d| d.detail())
            .unwrap_or("a key already exists")
            .to_string();
        StoreError::conflict(format!("{what}: {detail}"))
    } else {
        db(format!("restore {what}"), e)
    }
}

impl RestoreStore for PgStore {
    fn is_empty(&self) -> Result<bool> {
        let mut conn = self.conn()?;
        let row = conn
            .query_one(
                "SELECT NOT (EXISTS (SELECT 1 FROM afs_usage) \
                 OR EXISTS (SELECT 1 FROM afs_model_version) \
                 OR EXISTS (SELECT 1 FROM afs_experiment) \
                 OR EXISTS (SELECT 1 FROM afs_retrain_run) OR EXISTS (SELECT 1 FROM afs_state))",
                &[],
            )
            .map_err(dbe("check whether the database is empty"))?;
        Ok(row.get(0))
    }

    fn state_entries(&self) -> Result<Vec<(String, String)>> {
        let mut conn = self.conn()?;
        let rows = conn
            .query("SELECT key, value FROM afs_state ORDER BY key", &[])
            .map_err(dbe("read state"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn unit_covariates(&self, experiment_id: i64) -> Result<Vec<(String, UnitTally)>> {
        let mut conn = self.conn()?;
        let rows = conn
            .query(
                "SELECT unit_id, n, n_q, sum_q, n_lat, sum_lat, n_fb, n_pos, n_neg \
                 FROM afs_experiment_unit_pre WHERE experiment_id = $1 ORDER BY unit_id",
                &[&experiment_id],
            )
            .map_err(|e| db(format!("read covariates of experiment {experiment_id}"), e))?;
        let count = |row: &postgres::Row, i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    UnitTally {
                        n: count(row, 1),
                        n_quality: count(row, 2),
                        sum_quality: row.get(3),
                        n_latency: count(row, 4),
                        sum_latency_ms: row.get(5),
                        n_feedback: count(row, 6),
                        n_positive: count(row, 7),
                        n_negative: count(row, 8),
                    },
                )
            })
            .collect())
    }

    fn restore_experiments(&self, dump: &ExperimentDump) -> Result<()> {
        self.experiment_write("restore experiments", |tx| {
            refuse_if_experiments_exist(tx)?;
            insert_versions(tx, &dump.versions)?;
            insert_experiments(tx, &dump.experiments, &dump.versions)?;
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
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        self.transaction("restore records", |tx| {
            // The log is partitioned by month, and a unique index on a partitioned table must
            // hold the partition key: ids already present are looked for here instead.
            let taken: Option<String> = tx
                .query_opt(
                    "SELECT id FROM afs_usage WHERE id = ANY($1) LIMIT 1",
                    &[&ids],
                )
                .map_err(dbe("restore records"))?
                .map(|row| row.get(0));
            if let Some(id) = taken {
                return Err(StoreError::conflict(format!(
                    "a record with id {id} exists already"
                )));
            }
            let sink = tx
                .copy_in(&format!(
                    "COPY afs_usage ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .map_err(dbe("restore records"))?;
            let mut writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
            for r in records {
                let key: Option<&[u8]> = r.pair_key.as_ref().map(|k| &k[..]);
                let messages = r.messages.as_deref().map(afs_store::messages_to_json);
                let values: [&(dyn ToSql + Sync); 18] = [
                    &r.id,
                    &micros(r.timestamp),
                    &r.query,
                    &r.response,
                    &r.model,
                    &r.expert,
                    &r.latency_ms,
                    &r.token_count,
                    &r.quality_score,
                    &r.feedback.map(|f: FeedbackValue| f.as_i64() as i16),
                    &r.feedback_text,
                    &r.feedback_at.map(micros),
                    &r.unit_id,
                    &r.context_hash,
                    &r.dedupe_hash,
                    &r.created_at.map(micros),
                    &key,
                    &messages,
                ];
                writer
                    .write(&values)
                    .map_err(|e| write_error("records", e))?;
            }
            writer.finish().map_err(|e| write_error("records", e))?;
            Ok(())
        })
    }

    fn restore_runs(&self, runs: &[RetrainRun]) -> Result<()> {
        afs_store::check_runs_finished(runs)?;
        self.transaction("restore runs", |tx| {
            for r in runs {
                tx.execute(
                    "INSERT INTO afs_retrain_run (id, started_at_us, finished_at_us, status, \
                     trigger_type, trigger, run_dir, dataset_manifest, dataset_path, n_samples, \
                     model_path, metrics, error, owner_pid, owner_host, owner_backend_pid) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                     'restored', 0)",
                    &[
                        &r.id,
                        &micros(r.started_at),
                        &r.finished_at.map(micros),
                        &r.status.as_str(),
                        &r.trigger_type,
                        &r.trigger,
                        &r.run_dir,
                        &r.dataset_manifest,
                        &r.dataset_path,
                        &r.n_samples.map(|n| n as i64),
                        &r.model_path,
                        &r.metrics,
                        &r.error,
                        &i64::from(r.owner_pid),
                    ],
                )
                .map_err(|e| write_error(&format!("run {}", r.id), e))?;
            }
            Ok(())
        })
    }
}

/// `Conflict` when the database already holds a model version or an experiment.
fn refuse_if_experiments_exist(tx: &mut Transaction<'_>) -> Result<()> {
    let taken: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM afs_model_version) \
             OR EXISTS (SELECT 1 FROM afs_experiment)",
            &[],
        )
        .map_err(dbe("check experiments"))?
        .get(0);
    if taken {
        return Err(StoreError::conflict(
            "the database already holds model versions or experiments",
        ));
    }
    Ok(())
}

/// Writes the model versions with their ids.
fn insert_versions(tx: &mut Transaction<'_>, versions: &[ModelVersion]) -> Result<()> {
    for v in versions {
        tx.execute(
            "INSERT INTO afs_model_version (id, name, model_path, status, \
             traffic_weight, created_at_us, promoted_at_us, retired_at_us, dataset, \
             run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &v.id,
                &v.name,
                &v.model_path,
                &v.status.as_str(),
                &v.traffic_weight,
                &micros(v.created_at),
                &v.promoted_at.map(micros),
                &v.retired_at.map(micros),
                &v.dataset,
                &v.run_id,
            ],
        )
        .map_err(|e| write_error(&format!("model version {}", v.name), e))?;
    }
    Ok(())
}

/// The id of the model version `name` of `versions` (`NotFound` when there is none).
fn version_id(versions: &[ModelVersion], name: &str) -> Result<i64> {
    versions
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.id)
        .ok_or_else(|| StoreError::NotFound {
            what: "model version",
            id: name.to_string(),
        })
}

/// Writes the experiments with their ids, each followed by its periods; `versions` gives
/// the ids of their models.
fn insert_experiments(
    tx: &mut Transaction<'_>,
    experiments: &[Experiment],
    versions: &[ModelVersion],
) -> Result<()> {
    for e in experiments {
        let what = format!("experiment {}", e.id);
        tx.execute(
            "INSERT INTO afs_experiment (id, champion_id, challenger_id, status, seed, \
             challenger_weight, started_at_us, ended_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &e.id,
                &version_id(versions, &e.champion)?,
                &version_id(versions, &e.challenger)?,
                &e.status.as_str(),
                &(e.seed as i64),
                &e.challenger_weight,
                &micros(e.started_at),
                &e.ended_at.map(micros),
            ],
        )
        .map_err(|err| write_error(&what, err))?;
        for p in &e.periods {
            tx.execute(
                "INSERT INTO afs_experiment_period (experiment_id, idx, started_us, \
                 ended_us, challenger_weight, source) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &e.id,
                    &(p.index as i32),
                    &micros(p.started_at),
                    &p.ended_at.map(micros),
                    &p.challenger_weight,
                    &p.source.as_str(),
                ],
            )
            .map_err(|err| write_error(&what, err))?;
        }
    }
    Ok(())
}

/// Writes the sequential states, by experiment id.
fn insert_sequential_states(
    tx: &mut Transaction<'_>,
    states: &[(i64, Vec<SequentialState>)],
) -> Result<()> {
    for (id, states) in states {
        crate::experiments::upsert_sequential_states(tx, *id, states)
            .map_err(|(_, e)| write_error(&format!("sequential state of experiment {id}"), e))?;
    }
    Ok(())
}

/// Writes the experiment events with their ids.
fn insert_events(tx: &mut Transaction<'_>, events: &[ExperimentEvent]) -> Result<()> {
    for ev in events {
        tx.execute(
            "INSERT INTO afs_experiment_event (id, at_us, experiment_id, kind, model, \
             decision, weight, reason, statistics) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &ev.id,
                &micros(ev.at),
                &ev.experiment_id,
                &ev.kind.as_str(),
                &ev.model,
                &ev.decision.map(|d| d.as_str()),
                &ev.weight,
                &ev.reason,
                &ev.statistics,
            ],
        )
        .map_err(|e| write_error(&format!("event {}", ev.id), e))?;
    }
    Ok(())
}

/// Writes the covariates (`afs_experiment_unit_pre`), by experiment id.
fn insert_covariates(
    tx: &mut Transaction<'_>,
    covariates: &[(i64, Vec<(String, UnitTally)>)],
) -> Result<()> {
    for (id, units) in covariates {
        for (unit, t) in units {
            tx.execute(
                "INSERT INTO afs_experiment_unit_pre (experiment_id, unit_id, n, n_q, \
                 sum_q, n_lat, sum_lat, n_fb, n_pos, n_neg) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    id,
                    unit,
                    &(t.n as i64),
                    &(t.n_quality as i64),
                    &t.sum_quality,
                    &(t.n_latency as i64),
                    &t.sum_latency_ms,
                    &(t.n_feedback as i64),
                    &(t.n_positive as i64),
                    &(t.n_negative as i64),
                ],
            )
            .map_err(|e| write_error(&format!("covariates of experiment {id}"), e))?;
        }
    }
    Ok(())
}

/// Starts the running experiment for the triggers (`units::start_experiment`), before any
/// record comes.
fn start_running_experiments(tx: &mut Transaction<'_>, experiments: &[Experiment]) -> Result<()> {
    for e in experiments {
        if e.status == ExperimentStatus::Running {
            crate::units::start_experiment(
                tx,
                e.id,
                &e.champion,
                &e.challenger,
                micros(e.started_at),
            )?;
        }
    }
    Ok(())
}
