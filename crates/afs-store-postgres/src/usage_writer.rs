//! Group commit of single-record `log` calls, without a writer thread: a caller queues its
//! row; if nobody is committing it becomes the leader and commits every row queued so far
//! in one statement (one `INSERT ... unnest` in autocommit, whose statement trigger updates
//! each rollup bucket once), then wakes the callers whose rows it held. Nobody is answered
//! before the transaction holding its row has committed.
//!
//! One leader commits at a time, so the leaders share one connection of their own (outside
//! the pool; `PgConfig::fast_log_commits`) with the insert prepared on it: a commit is one
//! round trip, and the server plans the insert once per connection rather than once per
//! statement. A connection idle for a while is checked before use (as the pool checks its
//! own), so a restarted server costs no logged call after a quiet spell.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use afs_store::{Result, StoreError};

use crate::error::{db, is_retryable};
use crate::store::PgStore;
use crate::usage_rows::{insert_rows_prepared, prepare_insert, InsertRow};

/// Most rows one group transaction takes; bounds the latency of the first caller in a group.
const MAX_GROUP: usize = 1024;
/// Times a new leader yields its CPU to callers that are inside `log` but not queued yet.
const YIELDS: usize = 3;

/// Where a queued row's outcome is left for its caller.
type Slot = Arc<Mutex<Option<Result<String>>>>;

/// Locks `m`; a panic elsewhere while it was held left nothing half-done in it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The queue of rows waiting for a commit, shared by the callers of one store handle.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// The queue and the leader flag.
    shared: Mutex<Shared>,
    /// Signalled when a leader steps down (its group committed or failed).
    committed: Condvar,
    /// Callers inside [`GroupCommit::log`]: queuing, waiting, leading or returning.
    inside: AtomicUsize,
    /// The leaders' connection, opened by the first leader and again after it is lost.
    conn: Mutex<Option<LeaderConn>>,
}

/// A connection of the group commit's own, with the insert prepared on it.
struct LeaderConn {
    client: postgres::Client,
    insert: postgres::Statement,
    /// When it last answered.
    used: Instant,
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

impl LeaderConn {
    fn open(store: &PgStore) -> Result<LeaderConn> {
        let mut client = store.connect_for_logging()?;
        let insert = prepare_insert(&mut client).map_err(|e| db("prepare the log's insert", e))?;
        Ok(LeaderConn {
            client,
            insert,
            used: Instant::now(),
        })
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

/// Rows waiting for a commit, and whether a caller is committing (the leader).
#[derive(Debug, Default)]
struct Shared {
    /// Rows not taken by a leader yet, each with its caller's slot.
    queue: Vec<(InsertRow, Slot)>,
    /// Whether a caller is committing a group now.
    leader: bool,
}

/// Steps the leader down (and wakes the others) however its commit ended, a panic included.
struct StepDown<'a>(&'a GroupCommit);

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        lock(&self.0.shared).leader = false;
        self.0.committed.notify_all();
    }
}

impl GroupCommit {
    /// Logs one row through `store`; returns its id once a transaction holding it committed.
    pub(crate) fn log(&self, store: &PgStore, row: InsertRow) -> Result<String> {
        let slot: Slot = Arc::new(Mutex::new(None));
        self.inside.fetch_add(1, Ordering::AcqRel);
        lock(&self.shared).queue.push((row, slot.clone()));
        let result = self.wait_or_lead(store, &slot);
        self.inside.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Waits for (or leads) the commit of a row already queued under `slot`.
    fn wait_or_lead(&self, store: &PgStore, slot: &Slot) -> Result<String> {
        let mut shared = lock(&self.shared);
        loop {
            if let Some(result) = lock(slot).take() {
                return result;
            }
            if shared.leader {
                shared = self
                    .committed
                    .wait(shared)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            shared.leader = true;
            // Callers on their way in: let them queue, so one commit carries several rows.
            for _ in 0..YIELDS {
                if shared.queue.len() >= self.inside.load(Ordering::Acquire) {
                    break;
                }
                drop(shared);
                std::thread::yield_now();
                shared = lock(&self.shared);
            }
            let take = shared.queue.len().min(MAX_GROUP);
            let group: Vec<(InsertRow, Slot)> = shared.queue.drain(..take).collect();
            drop(shared);
            {
                let _step_down = StepDown(self);
                self.commit_group(store, group);
            }
            shared = lock(&self.shared);
        }
    }
}

impl GroupCommit {
    /// Commits `group` in one transaction and leaves each caller its outcome. If the group
    /// fails on something other than a lost server, each row is tried alone, so one bad row
    /// fails only its own caller.
    fn commit_group(&self, store: &PgStore, group: Vec<(InsertRow, Slot)>) {
        let (rows, slots): (Vec<InsertRow>, Vec<Slot>) = group.into_iter().unzip();
        match self.commit(store, &rows) {
            Ok(()) => {
                for (row, slot) in rows.into_iter().zip(slots) {
                    *lock(&slot) = Some(Ok(row.id));
                }
            }
            Err(e) if rows.len() == 1 || matches!(e, StoreError::Unavailable { .. }) => {
                for slot in slots {
                    *lock(&slot) = Some(Err(copy_error(&e)));
                }
            }
            Err(_) => {
                for (row, slot) in rows.into_iter().zip(slots) {
                    let one = std::slice::from_ref(&row);
                    *lock(&slot) = Some(self.commit(store, one).map(|()| row.id));
                }
            }
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
