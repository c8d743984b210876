//! The store traits' conformance suite (`afs_store::conformance`) against `MemStore`: one
//! handle per database (no other handles, no other processes).

use std::sync::Arc;

use afs_store::conformance::{self, Factory, Instance};
use afs_store::ManualClock;
use afs_store_mem::MemStore;

struct Mem;

impl Factory for Mem {
    fn create(&self, clock: Arc<ManualClock>) -> Instance {
        Instance::new(Box::new(MemStore::new(clock)))
    }
}

#[test]
fn conformance() {
    conformance::run_all(&Mem);
}

/// `afs migrate`'s copy (memory → memory) keeps a judge's own state.
#[test]
fn restore_keeps_a_judges_own_state() {
    let clock = Arc::new(ManualClock::new(
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    let source = MemStore::new(clock.clone());
    let dest = MemStore::new(clock);
    conformance::restore_keeps_sequential_states(&source, &dest);
}
