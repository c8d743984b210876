//! `RunStore` for SQLite: the `retrain_runs` and `afs_state` tables (schema version 4).

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::migrations::parse_legacy_time;
use super::time::rfc3339;
use super::SqliteStore;
use afs_store::new_id;
use afs_store::UsageStore;
use afs_store::{NewRun, RetrainRun, RunOutcome, RunStatus, RunStore};
use afs_store::{Result, StoreError};

const V4_RUNS: &str = "
CREATE TABLE retrain_runs (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'timed_out', 'interrupted')),
    trigger_type TEXT NOT NULL,
    trigger TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    dataset_manifest TEXT,
    dataset_path TEXT,
    n_samples INTEGER,
    model_path TEXT,
    metrics TEXT,
    error TEXT,
    owner_pid INTEGER NOT NULL,
    owner_start TEXT NOT NULL
);
CREATE INDEX retrain_runs_status ON retrain_runs (status, started_at);
CREATE TABLE afs_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// Migration 4: retrain runs and controller state.
pub(crate) fn migrate_v4(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(V4_RUNS)
        .map_err(|e| crate::db("migration 4", e))
}

const RUN_COLUMNS: &str = "id, started_at, finished_at, status, trigger_type, trigger, run_dir, \
    dataset_manifest, dataset_path, n_samples, model_path, metrics, error, owner_pid";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RetrainRun> {
    let time = |i: usize| -> rusqlite::Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(row
            .get::<_, Option<String>>(i)?
            .as_deref()
            .and_then(parse_legacy_time))
    };
    let status: String = row.get(3)?;
    Ok(RetrainRun {
        id: row.get(0)?,
        started_at: time(1)?.unwrap_or_default(),
        finished_at: time(2)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        trigger_type: row.get(4)?,
        trigger: row.get(5)?,
        run_dir: row.get(6)?,
        dataset_manifest: row.get(7)?,
        dataset_path: row.get(8)?,
        n_samples: row.get::<_, Option<i64>>(9)?.map(|n| n.max(0) as u64),
        model_path: row.get(10)?,
        metrics: row.get(11)?,
        error: row.get(12)?,
        owner_pid: row.get::<_, i64>(13)?.clamp(0, i64::from(u32::MAX)) as u32,
    })
}

impl SqliteStore {
    fn fail_dead_runs(&self, tx: &rusqlite::Transaction<'_>) -> Result<Vec<String>> {
        let mut stmt = tx
            .prepare("SELECT id, owner_pid, owner_start FROM retrain_runs WHERE status = 'running'")
            .map_err(|e| crate::db("read running runs", e))?;
        let running: Vec<(String, i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| crate::db("read running runs", e))?;
        let now = rfc3339(self.clock().now());
        let mut failed = Vec::new();
        for (id, pid, identity) in running {
            let pid = pid.clamp(0, i64::from(u32::MAX)) as u32;
            // An owner on another host cannot be checked from here: its run stays running.
            if afs_store::process::liveness(pid, &identity) != afs_store::process::Liveness::Dead {
                continue;
            }
            tx.execute(
                "UPDATE retrain_runs SET status = 'failed', finished_at = ?1, error = ?2 WHERE id = ?3",
                params![now, format!("the process that ran it (pid {pid}) died before it finished"), id],
            )
            .map_err(|e| crate::db("mark stale run failed", e))?;
            tracing::warn!(run = %id, pid, "marked a run left running by a dead process as failed");
            failed.push(id);
        }
        Ok(failed)
    }
}

impl RunStore for SqliteStore {
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin run", e))?;
        self.fail_dead_runs(&tx)?;
        let busy: Option<(String, i64)> = tx
            .query_row(
                "SELECT id, owner_pid FROM retrain_runs WHERE status = 'running' LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| crate::db("check running runs", e))?;
        if let Some((id, pid)) = busy {
            return Err(StoreError::Conflict {
                reason: format!("retrain run {id} is already running (pid {pid})"),
            });
        }
        let now = self.clock().now();
        let id = run.id.clone().unwrap_or_else(|| new_id(now));
        let used: bool = tx
            .query_row(
                "SELECT 1 FROM retrain_runs WHERE id = ?1",
                [&id],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| crate::db("check run id", e))?
            .is_some();
        if used {
            return Err(StoreError::Conflict {
                reason: format!("retrain run id {id} is already used"),
            });
        }
        let pid = std::process::id();
        tx.execute(
            "INSERT INTO retrain_runs (id, started_at, status, trigger_type, trigger, run_dir, owner_pid, owner_start)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
            params![id, rfc3339(now), run.trigger_type, run.trigger, run.run_dir, pid, afs_store::process::identity(pid)],
        )
        .map_err(|e| crate::db("insert run", e))?;
        tx.commit().map_err(|e| crate::db("commit run start", e))?;
        self.run(&id)
    }

    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()> {
        let conn = self.conn()?;
        let changed = conn
            .execute(
                "UPDATE retrain_runs SET dataset_path = ?1, dataset_manifest = ?2, n_samples = ?3
                 WHERE id = ?4 AND status = 'running'",
                params![dataset_path, manifest, n_samples as i64, id],
            )
            .map_err(|e| crate::db("record run dataset", e))?;
        if changed == 0 {
            self.run(id)?;
            return Err(StoreError::run_not_running(id));
        }
        Ok(())
    }

    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun> {
        outcome.check_final()?;
        let conn = self.conn()?;
        let changed = conn
            .execute(
                "UPDATE retrain_runs SET status = ?1, finished_at = ?2, model_path = ?3, metrics = ?4, error = ?5
                 WHERE id = ?6 AND status = 'running'",
                params![
                    outcome.status.as_str(),
                    rfc3339(self.clock().now()),
                    outcome.model_path,
                    outcome.metrics,
                    outcome.error,
                    id
                ],
            )
            .map_err(|e| crate::db("finish run", e))?;
        if changed == 0 {
            let run = self.run(id)?;
            return Err(StoreError::Conflict {
                reason: format!(
                    "retrain run {id} already finished as {}",
                    run.status.as_str()
                ),
            });
        }
        drop(conn);
        self.run(id)
    }

    fn run(&self, id: &str) -> Result<RetrainRun> {
        let conn = self.conn()?;
        conn.query_row(
            &format!("SELECT {RUN_COLUMNS} FROM retrain_runs WHERE id = ?1"),
            [id],
            run_from_row,
        )
        .optional()
        .map_err(|e| crate::db("read run", e))?
        .ok_or_else(|| StoreError::NotFound {
            what: "retrain run",
            id: id.to_string(),
        })
    }

    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM retrain_runs ORDER BY started_at DESC, id DESC LIMIT ?1"
            ))
            .map_err(|e| crate::db("list runs", e))?;
        let rows = stmt
            .query_map([limit.min(i64::MAX as usize) as i64], run_from_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| crate::db("list runs", e))?;
        Ok(rows)
    }

    fn count_runs(&self, status: RunStatus) -> Result<u64> {
        self.conn()?
            .query_row(
                "SELECT COUNT(*) FROM retrain_runs WHERE status = ?1",
                [status.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| crate::db("count runs", e))
    }

    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>> {
        let conn = self.conn()?;
        conn.query_row(
            &format!(
                "SELECT {RUN_COLUMNS} FROM retrain_runs WHERE status = ?1 ORDER BY started_at DESC, id DESC LIMIT 1"
            ),
            [status.as_str()],
            run_from_row,
        )
        .optional()
        .map_err(|e| crate::db("read last run", e))
    }

    fn recover_stale_runs(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin run recovery", e))?;
        let failed = self.fail_dead_runs(&tx)?;
        tx.commit()
            .map_err(|e| crate::db("commit run recovery", e))?;
        Ok(failed)
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        conn.query_row("SELECT value FROM afs_state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| crate::db(format!("read state {key}"), e))
    }

    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()> {
        let now = rfc3339(self.clock().now());
        self.write_txn("state write", |tx| {
            for (key, value) in entries {
                if key.is_empty() {
                    return Err(StoreError::invalid("key", "must not be empty"));
                }
                tx.execute(
                    "INSERT INTO afs_state (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![key, value, now],
                )
                .map_err(|e| crate::db(format!("write state {key}"), e))?;
            }
            Ok(())
        })
    }
}
