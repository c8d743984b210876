//! Group commit without a writer thread: a caller queues its row; if nobody is committing
//! it becomes the leader and commits every row queued so far in one transaction, then wakes
//! the callers whose rows that transaction held. Nobody is answered before the transaction
//! holding its row has committed.
//!
//! Each transaction also adds its rows to the hourly rollups, one upsert per model and hour.
//! WAL checkpoints are taken off the commit path by a background thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::migrations::{
    rollup_column_is_real, rollup_upsert_sql, N_ROLLUP_COLUMNS, ROLLUP_TABLES,
};
use super::rows::InsertRow;
use super::{open_connection, SqliteConfig};
use crate::error::{Result, StoreError};

/// Most rows one group transaction takes; bounds the latency of the first caller in a group.
const MAX_GROUP: usize = 4096;

/// Where a queued row's outcome is left for its caller.
type Slot = Arc<Mutex<Option<Result<String>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Writer {
    conn: Mutex<Connection>,
    shared: Mutex<Shared>,
    committed: Condvar,
    checkpointer: Checkpointer,
}

/// Rows waiting for a commit, and whether a caller is committing (the leader).
struct Shared {
    queue: Vec<(InsertRow, Slot)>,
    leader: bool,
}

impl Writer {
    pub(crate) fn start(config: &SqliteConfig) -> Result<Writer> {
        let conn = open_connection(config)?;
        // The background thread copies WAL frames into the database as they come, off the
        // commit path. It can never finish while commits keep arriving, and the WAL is only
        // rewound from its start once a checkpoint finished; so this connection still
        // checkpoints itself when the WAL reaches ~64 MB (8 KiB pages): by then nearly every
        // frame is copied already, the checkpoint completes quickly, and the next commit
        // starts the WAL over instead of growing it without bound.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 8000")
            .map_err(|e| StoreError::db("configure the write connection", e))?;
        Ok(Writer {
            conn: Mutex::new(conn),
            shared: Mutex::new(Shared {
                queue: Vec::new(),
                leader: false,
            }),
            committed: Condvar::new(),
            checkpointer: Checkpointer::start(config)?,
        })
    }

    /// Logs one row; returns once a transaction holding it committed.
    ///
    /// The caller queues its row. If another caller is committing, it waits to be woken
    /// after that commit; otherwise it becomes the leader, commits everything queued so
    /// far (its own row included) in one transaction, wakes the others and steps down.
    pub(crate) fn log(&self, row: InsertRow) -> Result<String> {
        let slot: Slot = Arc::new(Mutex::new(None));
        lock(&self.shared).queue.push((row, slot.clone()));
        self.wait_or_lead(slot)
    }

    /// Waits for (or leads) the commit of a row already queued under `slot`.
    fn wait_or_lead(&self, slot: Slot) -> Result<String> {
        let mut shared = lock(&self.shared);
        loop {
            if let Some(result) = lock(&slot).take() {
                return result;
            }
            if !shared.leader {
                shared.leader = true;
                let n = shared.queue.len().min(MAX_GROUP);
                let group: Vec<(InsertRow, Slot)> = shared.queue.drain(..n).collect();
                drop(shared);
                {
                    let mut conn = lock(&self.conn);
                    self.commit_group(&mut conn, group);
                }
                shared = lock(&self.shared);
                shared.leader = false;
                self.committed.notify_all();
                continue;
            }
            shared = self
                .committed
                .wait(shared)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Logs rows in one transaction of their own; all or nothing.
    pub(crate) fn log_batch(&self, rows: Vec<InsertRow>) -> Result<Vec<String>> {
        let mut conn = lock(&self.conn);
        insert_all(&mut conn, rows.iter())?;
        self.checkpointer.wrote(rows.len());
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    fn commit_group(&self, conn: &mut Connection, group: Vec<(InsertRow, Slot)>) {
        if group.is_empty() {
            return;
        }
        let all = insert_all(conn, group.iter().map(|(row, _)| row));
        if all.is_ok() || group.len() == 1 {
            let n = group.len();
            let failure = all.err().map(|e| e.to_string());
            for (row, slot) in group {
                *lock(&slot) = Some(match &failure {
                    None => Ok(row.id),
                    Some(message) => Err(StoreError::db(
                        "log record",
                        std::io::Error::other(message.clone()),
                    )),
                });
            }
            if failure.is_none() {
                self.checkpointer.wrote(n);
            }
            return;
        }
        // One row spoiled the group: commit each on its own so only that caller sees an error.
        for (row, slot) in group {
            let result = insert_all(conn, std::iter::once(&row)).map(|()| row.id);
            if result.is_ok() {
                self.checkpointer.wrote(1);
            }
            *lock(&slot) = Some(result);
        }
    }

    /// Stops the checkpointer thread.
    pub(crate) fn shutdown(self) {
        self.checkpointer.stop();
    }
}

/// Inserts rows and their rollup contributions in one immediate transaction.
fn insert_all<'r>(conn: &mut Connection, rows: impl Iterator<Item = &'r InsertRow>) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::db("begin write", e))?;
    // Per rollup table: (model, bucket) → summed contribution of this transaction's rows.
    let mut buckets: Vec<BTreeMap<(String, i64), [f64; N_ROLLUP_COLUMNS]>> =
        vec![BTreeMap::new(); ROLLUP_TABLES.len()];
    for row in rows {
        row.insert(&tx)
            .map_err(|e| StoreError::db(format!("insert record {}", row.id), e))?;
        let (model, ts_us) = row.bucket();
        let delta = row.rollup_delta();
        for (table, sums_by_bucket) in ROLLUP_TABLES.iter().zip(buckets.iter_mut()) {
            let sums = sums_by_bucket
                .entry((model.to_string(), ts_us / table.width_us))
                .or_insert([0.0; N_ROLLUP_COLUMNS]);
            for (sum, d) in sums.iter_mut().zip(delta) {
                *sum += d;
            }
        }
    }
    static UPSERT_SQL: OnceLock<Vec<String>> = OnceLock::new();
    let upsert_sql = UPSERT_SQL.get_or_init(|| {
        ROLLUP_TABLES
            .iter()
            .map(|t| rollup_upsert_sql(*t))
            .collect()
    });
    for (sql, sums_by_bucket) in upsert_sql.iter().zip(&buckets) {
        let mut upsert = tx
            .prepare_cached(sql)
            .map_err(|e| StoreError::db("update rollups", e))?;
        for ((model, bucket), sums) in sums_by_bucket {
            let mut values: Vec<rusqlite::types::Value> =
                vec![model.clone().into(), (*bucket).into()];
            for (i, v) in sums.iter().enumerate() {
                values.push(if rollup_column_is_real(i) {
                    (*v).into()
                } else {
                    (v.round() as i64).into()
                });
            }
            upsert
                .execute(rusqlite::params_from_iter(values))
                .map_err(|e| StoreError::db("update rollups", e))?;
        }
    }
    tx.commit().map_err(|e| StoreError::db("commit", e))
}

/// Runs passive WAL checkpoints on its own thread and connection once enough rows were
/// written, so commits never wait for a checkpoint.
struct Checkpointer {
    pending: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Rows written between checkpoints (~4-8 MB of WAL for typical records).
const CHECKPOINT_EVERY_ROWS: u64 = 4000;

impl Checkpointer {
    fn start(config: &SqliteConfig) -> Result<Checkpointer> {
        let conn = open_connection(config)?;
        let pending = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pending.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("afs-store-checkpoint".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(500));
                    if p.load(Ordering::Acquire) > 0 {
                        p.store(0, Ordering::Release);
                        if let Err(e) =
                            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        {
                            tracing::debug!(error = %e, "passive checkpoint failed; will retry");
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                context: "start the checkpoint thread".into(),
                source: e,
            })?;
        Ok(Checkpointer {
            pending,
            stop,
            thread: Some(thread),
        })
    }

    fn wrote(&self, rows: usize) {
        let before = self.pending.fetch_add(rows as u64, Ordering::AcqRel);
        if before + rows as u64 >= CHECKPOINT_EVERY_ROWS {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
