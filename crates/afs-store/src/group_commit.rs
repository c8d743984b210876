//! Group commit without a writer thread, for backends whose single-record `log` commits
//! one transaction: a caller queues its row; if nobody is committing it becomes the
//! *leader* and commits every row queued so far (its own among them) in one transaction,
//! then wakes the callers whose rows that transaction held and steps down. Nobody is
//! answered before the transaction holding its row has committed.
//!
//! The backend says how a group is committed (the closure given to [`GroupCommit::log`]);
//! this module keeps the queue, elects the leader and hands the outcomes back.
//!
//! Two waits shape the groups on a busy machine (measured with `cargo xtask bench --only
//! log`, 4 threads on 2 cores):
//! - a new leader yields its CPU a few times to callers already inside `log` but not yet
//!   queued, so one commit carries several rows instead of the leader's alone;
//! - a follower yields its CPU a few times and looks again before it sleeps on the condition
//!   variable: a commit takes tens of microseconds, and a sleep costs two context switches
//!   and a wake-up that often comes after the next group has formed without the caller's
//!   next row. With sleeps alone the 4 threads gained ~1.2x over one; with the yields ~1.4x.
//!
//! A backend whose commit is slow next to a caller's turn-around (a database server) may
//! add a third ([`GroupCommit::with_gather`]): a new leader waits, up to a bound, until as
//! many rows are queued as its last group held. Without it, the callers of one group are
//! answered while the next group is already forming, and miss it: 4 threads logging into
//! PostgreSQL alternated groups of about two rows; with it they commit four at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Result;

/// Times a new leader yields its CPU to callers inside `log` but not queued yet.
const LEADER_YIELDS: usize = 3;

/// Times a follower yields its CPU while the leader commits, before it sleeps until woken,
/// unless the backend says otherwise ([`GroupCommit::with_follower_yields`]).
const FOLLOWER_YIELDS: usize = 10;

/// Where a queued row's outcome is left for its caller: the record's id, or the error.
type Slot = Arc<Mutex<Option<Result<String>>>>;

/// Locks `m`; a panic elsewhere while it was held left nothing half-done in it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The queue of rows of type `R` waiting for a commit, shared by the callers of one store.
#[derive(Debug)]
pub struct GroupCommit<R> {
    /// The queue and the leader flag.
    shared: Mutex<Shared<R>>,
    /// Signalled when a leader steps down (its group committed or failed).
    committed: Condvar,
    /// Callers inside [`GroupCommit::log`]: queuing, waiting, leading or returning.
    inside: AtomicUsize,
    /// Most rows one group takes; bounds the latency of the first caller in a group.
    max_group: usize,
    /// Times a follower yields its CPU before it sleeps.
    follower_yields: usize,
    /// How long a new leader may wait for as many rows as the last group held.
    gather: Duration,
}

/// Rows waiting for a commit, and whether a caller is committing (the leader).
#[derive(Debug)]
struct Shared<R> {
    /// Rows not taken by a leader yet, each with its caller's slot.
    queue: Vec<(R, Slot)>,
    /// Whether a caller is committing a group now.
    leader: bool,
    /// Rows of the last group a leader took.
    last_group: usize,
}

/// Steps the leader down (and wakes the others) however its commit ended, a panic included.
struct StepDown<'a, R>(&'a GroupCommit<R>);

impl<R> Drop for StepDown<'_, R> {
    fn drop(&mut self) {
        lock(&self.0.shared).leader = false;
        self.0.committed.notify_all();
    }
}

impl<R> GroupCommit<R> {
    /// An empty queue whose groups take at most `max_group` rows (at least 1).
    pub fn new(max_group: usize) -> Self {
        GroupCommit {
            shared: Mutex::new(Shared {
                queue: Vec::new(),
                leader: false,
                last_group: 0,
            }),
            committed: Condvar::new(),
            inside: AtomicUsize::new(0),
            max_group: max_group.max(1),
            follower_yields: FOLLOWER_YIELDS,
            gather: Duration::ZERO,
        }
    }

    /// A new leader whose last group held several rows waits up to `gather` (yielding its
    /// CPU) until the queue holds as many again, so that the callers just answered join the
    /// next commit rather than the one after (0, the default: it does not wait). For a
    /// backend whose commit costs far more than a caller's turn-around (a database server's
    /// round trip and statement against a few microseconds); a lone caller never waits, and
    /// a group smaller than the last one ends the waiting until concurrency is back.
    pub fn with_gather(mut self, gather: Duration) -> Self {
        self.gather = gather;
        self
    }

    /// Followers yield their CPU `n` times before they sleep (0: they sleep at once). A
    /// backend whose commit needs this machine's CPU (a database server on the same host)
    /// may want fewer yields than one that commits in-process.
    pub fn with_follower_yields(mut self, n: usize) -> Self {
        self.follower_yields = n;
        self
    }

    /// Logs `row`; returns its outcome once a transaction holding it has committed (or
    /// failed).
    ///
    /// The caller queues its row. If another caller is committing, it waits to be woken
    /// after that commit; otherwise it becomes the leader and calls `commit` with the rows
    /// queued so far (oldest first), which must commit them and return one outcome per row,
    /// in the same order (typically: all in one transaction, and each alone if that fails,
    /// so one bad row fails only its own caller). A leader whose own row was not in its
    /// group (the queue held more than a group) leads again.
    pub fn log(
        &self,
        row: R,
        commit: &mut dyn FnMut(Vec<R>) -> Vec<Result<String>>,
    ) -> Result<String> {
        let slot: Slot = Arc::new(Mutex::new(None));
        let _inside = Inside::enter(&self.inside);
        lock(&self.shared).queue.push((row, slot.clone()));
        self.wait_or_lead(&slot, commit)
    }

    /// Waits for (or leads) the commit of a row already queued under `slot`.
    fn wait_or_lead(
        &self,
        slot: &Slot,
        commit: &mut dyn FnMut(Vec<R>) -> Vec<Result<String>>,
    ) -> Result<String> {
        let mut shared = lock(&self.shared);
        loop {
            if let Some(result) = lock(slot).take() {
                return result;
            }
            if !shared.leader {
                shared.leader = true;
                for _ in 0..LEADER_YIELDS {
                    if shared.queue.len() >= self.inside.load(Ordering::Acquire) {
                        break;
                    }
                    drop(shared);
                    std::thread::yield_now();
                    shared = lock(&self.shared);
                }
                if shared.last_group > 1 && !self.gather.is_zero() {
                    let want = shared.last_group.min(self.max_group);
                    let deadline = Instant::now() + self.gather;
                    while shared.queue.len() < want && Instant::now() < deadline {
                        drop(shared);
                        std::thread::yield_now();
                        shared = lock(&self.shared);
                    }
                }
                let take = shared.queue.len().min(self.max_group);
                shared.last_group = take;
                let group: Vec<(R, Slot)> = shared.queue.drain(..take).collect();
                drop(shared);
                {
                    let _step_down = StepDown(self);
                    Self::lead(group, commit);
                }
                shared = lock(&self.shared);
                continue;
            }
            drop(shared);
            for _ in 0..self.follower_yields {
                if lock(slot).is_some() {
                    break;
                }
                std::thread::yield_now();
            }
            shared = lock(&self.shared);
            if lock(slot).is_some() || !shared.leader {
                continue;
            }
            shared = self
                .committed
                .wait(shared)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Commits `group` and leaves each caller its outcome. A row `commit` gave no outcome
    /// (it returned too few, or panicked) fails with an error, so that its caller never
    /// waits forever.
    fn lead(group: Vec<(R, Slot)>, commit: &mut dyn FnMut(Vec<R>) -> Vec<Result<String>>) {
        let (rows, slots): (Vec<R>, Vec<Slot>) = group.into_iter().unzip();
        let slots = Unanswered(slots);
        for (slot, outcome) in slots.0.iter().zip(commit(rows)) {
            *lock(slot) = Some(outcome);
        }
    }
}

/// The slots of a group being committed; those still empty when it is dropped (a commit
/// that returned too few outcomes, or panicked) get an error.
struct Unanswered(Vec<Slot>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        for slot in &self.0 {
            let mut slot = lock(slot);
            if slot.is_none() {
                *slot = Some(Err(crate::StoreError::Io {
                    context: "log a record".into(),
                    source: std::io::Error::other(
                        "the commit of this record's group ended without an outcome for it",
                    ),
                }));
            }
        }
    }
}

/// Counts a caller inside [`GroupCommit::log`] until it returns or unwinds.
struct Inside<'a>(&'a AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Inside(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    #[test]
    fn every_caller_gets_its_own_outcome_and_groups_form_under_concurrency() {
        // 4 threads, each logging 500 rows one at a time; a commit takes 50 us, during which
        // the others queue: groups must form, and every row must come back to its caller.
        let group = GroupCommit::<u64>::new(8);
        let sizes = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let (group, sizes) = (&group, &sizes);
                scope.spawn(move || {
                    for i in 0..500u64 {
                        let row = t * 1_000 + i;
                        let mut commit = |rows: Vec<u64>| {
                            lock(sizes).push(rows.len());
                            std::thread::sleep(std::time::Duration::from_micros(50));
                            rows.iter()
                                .map(|r| {
                                    if r % 7 == 0 {
                                        Err(StoreError::invalid("row", format!("{r} refused")))
                                    } else {
                                        Ok(r.to_string())
                                    }
                                })
                                .collect()
                        };
                        let outcome = group.log(row, &mut commit);
                        if row % 7 == 0 {
                            assert!(outcome
                                .unwrap_err()
                                .to_string()
                                .contains(&format!("{row} refused")));
                        } else {
                            assert_eq!(outcome.unwrap(), row.to_string());
                        }
                    }
                });
            }
        });
        let sizes = lock(&sizes);
        assert_eq!(
            sizes.iter().sum::<usize>(),
            2_000,
            "every row committed once"
        );
        assert!(sizes.iter().all(|&n| (1..=8).contains(&n)));
        assert!(
            sizes.iter().any(|&n| n > 1),
            "no group held more than one row"
        );
    }

    /// A group commit gathering up to `gather` whose last group held `n` rows.
    fn after_a_group_of(n: usize, gather: Duration) -> GroupCommit<u64> {
        let group = GroupCommit::<u64>::new(8).with_gather(gather);
        lock(&group.shared).last_group = n;
        group
    }

    #[test]
    fn a_gathering_leader_waits_for_the_callers_of_the_last_group() {
        // The last group held 3 rows; its two other callers come back 100 ms after this
        // leader (a slow wake-up on a busy machine). Without gathering, the leader, alone
        // inside, would commit its row by itself at once.
        let group = after_a_group_of(3, Duration::from_secs(10));
        let sizes = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..3u64 {
                let (group, sizes) = (&group, &sizes);
                scope.spawn(move || {
                    if t > 0 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let mut commit = |rows: Vec<u64>| {
                        lock(sizes).push(rows.len());
                        rows.iter().map(|r| Ok(r.to_string())).collect()
                    };
                    assert_eq!(group.log(t, &mut commit).unwrap(), t.to_string());
                });
            }
        });
        assert_eq!(*lock(&sizes), vec![3]);
    }

    #[test]
    fn a_gathering_leader_commits_what_it_has_when_the_bound_passes() {
        let group = after_a_group_of(3, Duration::from_millis(50));
        let mut sizes = Vec::new();
        let started = Instant::now();
        let mut commit = |rows: Vec<u64>| {
            sizes.push(rows.len());
            rows.iter().map(|r| Ok(r.to_string())).collect()
        };
        assert_eq!(group.log(7, &mut commit).unwrap(), "7");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(sizes, vec![1]);
        // Its last group held one row: the next leader does not wait.
        assert_eq!(lock(&group.shared).last_group, 1);
    }

    #[test]
    fn a_commit_that_panics_steps_its_leader_down() {
        let group = GroupCommit::<u32>::new(4);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.log(1, &mut |_rows| panic!("the commit failed"))
        }));
        assert!(panicked.is_err());
        let mut commit = |rows: Vec<u32>| rows.iter().map(|r| Ok(r.to_string())).collect();
        assert_eq!(group.log(2, &mut commit).unwrap(), "2");
    }

    #[test]
    fn a_commit_that_returns_too_few_outcomes_fails_the_rest() {
        let group = GroupCommit::<u32>::new(4);
        let mut commit = |_rows: Vec<u32>| Vec::new();
        let err = group.log(1, &mut commit).unwrap_err();
        assert!(err.to_string().contains("without an outcome"), "{err}");
    }
}
