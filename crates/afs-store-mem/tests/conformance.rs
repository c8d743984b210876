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
