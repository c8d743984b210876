//! Lease checks: one holder at a time across handles and threads, released on drop (the
//! two-process part, a holder killed with SIGKILL, is in [`super::two_processes`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use super::{fresh, utc, Check, Factory};

/// The checks of this area.
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "leases::one_holder_at_a_time_released_on_drop",
            one_holder_at_a_time_released_on_drop,
        ),
        (
            "leases::racing_threads_and_handles_get_one_lease",
            racing_threads_and_handles_get_one_lease,
        ),
    ]
}

fn one_holder_at_a_time_released_on_drop(factory: &dyn Factory) {
    let f = fresh(factory, utc(2026, 3, 1, 10, 0, 0));
    let store = f.store.as_ref();
    let lease = store
        .try_lease("loop")
        .unwrap()
        .expect("a free lease is given");
    assert_eq!(lease.name(), "loop");
    assert!(
        store.try_lease("loop").unwrap().is_none(),
        "a held lease was given twice by one handle"
    );
    if let Some(other) = f.open_another() {
        assert!(
            other.try_lease("loop").unwrap().is_none(),
            "a held lease was given to another handle"
        );
        // Another name is another lease.
        assert!(other.try_lease("other").unwrap().is_some());
    }
    drop(lease);
    let again = store.try_lease("loop").unwrap();
    assert!(again.is_some(), "a dropped lease was not released");
    drop(again);
    if let Some(other) = f.open_another() {
        assert!(other.try_lease("loop").unwrap().is_some());
    }
}

fn racing_threads_and_handles_get_one_lease(factory: &dyn Factory) {
    let f = fresh(factory, utc(2026, 3, 1, 10, 0, 0));
    let others: Vec<_> = (0..3).filter_map(|_| f.open_another()).collect();
    let winners = AtomicUsize::new(0);
    let n = 8;
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let store = match i % 4 {
                    0 => f.store.as_ref(),
                    k if k <= others.len() => others[k - 1].as_ref(),
                    _ => f.store.as_ref(),
                };
                let (barrier, winners) = (&barrier, &winners);
                scope.spawn(move || {
                    barrier.wait();
                    let lease = store.try_lease("loop").unwrap();
                    if lease.is_some() {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                    // Every thread tries before any lease is dropped.
                    barrier.wait();
                    drop(lease);
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
    assert_eq!(
        winners.load(Ordering::SeqCst),
        1,
        "racing holders of one lease"
    );
}
