//! Group commit without a writer thread ([`afs_store::group_commit`]): a caller queues its
//! row; if nobody is committing it becomes the leader and commits every row queued so far
//! in one transaction on the write connection, then wakes the callers whose rows that
//! transaction held. Nobody is answered before the transaction holding its row has
//! committed.
//!
//! Each transaction also adds its rows to the rollups, one upsert per model and bucket: a
//! group commit into the small table of pending deltas (one page), folded into the rollup
//! tables once a minute; a batch straight into the rollup tables. WAL checkpoints are taken
//! off the commit path by a background thread.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::migrations::{
    fold_sql, push_rollup_sums, recent_upsert_sql, rollup_upsert_sql, MINUTELY, N_ROLLUP_COLUMNS,
    ROLLUP_TABLES,
};
use super::rows::{top_rowid, InsertRow};
use super::{open_connection, SqliteConfig};
use afs_store::group_commit::GroupCommit;
use afs_store::{Result, StoreError};

/// Most rows one group transaction takes; bounds the latency of the first caller in a group.
const MAX_GROUP: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Writer {
    conn: Arc<Mutex<WriteConn>>,
    /// Single-record logs waiting for (or in) a group commit.
    group: GroupCommit<InsertRow>,
    checkpointer: Checkpointer,
    /// Writes other than logs ([`Writer::with_conn`]) waiting for the connection. A group
    /// commit's leader lets them in first ([`Writer::let_others_in`]).
    others_waiting: AtomicUsize,
}

/// Times a leader yields its CPU to other writes waiting for the connection.
const OTHERS_YIELDS: usize = 20;

/// The write connection, and the minute of the last fold of pending rollup deltas.
struct WriteConn {
    conn: Connection,
    folded_minute: Option<i64>,
}

/// Where a transaction adds its rows' rollup contributions.
enum Rollups<'a> {
    /// Straight into the rollup tables: batches, whose rows may span many buckets.
    Tables,
    /// Into the pending deltas, folding the closed buckets into the rollup tables when the
    /// newest row's minute differs from the last fold's (updated after a commit).
    Recent(&'a mut Option<i64>),
}

impl Writer {
    pub(crate) fn start(config: &SqliteConfig) -> Result<Writer> {
        let conn = open_connection(config)?;
        // Checkpoints run on a background thread (see `Checkpointer`). This connection only
        // checkpoints itself if that thread cannot keep up: the hook (which replaces SQLite's
        // auto-checkpoint) tells each commit how many frames the WAL holds.
        conn.wal_hook(Some(note_wal_frames));
        let conn = Arc::new(Mutex::new(WriteConn {
            conn,
            folded_minute: None,
        }));
        Ok(Writer {
            checkpointer: Checkpointer::start(config, conn.clone())?,
            conn,
            group: GroupCommit::new(MAX_GROUP),
            others_waiting: AtomicUsize::new(0),
        })
    }

    /// Logs one row; returns once a transaction holding it committed (see
    /// [`GroupCommit::log`]).
    pub(crate) fn log(&self, row: InsertRow) -> Result<String> {
        self.group.log(row, &mut |rows| {
            self.let_others_in();
            let mut write = lock(&self.conn);
            self.commit_group(&mut write, rows)
        })
    }

    /// Runs `f` on the write connection, between two group commits. A short write of this
    /// process (a look folding unit rows, a saved trigger state) then waits for the commit in
    /// progress on a mutex instead of polling SQLite's lock against this very writer.
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        self.others_waiting.fetch_add(1, Ordering::AcqRel);
        let mut write = lock(&self.conn);
        self.others_waiting.fetch_sub(1, Ordering::AcqRel);
        f(&mut write.conn)
    }

    /// Before a group commit takes the connection: while another write waits for it, yields
    /// (a bounded number of times) so that write goes first. The mutex is not fair: with
    /// threads logging at full speed, the next leader took it again before the waiting write
    /// (woken by the last unlock) ran, and an experiment check's decision or a trigger
    /// check's saved state waited many commits (`bench --only burst`, logging pattern:
    /// experiment checks of 3 ms in one run, 12 ms in another).
    fn let_others_in(&self) {
        for _ in 0..OTHERS_YIELDS {
            if self.others_waiting.load(Ordering::Acquire) == 0 {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Logs rows in one transaction of their own; all or nothing.
    pub(crate) fn log_batch(&self, rows: Vec<InsertRow>) -> Result<Vec<String>> {
        let mut write = lock(&self.conn);
        insert_all(&mut write.conn, rows.iter(), Rollups::Tables)?;
        self.checkpointer.wrote(rows.len());
        self.checkpointer.hold_bound(&write.conn);
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Commits `rows` in one transaction; if that fails, each row alone, so that only the
    /// caller of a bad row sees an error. One outcome per row, in order.
    fn commit_group(&self, write: &mut WriteConn, rows: Vec<InsertRow>) -> Vec<Result<String>> {
        let WriteConn {
            conn,
            folded_minute,
        } = write;
        let all = insert_all(conn, rows.iter(), Rollups::Recent(folded_minute));
        if all.is_ok() {
            self.checkpointer.wrote(rows.len());
            self.checkpointer.hold_bound(conn);
        }
        if all.is_ok() || rows.len() == 1 {
            return match all {
                Ok(()) => rows.into_iter().map(|row| Ok(row.id)).collect(),
                Err(e) => vec![Err(e)],
            };
        }
        // One row spoiled the group: commit each on its own so only that caller sees an error.
        rows.into_iter()
            .map(|row| {
                let result = insert_all(
                    conn,
                    std::iter::once(&row),
                    Rollups::Recent(&mut *folded_minute),
                )
                .map(|()| row.id);
                if result.is_ok() {
                    self.checkpointer.wrote(1);
                }
                result
            })
            .collect()
    }

    /// Stops the checkpointer thread.
    pub(crate) fn shutdown(self) {
        self.checkpointer.stop();
    }
}

/// Inserts rows and their rollup contributions in one immediate transaction.
fn insert_all<'r>(
    conn: &mut Connection,
    rows: impl Iterator<Item = &'r InsertRow>,
    rollups: Rollups<'_>,
) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| crate::db("begin write", e))?;
    // Per rollup table: (model, bucket) → summed contribution of this transaction's rows.
    let mut buckets: Vec<BTreeMap<(String, i64), [f64; N_ROLLUP_COLUMNS]>> =
        vec![BTreeMap::new(); ROLLUP_TABLES.len()];
    let mut newest_us: Option<i64> = None;
    let mut top = top_rowid(&tx).map_err(|e| crate::db("read the newest record", e))?;
    for row in rows {
        let ts_us = row
            .insert(&tx, &mut top)
            .map_err(|e| crate::db(format!("insert record {}", row.id), e))?;
        let model = row.model();
        newest_us = newest_us.max(Some(ts_us));
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
    static UPSERT_SQL: OnceLock<(Vec<String>, String)> = OnceLock::new();
    let (table_upserts, recent_upsert) = UPSERT_SQL.get_or_init(|| {
        (
            ROLLUP_TABLES
                .iter()
                .map(|t| rollup_upsert_sql(*t))
                .collect(),
            recent_upsert_sql(),
        )
    });
    for ((table, sql), sums_by_bucket) in ROLLUP_TABLES.iter().zip(table_upserts).zip(&buckets) {
        let recent = matches!(rollups, Rollups::Recent(_));
        let mut upsert = tx
            .prepare_cached(if recent { recent_upsert } else { sql })
            .map_err(|e| crate::db("update rollups", e))?;
        for ((model, bucket), sums) in sums_by_bucket {
            let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(N_ROLLUP_COLUMNS + 3);
            if recent {
                values.extend([table.level().into(), (*bucket).into(), model.clone().into()]);
            } else {
                values.extend([model.clone().into(), (*bucket).into()]);
            }
            push_rollup_sums(&mut values, sums);
            upsert
                .execute(rusqlite::params_from_iter(values))
                .map_err(|e| crate::db("update rollups", e))?;
        }
    }
    let mut fold_minute = None;
    if let (Rollups::Recent(folded), Some(newest)) = (&rollups, newest_us) {
        let minute = newest / MINUTELY.width_us;
        if **folded != Some(minute) {
            static FOLD_SQL: OnceLock<Vec<[String; 3]>> = OnceLock::new();
            let folds =
                FOLD_SQL.get_or_init(|| ROLLUP_TABLES.iter().map(|t| fold_sql(*t)).collect());
            for (table, statements) in ROLLUP_TABLES.iter().zip(folds) {
                let current = newest / table.width_us;
                for sql in statements {
                    tx.prepare_cached(sql)
                        .and_then(|mut stmt| stmt.execute([current]))
                        .map_err(|e| crate::db("fold rollup deltas", e))?;
                }
            }
            // The running experiment's unit rows changed in the last minute, too: a look
            // then folds at most a minute of single-record logging.
            super::units::fold_running(&tx)?;
            fold_minute = Some(minute);
        }
    }
    if matches!(rollups, Rollups::Tables) {
        // A batch (an import, a service's batch endpoint) folds the unit rows it changed in
        // its own transaction: a burst of any size then leaves the next look nothing to
        // fold, at a cost bounded by the batch (a few microseconds per unit it touched; none
        // without a running experiment).
        super::units::fold_running(&tx)?;
    }
    tx.commit().map_err(|e| crate::db("commit", e))?;
    if let (Rollups::Recent(folded), Some(minute)) = (rollups, fold_minute) {
        *folded = Some(minute);
    }
    Ok(())
}

thread_local! {
    /// Frames in the WAL after the last commit this thread made on the write connection,
    /// as SQLite reports them to [`note_wal_frames`]; other processes' frames included.
    static WAL_FRAMES: Cell<i64> = const { Cell::new(0) };
}

/// The write connection's WAL hook: runs on the committing thread after each commit.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames.into()));
    Ok(())
}

/// Runs WAL checkpoints on its own thread and connection, so the commit path neither copies
/// frames into the database nor syncs files.
///
/// A passive checkpoint copies the frames committed so far while commits go on. It can never
/// catch up with a busy writer, and the WAL is only rewound to its start when a checkpoint
/// copied every frame; so once the WAL holds [`REWIND_FRAMES`] frames, the thread holds this
/// process's write connection for a second pass over the few frames that arrived during the
/// first. The next commit then starts the WAL over: it stays under ~100 MB.
struct Checkpointer {
    pending: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// WAL frames (8 KiB pages, estimated by [`Checkpointer::wrote`]) written before the
/// checkpoint thread is woken (it also wakes every 500 ms): about 16 MB of WAL.
const CHECKPOINT_EVERY_FRAMES: u64 = 2048;

/// WAL size, in frames, from which a checkpoint finishes with commits held (64 MB at 8 KiB).
const REWIND_FRAMES: i64 = 8192;

/// WAL size, in frames as SQLite counts them after a commit, from which the committing
/// caller itself runs a checkpoint that rewinds it (80 MB at 8 KiB). The thread normally
/// keeps the WAL far below; on a machine so busy that the thread gets no CPU for a while,
/// this holds the bound.
pub(crate) const HARD_CAP_FRAMES: i64 = 10_240;

/// How long a commit that found the WAL at [`HARD_CAP_FRAMES`] waits for a checkpoint in
/// progress (or a reader) to let the WAL be rewound, before leaving it to the next commit.
const HOLD_BOUND_PATIENCE: Duration = Duration::from_secs(1);

impl Checkpointer {
    fn start(config: &SqliteConfig, writer: Arc<Mutex<WriteConn>>) -> Result<Checkpointer> {
        let conn = open_connection(config)?;
        let pending = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pending.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("afs-store-checkpoint".into())
            .spawn(move || {
                let passive = |conn: &Connection| -> rusqlite::Result<i64> {
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
                };
                while !s.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(500));
                    if p.swap(0, Ordering::AcqRel) == 0 {
                        continue;
                    }
                    match passive(&conn) {
                        Ok(frames) if frames >= REWIND_FRAMES => {
                            let _held = lock(&writer);
                            if let Err(e) = passive(&conn) {
                                tracing::debug!(error = %e, "checkpoint failed; will retry")
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "passive checkpoint failed; will retry")
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

    /// Counts a committed transaction of `rows` records: about three pages besides the rows'
    /// own (the id index, rollups, a leaf split now and then), and four ~1.5 KB rows a page.
    fn wrote(&self, rows: usize) {
        let frames = 3 + rows as u64 / 4;
        let before = self.pending.fetch_add(frames, Ordering::AcqRel);
        if before < CHECKPOINT_EVERY_FRAMES && before + frames >= CHECKPOINT_EVERY_FRAMES {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// After a commit on `conn` (the write connection, held by the caller): if the WAL holds
    /// [`HARD_CAP_FRAMES`] (the thread has not kept it short), checkpoints here so the next
    /// commit starts the WAL over; if that cannot finish now, the next commit tries again.
    fn hold_bound(&self, conn: &Connection) {
        if WAL_FRAMES.with(Cell::get) < HARD_CAP_FRAMES {
            return;
        }
        // A checkpoint already running (this process's thread, or another process's) makes
        // this one report "blocked" at once: wait for it, a little at a time.
        let give_up = std::time::Instant::now() + HOLD_BOUND_PATIENCE;
        loop {
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                row.get::<_, i64>(0)
            }) {
                Ok(0) => return WAL_FRAMES.with(|f| f.set(0)),
                Ok(_) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(_) => return tracing::debug!("the WAL could not be rewound yet; will retry"),
                Err(e) => return tracing::debug!(error = %e, "checkpoint failed; will retry"),
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
