//! The clock of the bench's stores: the wall clock while a log is built, pinned to a chosen
//! time while the trigger checks run (so their windows hold the workload's records).

use std::sync::Mutex;

use afs_store::Clock;
use chrono::{DateTime, Utc};

/// The wall clock until [`BenchClock::pin`] is called; then the pinned time.
#[derive(Debug, Default)]
pub(crate) struct BenchClock {
    pinned: Mutex<Option<DateTime<Utc>>>,
}

impl BenchClock {
    /// From now on the clock reads `at`.
    pub(crate) fn pin(&self, at: DateTime<Utc>) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

impl Clock for BenchClock {
    fn now(&self) -> DateTime<Utc> {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(Utc::now)
    }
}
