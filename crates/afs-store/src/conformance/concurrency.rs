//! Concurrency checks: many threads and handles writing at once lose and duplicate nothing,
//! readers during writes see consistent results, racing experiment transitions and run
//! starts from two handles leave one winner, and two processes writing one database
//! ([`two_processes`], with its child side [`child_main`]).
//!
//! Nothing here depends on timing: threads start together at a barrier, children say when
//! they are ready on stdout and start writing when told on stdin, and every wait for a
//! child has a generous deadline (two minutes) only so that a hung child fails the check
//! instead of hanging it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Barrier;

use chrono::{DateTime, Duration, Utc};

use super::runs::new_run;
use super::usage::{assert_stats_close, scan_stats};
use super::{all_records, fresh, record, utc, Check, Factory, Fixture, TestStore};
use crate::{
    ErrorKind, EventFilter, EventKind, EventNote, ExperimentStatus, FeedbackValue, NewModelVersion,
    NewUsage, RecordFilter, RunStatus, StatsWindow, UsageStats, VersionStatus,
};

/// The checks of this area ([`two_processes`] is apart: it needs a way to start a process).
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "concurrency::many_threads_logging_lose_nothing",
            many_threads_logging_lose_nothing,
        ),
        (
            "concurrency::many_handles_writing_lose_nothing_and_duplicate_nothing",
            many_handles_writing_lose_nothing_and_duplicate_nothing,
        ),
        (
            "concurrency::readers_during_writes_see_consistent_results",
            readers_during_writes_see_consistent_results,
        ),
        (
            "concurrency::racing_transitions_from_two_handles_leave_one_winner",
            racing_transitions_from_two_handles_leave_one_winner,
        ),
        (
            "concurrency::racing_run_starts_from_two_handles_leave_one_run",
            racing_run_starts_from_two_handles_leave_one_run,
        ),
    ]
}

fn start() -> DateTime<Utc> {
    utc(2026, 3, 1, 10, 30, 0)
}

/// `n` handles on the fixture's database: its store first, then other handles when the
/// backend opens them, else the store again (its threads then share one handle).
fn handles(f: &Fixture, n: usize) -> (Vec<Box<dyn TestStore>>, bool) {
    let others: Vec<Box<dyn TestStore>> = (1..n).filter_map(|_| f.open_another()).collect();
    let several = !others.is_empty();
    (others, several)
}

/// The handle thread `i` of `n` uses: the fixture's store or one of `others`.
fn pick<'a>(f: &'a Fixture, others: &'a [Box<dyn TestStore>], i: usize) -> &'a dyn TestStore {
    match i {
        0 => f.store.as_ref(),
        _ if others.is_empty() => f.store.as_ref(),
        _ => others[(i - 1) % others.len()].as_ref(),
    }
}

fn many_threads_logging_lose_nothing(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let store: &dyn TestStore = f.store.as_ref();
    let ids: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                scope.spawn(move || {
                    (0..250)
                        .map(|i| {
                            if i % 50 == 0 {
                                store
                                    .log_batch(
                                        (0..10).map(|j| record(t * 10_000 + i * 100 + j)).collect(),
                                    )
                                    .unwrap()
                                    .remove(0)
                            } else {
                                store.log(record(t * 10_000 + i)).unwrap()
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = ids.into_iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8 * 250);
    assert_eq!(
        store.stats(&StatsWindow::default()).unwrap().total,
        8 * (245 + 5 * 10)
    );
    for id in all.iter().step_by(97) {
        store.get(id).unwrap();
    }
}

/// What writer `w` logs: groups of one record (logged with `log`) and of five (`log_batch`),
/// every query unique across writers and across processes.
fn writer_plan(w: usize, groups: usize) -> Vec<Vec<NewUsage>> {
    (0..groups)
        .map(|g| {
            let size = if g % 10 == 9 { 5 } else { 1 };
            (0..size)
                .map(|j| {
                    NewUsage::new(
                        format!("writer {w} group {g} record {j}"),
                        format!("response {w}/{g}/{j}"),
                        ["m1", "m2"][(w + g) % 2],
                    )
                })
                .collect()
        })
        .collect()
}

/// Logs a writer's plan through `store`; returns the ids in plan order.
fn write_plan(store: &dyn TestStore, plan: Vec<Vec<NewUsage>>) -> Vec<String> {
    let mut ids = Vec::new();
    for mut group in plan {
        if group.len() == 1 {
            ids.push(store.log(group.remove(0)).unwrap());
        } else {
            let n = group.len();
            let got = store.log_batch(group).unwrap();
            assert_eq!(got.len(), n, "log_batch returns one id per record");
            ids.extend(got);
        }
    }
    ids
}

/// Every planned query is in the log exactly once, under the id its write returned (when
/// known), nothing else is, and the statistics equal a scan of the log.
fn assert_log_is_exactly(
    store: &dyn TestStore,
    plans: &[Vec<Vec<NewUsage>>],
    ids: Option<&[String]>,
) {
    let records = all_records(store, &RecordFilter::default());
    let mut by_query: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &records {
        by_query.entry(&r.query).or_default().push(&r.id);
    }
    let want: Vec<&NewUsage> = plans.iter().flatten().flatten().collect();
    for new in &want {
        let found = by_query.get(new.query.as_str()).map_or(0, Vec::len);
        assert_eq!(found, 1, "{:?} is in the log {found} times", new.query);
    }
    assert_eq!(
        records.len(),
        want.len(),
        "the log holds exactly the records written"
    );
    let unique: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(unique.len(), records.len(), "record ids are unique");
    if let Some(ids) = ids {
        let returned: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(returned.len(), ids.len(), "returned ids are unique");
        assert_eq!(returned, unique, "the log's ids are the ids returned");
    }
    let total = store.stats(&StatsWindow::default()).unwrap();
    assert_stats_close(&total, &UsageStats::of_records(&records), "stats vs scan");
    let by_model = store.stats_by_model(&StatsWindow::default()).unwrap();
    let scanned = scan_stats(store, &StatsWindow::default());
    assert_eq!(
        by_model.keys().collect::<Vec<_>>(),
        scanned.keys().collect::<Vec<_>>()
    );
    for (model, s) in &scanned {
        assert_stats_close(&by_model[model], s, &format!("stats of {model} vs scan"));
    }
}

/// Four threads, each on its own handle when the backend opens several, log single records
/// and batches at once while the clock moves, and set feedback and quality on their own
/// records: every record is there once, with its writer's updates.
fn many_handles_writing_lose_nothing_and_duplicate_nothing(factory: &dyn Factory) {
    const WRITERS: usize = 4;
    const GROUPS: usize = 150;
    let f = fresh(factory, start());
    let (others, several) = handles(&f, WRITERS);
    println!(
        "    ({WRITERS} threads on {})",
        if several {
            "their own handles"
        } else {
            "one handle"
        }
    );
    let barrier = Barrier::new(WRITERS);
    let plans: Vec<_> = (0..WRITERS).map(|w| writer_plan(w, GROUPS)).collect();
    type Written = (Vec<String>, BTreeSet<String>, BTreeSet<String>);
    let results: Vec<Written> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = pick(&f, &others, w);
                let (barrier, clock, plan) = (&barrier, &f.clock, plans[w].clone());
                scope.spawn(move || {
                    barrier.wait();
                    let mut ids = Vec::new();
                    let (mut feedback, mut scored) = (BTreeSet::new(), BTreeSet::new());
                    for (g, group) in plan.into_iter().enumerate() {
                        ids.extend(write_plan(store, vec![group]));
                        if g % 25 == 24 {
                            let last = ids.last().unwrap().clone();
                            store
                                .record_feedback(&last, FeedbackValue::Positive, None)
                                .unwrap();
                            feedback.insert(last);
                            let middle = ids[ids.len() / 2].clone();
                            store.update_quality(&middle, 0.75).unwrap();
                            scored.insert(middle);
                        }
                        if w == 0 && g % 20 == 19 {
                            clock.advance(Duration::seconds(13));
                        }
                    }
                    (ids, feedback, scored)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ids: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    let store = f.store.as_ref();
    assert_log_is_exactly(store, &plans, Some(&ids));
    let stats = store.stats(&StatsWindow::default()).unwrap();
    let feedback: u64 = results.iter().map(|r| r.1.len() as u64).sum();
    let scored: u64 = results.iter().map(|r| r.2.len() as u64).sum();
    assert_eq!(
        (stats.with_feedback, stats.positive_feedback),
        (feedback, feedback),
        "every thread's feedback is kept"
    );
    assert_eq!(
        stats.n_quality, scored,
        "every thread's quality updates are kept"
    );
    for (w, (ids, with_feedback, with_quality)) in results.iter().enumerate() {
        for id in with_feedback {
            assert_eq!(
                store.get(id).unwrap().feedback,
                Some(FeedbackValue::Positive)
            );
        }
        for id in with_quality {
            assert_eq!(
                store.get(id).unwrap().quality_score,
                Some(0.75),
                "writer {w}"
            );
        }
        let planned: Vec<&NewUsage> = plans[w].iter().flatten().collect();
        assert_eq!(planned.len(), ids.len());
        for (id, new) in ids.iter().zip(planned).step_by(7) {
            assert_eq!(
                store.get(id).unwrap().query,
                new.query,
                "writer {w}: id of a write"
            );
        }
    }
    // Every handle reads the same log.
    for other in &others {
        assert_eq!(other.stats(&StatsWindow::default()).unwrap(), stats);
    }
}

/// Two writers log (the clock moving) while two readers read the statistics and stream the
/// log over and over: a reader's total never goes down, a stream holds at least the records
/// counted before it started and at most those counted after it ended, in time order with
/// no id twice; at the end the statistics equal a scan.
fn readers_during_writes_see_consistent_results(factory: &dyn Factory) {
    const WRITERS: usize = 2;
    const READERS: usize = 2;
    const GROUPS: usize = 250;
    let f = fresh(factory, start());
    let (others, _) = handles(&f, WRITERS + READERS);
    let barrier = Barrier::new(WRITERS + READERS);
    let writing = AtomicBool::new(true);
    let plans: Vec<_> = (0..WRITERS).map(|w| writer_plan(w, GROUPS)).collect();
    let reads: Vec<usize> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = pick(&f, &others, w);
                let (barrier, clock, plan) = (&barrier, &f.clock, plans[w].clone());
                scope.spawn(move || {
                    barrier.wait();
                    for (g, group) in plan.into_iter().enumerate() {
                        write_plan(store, vec![group]);
                        if g % 10 == 9 {
                            clock.advance(Duration::seconds(7));
                        }
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let store = pick(&f, &others, WRITERS + r);
                let (barrier, writing) = (&barrier, &writing);
                scope.spawn(move || {
                    barrier.wait();
                    let mut last = 0u64;
                    let mut last_quality = 0u64;
                    let mut rounds = 0;
                    loop {
                        // Read the flag first: a round that starts after the writers are
                        // done sees everything, and is the last.
                        let done = !writing.load(Ordering::SeqCst);
                        let before = store.stats(&StatsWindow::default()).unwrap().total;
                        assert!(before >= last, "reader {r}: total went from {last} to {before}");
                        let stream = all_records(store, &RecordFilter::default());
                        let after = store.stats(&StatsWindow::default()).unwrap().total;
                        let n = stream.len() as u64;
                        assert!(
                            before <= n && n <= after,
                            "reader {r}: a stream of {n} records between totals {before} and {after}"
                        );
                        let unique: BTreeSet<&str> =
                            stream.iter().map(|x| x.id.as_str()).collect();
                        assert_eq!(unique.len(), stream.len(), "reader {r}: an id twice");
                        assert!(
                            stream.windows(2).all(|p| p[0].timestamp <= p[1].timestamp),
                            "reader {r}: a stream out of time order"
                        );
                        let quality = store.count_quality_samples(None, None).unwrap();
                        assert!(quality >= last_quality);
                        (last, last_quality) = (after, quality);
                        rounds += 1;
                        if done {
                            return rounds;
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        writing.store(false, Ordering::SeqCst);
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    println!("    (reader rounds: {reads:?})");
    assert_log_is_exactly(f.store.as_ref(), &plans, None);
}

/// A store with champion `v1` and challenger `v2` running; returns the experiment's id.
fn deploy(store: &dyn TestStore) -> i64 {
    store
        .set_champion(
            &NewModelVersion::new("v1", "/m/v1"),
            &EventNote::reason("first"),
        )
        .unwrap();
    store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.1,
            7,
            &EventNote::reason("retrained"),
        )
        .unwrap()
        .id
}

/// Runs `a` and `b` at once (released together from a barrier) and returns their results.
fn race<A, B, T, U>(a: A, b: B) -> (T, U)
where
    A: FnOnce() -> T + Send,
    B: FnOnce() -> U + Send,
    T: Send,
    U: Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let ta = s.spawn(|| {
            barrier.wait();
            a()
        });
        let tb = s.spawn(|| {
            barrier.wait();
            b()
        });
        (ta.join().unwrap(), tb.join().unwrap())
    })
}

/// Exactly one of two results is `Ok`; the other is a `Conflict`.
fn one_wins<T, U>(a: &crate::Result<T>, b: &crate::Result<U>, what: &str) {
    assert!(
        a.is_ok() != b.is_ok(),
        "{what}: exactly one must win (first ok: {}, second ok: {})",
        a.is_ok(),
        b.is_ok()
    );
    let loser = match (a, b) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!(),
    };
    assert_eq!(loser.kind(), ErrorKind::Conflict, "{what}: {loser}");
}

/// One champion and at most one running experiment, whatever the races did.
fn assert_one_champion(store: &dyn TestStore, what: &str) {
    let champions = store
        .model_versions()
        .unwrap()
        .into_iter()
        .filter(|v| v.status == VersionStatus::Champion)
        .count();
    assert_eq!(champions, 1, "{what}: one champion");
    let running = store
        .experiments()
        .unwrap()
        .into_iter()
        .filter(|e| e.status == ExperimentStatus::Running)
        .count();
    assert!(running <= 1, "{what}: {running} running experiments");
    let challengers = store
        .model_versions()
        .unwrap()
        .into_iter()
        .filter(|v| v.status == VersionStatus::Challenger)
        .count();
    assert_eq!(
        challengers, running,
        "{what}: a challenger per running experiment"
    );
}

/// From two handles at once (one handle from two threads when the backend opens no
/// other): promote against rollback of one experiment, then two deploys: one wins each
/// race, the other gets a conflict, and one champion and one running experiment remain.
fn racing_transitions_from_two_handles_leave_one_winner(factory: &dyn Factory) {
    for round in 0..8 {
        let f = fresh(factory, start());
        let other = f.open_another();
        let a = f.store.as_ref();
        let b = other.as_deref().unwrap_or(a);
        let id = deploy(a);
        f.clock.advance(Duration::hours(1));
        let (promoted, rolled_back) = if round % 2 == 0 {
            race(
                || a.promote(id, &EventNote::reason("a")),
                || b.rollback(id, &EventNote::reason("b")),
            )
        } else {
            let (r, p) = race(
                || a.rollback(id, &EventNote::reason("a")),
                || b.promote(id, &EventNote::reason("b")),
            );
            (p, r)
        };
        let what = format!("round {round}: promote against rollback");
        one_wins(&promoted, &rolled_back, &what);
        let ends = a
            .events(&EventFilter {
                kinds: vec![EventKind::Promote, EventKind::Rollback],
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(ends.len(), 1, "{what}: one end event");
        let champion = a.champion().unwrap().unwrap().name;
        assert_eq!(
            champion,
            if promoted.is_ok() { "v2" } else { "v1" },
            "{what}"
        );
        assert_one_champion(a, &what);

        let (x, y) = race(
            || {
                a.deploy_challenger(
                    &NewModelVersion::new("x", "/m/x"),
                    0.2,
                    1,
                    &EventNote::default(),
                )
            },
            || {
                b.deploy_challenger(
                    &NewModelVersion::new("y", "/m/y"),
                    0.3,
                    2,
                    &EventNote::default(),
                )
            },
        );
        let what = format!("round {round}: two deploys");
        one_wins(&x, &y, &what);
        let running = b
            .running_experiment()
            .unwrap()
            .expect("one experiment runs");
        let winner = x.as_ref().or(y.as_ref()).unwrap();
        assert_eq!(running.id, winner.id, "{what}");
        assert_eq!(running.champion, champion, "{what}");
        assert_one_champion(b, &what);
        // The loser's name was not taken: it may be deployed after the winner ends.
        let loser = if x.is_ok() { "y" } else { "x" };
        a.rollback(running.id, &EventNote::default()).unwrap();
        a.deploy_challenger(
            &NewModelVersion::new(loser, "/m"),
            0.1,
            3,
            &EventNote::default(),
        )
        .unwrap();
        assert_one_champion(a, &what);
    }
}

/// From two handles at once: two run starts, one wins and the other gets a conflict.
fn racing_run_starts_from_two_handles_leave_one_run(factory: &dyn Factory) {
    for round in 0..8 {
        let f = fresh(factory, start());
        let other = f.open_another();
        let a = f.store.as_ref();
        let b = other.as_deref().unwrap_or(a);
        let (x, y) = race(
            || a.begin_run(new_run("manual")),
            || b.begin_run(new_run("schedule")),
        );
        one_wins(&x, &y, &format!("round {round}: two run starts"));
        let runs = a.runs(10).unwrap();
        assert_eq!(runs.len(), 1, "round {round}: one run recorded");
        assert_eq!(runs[0].status, RunStatus::Running);
        assert_eq!(&runs[0].id, &x.as_ref().or(y.as_ref()).unwrap().id);
    }
}

// ---------------------------------------------------------------------------------------
// Two processes.

/// Groups each writer process logs (one record, or five every tenth group).
const PROCESS_GROUPS: usize = 200;
/// The longest the parent waits for a child's next line or its exit.
const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A child process started by [`two_processes`]: its stdin and its stdout's lines.
struct Peer {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Peer {
    fn start(spawn: &dyn Fn(&str, &str) -> Command, locator: &str, role: &str) -> Peer {
        let mut command = spawn(locator, role);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the child for role {role}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            role: role.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// The rest of the first line that starts with `prefix` (other lines, such as the test
    /// harness's, are skipped).
    fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(CHILD_DEADLINE) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "child {}: no {prefix:?} line in {CHILD_DEADLINE:?}",
                        self.role
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "child {} ended ({status:?}) before printing {prefix:?}",
                        self.role
                    )
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin and waits for it to exit successfully.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child {} exited with {status}", self.role);
    }
}

/// Two processes on one database: two child processes and this one log records (single
/// and batched) at once, and afterwards every record is there exactly once and the
/// statistics equal a scan; then a run started by a live child blocks this process, and a
/// run whose owner died is recovered (by `recover_stale_runs`, and by the next
/// `begin_run`).
///
/// `spawn(locator, role)` returns the command that starts a child process which calls
/// [`child_main`] with the same `locator` and `role` (the suite sets its stdin and stdout);
/// a backend's test file usually re-runs its own test binary with the two in environment
/// variables. Needs [`super::Instance::locator`]; panics without it.
pub fn two_processes(factory: &dyn Factory, spawn: &dyn Fn(&str, &str) -> Command) {
    let f = fresh(factory, start());
    let locator = f
        .locator
        .clone()
        .expect("two_processes needs a backend whose Instance has a locator");

    // Writers: both children open the store and say READY, then all three write at once.
    let mut writers: Vec<Peer> = (1..=2)
        .map(|k| Peer::start(spawn, &locator, &format!("writer-{k}")))
        .collect();
    for w in &mut writers {
        w.expect("READY");
    }
    for w in &mut writers {
        w.say("GO");
    }
    let mine = write_plan(f.store.as_ref(), writer_plan(0, PROCESS_GROUPS));
    let plans: Vec<_> = (0..=2).map(|k| writer_plan(k, PROCESS_GROUPS)).collect();
    let expected: usize = plans[1].iter().map(Vec::len).sum();
    for mut w in writers {
        let done = w.expect("DONE");
        assert_eq!(done, expected.to_string(), "child {} wrote", w.role);
        w.finish();
    }
    assert_eq!(mine.len(), expected);
    assert_log_is_exactly(f.store.as_ref(), &plans, None);

    // Runs: a live child's run blocks this process; a dead owner's run is recovered.
    let f = fresh(factory, start());
    let locator = f.locator.clone().expect("a locator");
    let store = f.store.as_ref();
    let mut owner = Peer::start(spawn, &locator, "run-hold");
    let held = owner.expect("STARTED");
    let err = store.begin_run(new_run("manual")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains(&held), "{err}");
    assert!(
        store.recover_stale_runs().unwrap().is_empty(),
        "a live owner's run is not stale"
    );
    // The owner dies without finishing: its run is marked failed and no longer blocks.
    owner.child.kill().unwrap();
    owner.child.wait().unwrap();
    assert_eq!(store.recover_stale_runs().unwrap(), vec![held.clone()]);
    let dead = store.run(&held).unwrap();
    assert_eq!(dead.status, RunStatus::Failed);
    assert!(dead.error.unwrap().contains("died"));
    // A child that exits mid-run is recovered by the next begin_run directly.
    let mut crasher = Peer::start(spawn, &locator, "run-crash");
    let crashed = crasher.expect("STARTED");
    crasher.finish();
    let mine = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(store.run(&crashed).unwrap().status, RunStatus::Failed);
    assert_eq!(mine.status, RunStatus::Running);

    // Leases: a child's lease is not given here while it lives; killed with SIGKILL, it
    // loses the lease without anyone's help.
    let mut holder = Peer::start(spawn, &locator, "lease-hold");
    holder.expect("HELD");
    assert!(
        store.try_lease("conformance").unwrap().is_none(),
        "a lease held by another process was given"
    );
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    // The process is gone; the backend may take a moment to notice (a server ending the
    // session), never a lease timeout: a generous bound, polled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if store.try_lease("conformance").unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease of a process killed with SIGKILL was still held after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The child side of [`two_processes`]: opens the database at `locator` with `open` (with
/// any clock: the system clock is fine) and plays `role`, talking to the parent on stdout
/// and stdin. Roles: `writer-K` (say `READY`, wait for `GO`, log its records, say
/// `DONE <n>`), `run-hold` (start a run, say `STARTED <id>`, wait for stdin to close),
/// `run-crash` (start a run, say so, exit at once without finishing it) and `lease-hold`
/// (take the lease `conformance`, say `HELD`, hold it until killed or stdin closes). Returns when the
/// role is played; panics on an unknown role or a failed write.
pub fn child_main(locator: &str, role: &str, open: &dyn Fn(&str) -> Box<dyn TestStore>) {
    let wait_for_line = || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        line
    };
    if let Some(k) = role.strip_prefix("writer-") {
        let k: usize = k.parse().expect("writer-K");
        let store = open(locator);
        println!("READY");
        if wait_for_line().trim() != "GO" {
            return; // the parent gave up
        }
        let ids = write_plan(store.as_ref(), writer_plan(k, PROCESS_GROUPS));
        println!("DONE {}", ids.len());
        return;
    }
    let store = open(locator);
    match role {
        "run-hold" => {
            let run = store.begin_run(new_run("manual")).unwrap();
            println!("STARTED {}", run.id);
            wait_for_line();
        }
        "run-crash" => {
            let run = store.begin_run(new_run("manual")).unwrap();
            println!("STARTED {}", run.id);
            std::process::exit(0);
        }
        "lease-hold" => {
            let lease = store.try_lease("conformance").unwrap();
            assert!(lease.is_some(), "the lease was not free");
            println!("HELD");
            // Held until the parent kills this process.
            wait_for_line();
            drop(lease);
        }
        other => panic!("unknown conformance child role {other:?}"),
    }
}
