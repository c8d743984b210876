//! Group commit of single-record `log` calls, without a writer thread: a caller queues its
//! row; if nobody is committing it becomes the leader and commits every row queued so far
//! in one statement (one `INSERT ... unnest` in autocommit, sent with its types in one round
//! trip, whose statement trigger updates each rollup bucket once) on a logging connection
//! (`PgConfig::fast_log_commits`), then wakes the callers whose rows it held. Nobody is answered before the
//! transaction holding its row has committed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use afs_store::{Result, StoreError};

use crate::error::{db, is_retryable};
use crate::store::PgStore;
use crate::usage_rows::{insert_rows, InsertRow};

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
                commit_group(store, group);
            }
            shared = lock(&self.shared);
        }
    }
}

/// Commits `group` in one transaction and leaves each caller its outcome. If the group
/// fails on something other than a lost server, each row is tried alone, so one bad row
/// fails only its own caller.
fn commit_group(store: &PgStore, group: Vec<(InsertRow, Slot)>) {
    let (rows, slots): (Vec<InsertRow>, Vec<Slot>) = group.into_iter().unzip();
    match commit(store, &rows) {
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
                *lock(&slot) = Some(commit(store, one).map(|()| row.id));
            }
        }
    }
}

/// One transaction inserting `rows`.
fn commit(store: &PgStore, rows: &[InsertRow]) -> Result<()> {
    // One statement in autocommit: atomic, and one round trip (the insert is sent with its
    // types, unprepared). A deadlock or serialisation failure committed nothing: again.
    let mut conn = store.log_conn()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match insert_rows(&mut *conn, rows) {
            Ok(_) => return Ok(()),
            Err(e) if is_retryable(&e) && attempt <= 8 => {
                std::thread::sleep(std::time::Duration::from_millis(attempt * 2));
            }
            Err(e) => return Err(db("log a record", e)),
        }
    }
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
