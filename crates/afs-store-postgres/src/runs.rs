//! [`RunStore`] on PostgreSQL: retrain runs owned across hosts, and controller state.
//!
//! # Design
//!
//! * **Tables** (`src/schema/experiments.sql`): `afs_retrain_run` (the SQLite store's
//!   columns, times in microseconds, plus the owner's host, its server session's pid and the
//!   run's `lock_key`) and `afs_state` (key, value, time of the last write).
//! * **One run at a time:** `begin_run` and `recover_stale_runs` run in a transaction that
//!   first takes the transaction-level advisory lock [`RUNS_LOCK`], so two processes (of any
//!   hosts) never both see "no run is running" and both insert one.
//! * **Ownership without `/proc`:** the handle that begins a run opens a *dedicated*
//!   connection and takes on it the session-level advisory lock `(RUN_LOCK_CLASS,
//!   lock_key)` of the run, before the transaction inserting the run commits; the
//!   connection is kept in [`RunState`] (inside the [`PgStore`]) while the run runs. When
//!   the owning process dies (crash, `kill -9`, a host lost), the server ends its session
//!   and releases the lock. So a running run whose lock can be taken from another session
//!   (waiting at most [`OWNER_GRACE`], as the server frees a dead session's locks a moment
//!   after the process dies) has lost its owner:
//!   `begin_run` and `recover_stale_runs` mark it `failed` with an error naming the owner
//!   (pid and host). `finish_run` closes the dedicated connection, which releases the
//!   lock. A run whose owner lost its connection to the server while alive is, by the same
//!   test, taken as lost: the server cannot tell the two apart.
//!   A host that vanishes without closing its socket (power loss, a cut network) loses its
//!   runs when TCP keepalives give up on it (about 25 s; the dedicated connection asks for
//!   them both ways).
//! * `owner_pid` is the owning process's pid (on its host, `owner_host`).
//! * **State:** `put_states` upserts every key in one transaction.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use afs_store::{new_id, NewRun, Result, RetrainRun, RunOutcome, RunStatus, RunStore, StoreError};
use postgres::{NoTls, Row, Transaction};

use crate::error::{db, dbe};
use crate::experiments::{micros, time_of};
use crate::store::PgStore;

/// The transaction-level advisory lock taken by every change of which run is running.
pub(crate) const RUNS_LOCK: i64 = 0x0afd_0003;

/// The first key of a run's session-level advisory lock (two-key form; the second key is
/// the run's `lock_key`). Two-key locks never collide with the one-key locks above.
const RUN_LOCK_CLASS: i32 = 0x0afd;

/// The runs this handle owns: per run id, the dedicated connection holding the run's
/// session-level advisory lock.
#[derive(Default)]
pub(crate) struct RunState {
    /// Run id → the connection holding its lock.
    owned: Mutex<HashMap<String, postgres::Client>>,
}

impl std::fmt::Debug for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owned: Vec<String> = self
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("RunState").field("owned", &owned).finish()
    }
}

impl RunState {
    /// No runs yet.
    pub(crate) fn new() -> Self {
        RunState::default()
    }

    /// Keeps `client`, which holds the lock of run `id`.
    fn keep(&self, id: &str, client: postgres::Client) {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), client);
    }

    /// Whether this handle owns run `id`.
    fn owns(&self, id: &str) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    /// Closes the connections of the owned runs that are not in `running`.
    fn release_all_but(&self, running: &[String]) {
        let finished: Vec<postgres::Client> = {
            let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<String> = owned
                .keys()
                .filter(|id| !running.contains(id))
                .cloned()
                .collect();
            gone.iter().filter_map(|id| owned.remove(id)).collect()
        };
        for client in finished {
            let _ = client.close();
        }
    }

    /// Closes the connection holding the lock of run `id`, if this handle owns it.
    fn release(&self, id: &str) {
        let client = self
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(client) = client {
            // Closing the session releases its advisory lock.
            let _ = client.close();
        }
    }
}

const RUN_COLUMNS: &str = "id, started_at_us, finished_at_us, status, trigger_type, trigger, \
    run_dir, dataset_manifest, dataset_path, n_samples, model_path, metrics, error, owner_pid";

/// A run from a row of [`RUN_COLUMNS`].
fn run_from_row(row: &Row) -> Result<RetrainRun> {
    let status: String = row.get(3);
    Ok(RetrainRun {
        id: row.get(0),
        started_at: time_of(row.get(1)),
        finished_at: row.get::<_, Option<i64>>(2).map(time_of),
        status: RunStatus::parse(&status)
            .ok_or_else(|| crate::experiments::corrupt("status", &status))?,
        trigger_type: row.get(4),
        trigger: row.get(5),
        run_dir: row.get(6),
        dataset_manifest: row.get(7),
        dataset_path: row.get(8),
        n_samples: row.get::<_, Option<i64>>(9).map(|n| n.max(0) as u64),
        model_path: row.get(10),
        metrics: row.get(11),
        error: row.get(12),
        owner_pid: row.get::<_, i64>(13).clamp(0, i64::from(u32::MAX)) as u32,
    })
}

/// This host's name, for messages naming a run's owner.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_string())
}

/// How long a check waits for the lock of a run owned elsewhere before taking its owner as
/// alive. The server releases a dead session's locks a moment after the process dies (when
/// its backend reads the end of the connection), so a check right after a kill must wait a
/// little; a live owner costs a conflicting `begin_run` this much.
const OWNER_GRACE: &str = "500ms";

/// Whether the session-level lock of the run with `key` is free, i.e. its owner's session
/// ended: taken at transaction level (released at commit), waiting at most [`OWNER_GRACE`],
/// in a savepoint so that a timeout leaves the transaction usable.
fn owner_is_gone(tx: &mut Transaction<'_>, key: i32) -> Result<bool> {
    let err = || dbe("check the owner of a running run");
    let free: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, $2)",
            &[&RUN_LOCK_CLASS, &key],
        )
        .map_err(err())?
        .get(0);
    if free {
        return Ok(true);
    }
    let mut sp = tx.transaction().map_err(err())?;
    let before: String = sp
        .query_one(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)",
            &[&OWNER_GRACE],
        )
        .map_err(err())?
        .get(0);
    match sp.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&RUN_LOCK_CLASS, &key],
    ) {
        Ok(_) => {
            sp.execute("SELECT set_config('lock_timeout', $1, true)", &[&before])
                .map_err(err())?;
            sp.commit().map_err(err())?;
            Ok(true)
        }
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            // Rolling back the savepoint restores lock_timeout too.
            drop(sp);
            Ok(false)
        }
        Err(e) => Err(db("check the owner of a running run", e)),
    }
}

impl PgStore {
    /// A new connection of its own (not from the pool), to hold a run's lock, with TCP
    /// keepalives both ways (10 s idle, every 5 s, 3 probes), so that the server ends the
    /// session of a host that vanished without closing its socket within about 25 s.
    fn dedicated_connection(&self) -> Result<postgres::Client> {
        let mut pg = self.pg.clone();
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let mut client = pg
            .connect(NoTls)
            .map_err(|e| db(format!("connect to {} to own a retrain run", self.shown), e))?;
        client
            .batch_execute(
                "SET application_name = 'afs retrain run'; SET tcp_keepalives_idle = 10; \
                 SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3;",
            )
            .map_err(dbe("set up the connection owning a retrain run"))?;
        Ok(client)
    }

    /// Runs `f` in a transaction holding [`RUNS_LOCK`] and commits it when `f` returns `Ok`.
    fn runs_transaction<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.locked_transaction(what, RUNS_LOCK, f)
    }

    /// Marks failed every running run whose owner's session is gone (its lock is free);
    /// returns their ids.
    fn fail_lost_runs(&self, tx: &mut Transaction<'_>) -> Result<Vec<String>> {
        let rows = tx
            .query(
                "SELECT id, lock_key, owner_pid, owner_host FROM afs_retrain_run \
                 WHERE status = 'running' ORDER BY started_at_us, id",
                &[],
            )
            .map_err(dbe("read running runs"))?;
        // Runs this handle owns that another handle finished: their locks can go.
        let running: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        self.runs.release_all_but(&running);
        let now = micros(self.clock.now());
        let mut failed = Vec::new();
        for row in rows {
            let (id, key, pid, host): (String, i32, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if self.runs.owns(&id) {
                continue;
            }
            if !owner_is_gone(tx, key)? {
                continue;
            }
            let error = format!(
                "the process that ran it (pid {pid} on {host}) died before it finished: its \
                 database session ended (crash, kill, or a lost connection) and released the \
                 run's lock"
            );
            tx.execute(
                "UPDATE afs_retrain_run SET status = 'failed', finished_at_us = $2, error = $3 \
                 WHERE id = $1",
                &[&id, &now, &error],
            )
            .map_err(dbe("mark a lost run failed"))?;
            tracing::warn!(run = %id, pid, host = %host, "marked a run whose owner is gone as failed");
            self.runs.release(&id);
            failed.push(id);
        }
        Ok(failed)
    }
}

impl RunStore for PgStore {
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun> {
        let mut owner = self.dedicated_connection()?;
        let owner_backend: i32 = owner
            .query_one("SELECT pg_backend_pid()", &[])
            .map_err(dbe("begin run"))?
            .get(0);
        let now = self.clock.now();
        let id = run.id.clone().unwrap_or_else(|| new_id(now));
        let begun = self.runs_transaction("begin run", |tx| {
            self.fail_lost_runs(tx)?;
            let busy = tx
                .query_opt(
                    "SELECT id, owner_pid, owner_host FROM afs_retrain_run \
                     WHERE status = 'running' LIMIT 1",
                    &[],
                )
                .map_err(dbe("check running runs"))?;
            if let Some(row) = busy {
                let (other, pid, host): (String, i64, String) =
                    (row.get(0), row.get(1), row.get(2));
                return Err(StoreError::Conflict {
                    reason: format!("retrain run {other} is already running (pid {pid} on {host})"),
                });
            }
            let used = tx
                .query_opt("SELECT 1 FROM afs_retrain_run WHERE id = $1", &[&id])
                .map_err(dbe("check run id"))?
                .is_some();
            if used {
                return Err(StoreError::Conflict {
                    reason: format!("retrain run id {id} is already used"),
                });
            }
            let pid = i64::from(std::process::id());
            let key: i32 = tx
                .query_one(
                    "INSERT INTO afs_retrain_run (id, started_at_us, status, trigger_type, \
                     trigger, run_dir, owner_pid, owner_host, owner_backend_pid) \
                     VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8) RETURNING lock_key",
                    &[
                        &id,
                        &micros(now),
                        &run.trigger_type,
                        &run.trigger,
                        &run.run_dir,
                        &pid,
                        &host_name(),
                        &owner_backend,
                    ],
                )
                .map_err(dbe("insert run"))?
                .get(0);
            // Owned before anyone can see the run running.
            let locked: bool = owner
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&RUN_LOCK_CLASS, &key],
                )
                .map_err(dbe("take the run's lock"))?
                .get(0);
            if !locked {
                return Err(StoreError::Conflict {
                    reason: format!(
                        "the lock of retrain run {id} (key {key}) is held by another session"
                    ),
                });
            }
            Ok(())
        });
        // On failure the dedicated connection is dropped here, releasing any lock it took.
        begun?;
        self.runs.keep(&id, owner);
        self.run(&id)
    }

    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()> {
        let n = i64::try_from(n_samples).unwrap_or(i64::MAX);
        let changed = self
            .conn()?
            .execute(
                "UPDATE afs_retrain_run SET dataset_path = $1, dataset_manifest = $2, \
                 n_samples = $3 WHERE id = $4 AND status = 'running'",
                &[&dataset_path, &manifest, &n, &id],
            )
            .map_err(dbe("record run dataset"))?;
        if changed == 0 {
            self.run(id)?;
            return Err(StoreError::run_not_running(id));
        }
        Ok(())
    }

    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun> {
        outcome.check_final()?;
        let now = micros(self.clock.now());
        let changed = self.runs_transaction("finish run", |tx| {
            tx.execute(
                "UPDATE afs_retrain_run SET status = $1, finished_at_us = $2, model_path = $3, \
                 metrics = $4, error = $5 WHERE id = $6 AND status = 'running'",
                &[
                    &outcome.status.as_str(),
                    &now,
                    &outcome.model_path,
                    &outcome.metrics,
                    &outcome.error,
                    &id,
                ],
            )
            .map_err(dbe("finish run"))
        })?;
        if changed == 0 {
            let run = self.run(id)?;
            return Err(StoreError::Conflict {
                reason: format!(
                    "retrain run {id} already finished as {}",
                    run.status.as_str()
                ),
            });
        }
        self.runs.release(id);
        self.run(id)
    }

    fn run(&self, id: &str) -> Result<RetrainRun> {
        self.conn()?
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM afs_retrain_run WHERE id = $1"),
                &[&id],
            )
            .map_err(dbe("read run"))?
            .map(|row| run_from_row(&row))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                what: "retrain run",
                id: id.to_string(),
            })
    }

    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()?
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM afs_retrain_run \
                     ORDER BY started_at_us DESC, id DESC LIMIT $1"
                ),
                &[&limit],
            )
            .map_err(dbe("list runs"))?
            .iter()
            .map(run_from_row)
            .collect()
    }

    fn count_runs(&self, status: RunStatus) -> Result<u64> {
        let row = self
            .conn()?
            .query_one(
                "SELECT count(*) FROM afs_retrain_run WHERE status = $1",
                &[&status.as_str()],
            )
            .map_err(dbe("count runs"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>> {
        self.conn()?
            .query_opt(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM afs_retrain_run WHERE status = $1 \
                     ORDER BY started_at_us DESC, id DESC LIMIT 1"
                ),
                &[&status.as_str()],
            )
            .map_err(dbe("read last run"))?
            .map(|row| run_from_row(&row))
            .transpose()
    }

    fn recover_stale_runs(&self) -> Result<Vec<String>> {
        self.runs_transaction("recover runs", |tx| self.fail_lost_runs(tx))
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()?
            .query_opt("SELECT value FROM afs_state WHERE key = $1", &[&key])
            .map_err(|e| db(format!("read state {key}"), e))?
            .map(|row| row.get(0)))
    }

    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()> {
        if entries.iter().any(|(key, _)| key.is_empty()) {
            return Err(StoreError::invalid("key", "must not be empty"));
        }
        let now = micros(self.clock.now());
        self.transaction("state write", |tx| {
            for (key, value) in entries {
                tx.execute(
                    "INSERT INTO afs_state (key, value, updated_at_us) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     updated_at_us = excluded.updated_at_us",
                    &[key, value, &now],
                )
                .map_err(|e| db(format!("write state {key}"), e))?;
            }
            Ok(())
        })
    }
}
