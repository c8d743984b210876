//! Group commit of single-record `log` calls, without a writer thread
//! ([`afs_store::group_commit`]): a caller queues its row; if nobody is committing it becomes
//! the leader and commits every row queued so far in one statement (one `INSERT ... unnest`
//! in autocommit, whose statement trigger appends the group's rollup contributions to the
//! pending deltas, one row per model, and every [`FOLD_EVERY`] folds them), then wakes the
//! callers whose rows it held. Nobody is answered before the transaction holding its row has
//! committed. A leader whose last group held several rows first waits (up to [`GATHER`])
//! for as many again.
//!
//! One leader commits at a time, so the leaders share one connection of their own (outside
//! the pool; `PgConfig::fast_log_commits`) with the insert prepared on it: a commit is one
//! round trip, and the server plans the insert once per connection rather than once per
//! statement. A connection idle for a while is checked before use (as the pool checks its
//! own), so a restarted server costs no logged call after a quiet spell.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use afs_store::group_commit::GroupCommit;
use afs_store::{Result, StoreError};

use crate::error::{db, is_retryable};
use crate::store::PgStore;
use crate::usage_rows::{insert_rows_prepared, prepare_insert, InsertRow};

/// Most rows one group transaction takes; bounds the latency of the first caller in a group.
const MAX_GROUP: usize = 1024;

/// How long a new leader waits for as many rows as its last group held
/// ([`GroupCommit::with_gather`]). A commit costs the server ~200 us of CPU whatever its size
/// (a statement, its trigger, the commit record) and a few microseconds per row, so bigger
/// groups are what make 4 threads faster than one. Measured with 4 threads logging 20,000
/// records into a server on the same 2 cores, alternating runs: without waiting
/// 8.3-9.4k records/s (~90-100 us of server CPU per record); waiting up to 100-400 us,
/// 10.2-12.9k (~65-95 us). Committing two groups at once on two connections was also tried:
/// 9.0-9.5k, with ~150 us of server CPU per record.
const GATHER: Duration = Duration::from_micros(300);

/// Locks `m`; a panic elsewhere while it was held left nothing half-done in it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The group commit of one store handle: the queue of rows waiting for a commit, and the
/// leaders' connection.
#[derive(Debug)]
pub(crate) struct LogWriter {
    /// Rows waiting for (or in) a group commit.
    group: GroupCommit<InsertRow>,
    /// The leaders' connection, opened by the first leader and again after it is lost.
    conn: Mutex<Option<LeaderConn>>,
}

impl Default for LogWriter {
    fn default() -> Self {
        LogWriter {
            // Followers sleep at once: the commit needs the server's CPU, and with the server on
            // the same 2 cores, yielding followers took it (one `bench --only postgres --quick`
            // on a loaded machine: 4 threads logged 5.6k records/s, 1 thread 6.3k).
            group: GroupCommit::new(MAX_GROUP)
                .with_follower_yields(0)
                .with_gather(GATHER),
            conn: Mutex::new(None),
        }
    }
}

/// A connection of the group commit's own, with the insert prepared on it.
struct LeaderConn {
    client: postgres::Client,
    insert: postgres::Statement,
    /// When it last answered.
    used: Instant,
    /// When it last folded the pending rollup deltas (or was opened).
    folded: Instant,
    /// When it last vacuumed the table of pending deltas (or was opened).
    vacuumed: Instant,
}

impl std::fmt::Debug for LeaderConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderConn")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

/// A leaders' connection idle for longer is checked (one empty query) before a commit.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How often the leaders' connection folds the pending rollup deltas (`afs_usage_pending`,
/// one row per group commit and model) into the minute and hour rows. Readers add the
/// pending deltas of the minutes they read, so this bounds what they scan: at 10k records/s
/// in groups of 4 over 3 models, up to ~3,000 rows. A fold of 1,500 deltas took ~3 ms of
/// server time (psql, dev cluster). Measured with 4 threads logging 20,000 records, three
/// runs each: folding every 250 ms 9.9-10.7k records/s, every 500 ms 10.6-11.9k, every
/// second 10.2-12.3k; upserting the rollup rows in every commit instead (schema 2)
/// 8.9-9.1k.
const FOLD_EVERY: Duration = Duration::from_millis(500);

/// How often the leaders' connection vacuums the table of pending deltas. Every fold
/// deletes its rows; without this the dead rows would pile up until autovacuum came by
/// (a minute or more) and readers' scans of the table would grow with them.
const VACUUM_EVERY: Duration = Duration::from_secs(2);

impl LeaderConn {
    fn open(store: &PgStore) -> Result<LeaderConn> {
        let mut client = store.connect_for_logging()?;
        let insert = prepare_insert(&mut client).map_err(|e| db("prepare the log's insert", e))?;
        let now = Instant::now();
        Ok(LeaderConn {
            client,
            insert,
            used: now,
            folded: now,
            vacuumed: now,
        })
    }

    /// Folds the pending rollup deltas into the rollup tables if [`FOLD_EVERY`] has passed
    /// since the last fold, and vacuums their table every [`VACUUM_EVERY`]. Runs before a
    /// group's insert, so a fold delays one group by its own cost (~1 ms, a few times a
    /// second). A failed fold is only logged: the deltas stay pending, and readers count
    /// them where they are.
    fn fold_if_due(&mut self) {
        if self.folded.elapsed() < FOLD_EVERY {
            return;
        }
        self.folded = Instant::now();
        if let Err(e) = self.client.simple_query("SELECT afs_usage_fold_pending()") {
            tracing::warn!(error = %e, "folding the pending rollup deltas failed; will retry");
            return;
        }
        if self.vacuumed.elapsed() >= VACUUM_EVERY {
            self.vacuumed = Instant::now();
            if let Err(e) = self
                .client
                .simple_query("VACUUM (SKIP_LOCKED) afs_usage_pending")
            {
                tracing::debug!(error = %e, "vacuuming the pending rollup deltas failed");
            }
        }
    }

    /// Whether this connection can take a commit: not known to be closed, and, after a quiet
    /// spell, answering.
    fn usable(&mut self) -> bool {
        if self.client.is_closed() {
            return false;
        }
        self.used.elapsed() < CHECK_AFTER_IDLE || self.client.simple_query("").is_ok()
    }
}

impl LogWriter {
    /// Logs one row through `store`; returns its id once a transaction holding it committed
    /// (see [`GroupCommit::log`]).
    pub(crate) fn log(&self, store: &PgStore, row: InsertRow) -> Result<String> {
        self.group
            .log(row, &mut |rows| self.commit_group(store, rows))
    }

    /// Commits `rows` in one transaction: one outcome per row, in order. If the group fails
    /// on something other than a lost server, each row is tried alone, so one bad row fails
    /// only its own caller.
    fn commit_group(&self, store: &PgStore, rows: Vec<InsertRow>) -> Vec<Result<String>> {
        match self.commit(store, &rows) {
            Ok(()) => rows.into_iter().map(|row| Ok(row.id)).collect(),
            Err(e) if rows.len() == 1 => vec![Err(e)],
            Err(e) if matches!(e, StoreError::Unavailable { .. }) => {
                rows.iter().map(|_| Err(copy_error(&e))).collect()
            }
            Err(_) => rows
                .into_iter()
                .map(|row| {
                    let one = std::slice::from_ref(&row);
                    self.commit(store, one).map(|()| row.id)
                })
                .collect(),
        }
    }

    /// One transaction inserting `rows`, on the leaders' connection.
    ///
    /// Tried again where nothing can have been committed: after a deadlock or serialisation
    /// failure, and when the server answered the insert by ending the session (it was
    /// stopped or restarted, or an administrator ended the connection: a statement aborted
    /// that way is rolled back), on a new connection after 0.1 s and 0.4 s. A connection
    /// that just went silent is not: the insert may have committed.
    fn commit(&self, store: &PgStore, rows: &[InsertRow]) -> Result<()> {
        let mut held = lock(&self.conn);
        let (mut attempt, mut ended) = (0, 0);
        loop {
            if !held.as_mut().is_some_and(LeaderConn::usable) {
                *held = Some(LeaderConn::open(store)?);
            }
            let Some(conn) = held.as_mut() else {
                return Err(StoreError::Io {
                    context: "log a record: no logging connection".into(),
                    source: std::io::Error::other("the logging connection was not kept"),
                });
            };
            conn.fold_if_due();
            attempt += 1;
            match insert_rows_prepared(&mut conn.client, &conn.insert, rows) {
                Ok(_) => {
                    conn.used = Instant::now();
                    return Ok(());
                }
                Err(e) if is_retryable(&e) && attempt <= 8 => {
                    std::thread::sleep(Duration::from_millis(attempt * 2));
                }
                Err(e) if session_ended(&e) && ended < 2 => {
                    ended += 1;
                    *held = None;
                    tracing::warn!(error = %e, "the server ended the logging connection; trying again");
                    std::thread::sleep(Duration::from_millis(100 * 4u64.pow(ended - 1)));
                }
                Err(e) => {
                    if conn.client.is_closed() || session_ended(&e) {
                        *held = None;
                    }
                    return Err(db("log a record", e));
                }
            }
        }
    }
}

/// Whether the server answered by ending the session (nothing of the statement committed).
fn session_ended(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|code| {
        [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
    })
}

fn copy_error(e: &StoreError) -> StoreError {
    let source = Box::new(std::io::Error::other(
        std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string()),
    ));
    match e {
        StoreError::Unavailable { context, .. } => StoreError::Unavailable {
            context: context.clone(),
            source,
        },
        StoreError::Database { context, .. } => StoreError::Database {
            context: context.clone(),
            source,
        },
        other => StoreError::Database {
            context: other.to_string(),
            source,
        },
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::sync::Arc;

    use afs_store::{NewUsage, SystemClock, UsageStore};

    use crate::testing::{cluster_url, TestDatabase};
    use crate::{PgConfig, PgStore};

    /// Threads logging one record at a time share transactions: the rows carry fewer
    /// distinct inserting transactions (`xmin`) than there are rows.
    #[test]
    fn concurrent_single_logs_are_committed_in_groups() {
        let Some(cluster) = cluster_url() else { return };
        let database = TestDatabase::create(&cluster);
        let store = PgStore::open(PgConfig::new(&database.url), Arc::new(SystemClock)).unwrap();
        const THREADS: usize = 8;
        const EACH: usize = 100;
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..EACH {
                        store
                            .log(NewUsage::new(format!("q {t} {i}"), "r", "m"))
                            .unwrap();
                    }
                });
            }
        });
        let row = store
            .conn()
            .unwrap()
            .query_one(
                "SELECT count(*), count(DISTINCT xmin::text) FROM afs_usage",
                &[],
            )
            .unwrap();
        let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
        println!("{rows} records in {transactions} transactions");
        assert_eq!(rows, (THREADS * EACH) as i64);
        assert!(
            transactions < rows,
            "{transactions} transactions for {rows} records"
        );
        drop(store);
    }
}
