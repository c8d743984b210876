//! The conformance suite of the store traits: every check of [`UsageStore`], [`RunStore`] and
//! [`ExperimentStore`] (including the per-unit experiment statistics) plus concurrency
//! checks, written only against the public traits and types of `afs_store`, so every backend
//! (SQLite here, in-memory and PostgreSQL in their own crates, or one out of tree) runs the
//! same checks.
//!
//! Compiled only with the cargo feature `testing`. A backend implements [`Factory`]: given
//! a [`ManualClock`], it makes a fresh, empty database and returns an [`Instance`] holding
//! the store (one object implementing all three traits: [`TestStore`]), optionally a way to
//! open more handles on the same database (used by the many-handle, reader-during-write and
//! reopen checks; without it those checks use the one handle from many threads) and
//! optionally a locator string another process can open (for [`two_processes`]).
//!
//! Each check panics with a message naming what failed; [`run_all`] prints each check's name
//! before running it, and [`checks`] lists them for a backend that prefers one test per
//! check.
//!
//! A backend crate's `tests/conformance.rs`, with
//! `afs-store = { workspace = true, features = ["testing"] }` among its dev-dependencies
//! (here the backend is SQLite with one handle per database; an in-memory store's `create`
//! is just `Instance::new(Box::new(MemStore::new(clock)))`):
//!
//! ```ignore
//! // In afs-store-sqlite's tests/conformance.rs (compiled there, not here: afs-store cannot
//! // depend on its backends).
//! use std::sync::Arc;
//! use afs_store::conformance::{self, Factory, Instance};
//! use afs_store::ManualClock;
//! use afs_store_sqlite::{SqliteConfig, SqliteStore};
//!
//! struct Mine;
//!
//! impl Factory for Mine {
//!     fn create(&self, clock: Arc<ManualClock>) -> Instance {
//!         let dir = tempfile::tempdir().unwrap();
//!         let path = dir.path().join("afs.db");
//!         let store = SqliteStore::open(SqliteConfig::new(path), clock).unwrap();
//!         // The temp dir lives as long as the database.
//!         Instance { guard: Box::new(dir), ..Instance::new(Box::new(store)) }
//!     }
//! }
//!
//! #[test]
//! fn conformance() {
//!     conformance::run_all(&Mine);
//! }
//! ```
//!
//! A backend whose database other handles and processes can open fills in
//! [`Instance::open`] and [`Instance::locator`], and runs [`two_processes`] with a `spawn`
//! that re-runs its own test binary, whose child side calls [`child_main`] (see the SQLite
//! store's `tests/conformance.rs`).
//!
//! [`Factory`]: crate::conformance::Factory
//! [`Instance`]: crate::conformance::Instance
//! [`Instance::open`]: crate::conformance::Instance::open
//! [`Instance::locator`]: crate::conformance::Instance::locator
//! [`TestStore`]: crate::conformance::TestStore
//! [`run_all`]: crate::conformance::run_all
//! [`checks`]: crate::conformance::checks
//! [`two_processes`]: crate::conformance::two_processes
//! [`child_main`]: crate::conformance::child_main

use std::any::Any;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    ExperimentStore, LeaseStore, ManualClock, NewUsage, RecordFilter, RunStore, UsageRecord,
    UsageStore,
};

mod concurrency;
mod experiments;
mod leases;
mod runs;
mod units;
mod usage;

pub use concurrency::{child_main, two_processes};
pub use experiments::restore_keeps_sequential_states;
pub use units::{
    assert_unit_cohorts_close, assert_unit_stats_match_scan, running_experiment_with_records,
    unit_stats_sequence,
};

/// The store under test: one object implementing every store trait.
pub trait TestStore: UsageStore + RunStore + ExperimentStore + LeaseStore {}

impl<T: UsageStore + RunStore + ExperimentStore + LeaseStore + ?Sized> TestStore for T {}

/// Another handle on the same database as an [`Instance`]'s store, driven by the same clock.
pub type OpenHandle = Box<dyn Fn() -> Box<dyn TestStore> + Send + Sync>;

/// A fresh database made by a [`Factory`] and what the suite may do with it.
pub struct Instance {
    /// The first handle on the new, empty database, driven by the clock the factory got.
    pub store: Box<dyn TestStore>,
    /// Opens another handle on the same database (driven by the same clock), usable while
    /// other handles are open and after they are dropped; `None` for a backend that has one
    /// handle per database (in-memory), whose checks then share [`Instance::store`].
    pub open: Option<OpenHandle>,
    /// A string another process can give [`child_main`]'s `open` to reach this database (a
    /// file path, a connection URL); `None` when no other process can.
    pub locator: Option<String>,
    /// Whatever must live as long as the database (a temp dir, a schema dropped on drop);
    /// dropped after the handles. `Box::new(())` when nothing.
    pub guard: Box<dyn Any + Send + Sync>,
}

impl Instance {
    /// An instance with only its store: no other handles, no locator, no guard.
    pub fn new(store: Box<dyn TestStore>) -> Self {
        Instance {
            store,
            open: None,
            locator: None,
            guard: Box::new(()),
        }
    }

    /// Another handle on the same database, or `None` when the backend offers none.
    pub fn open_another(&self) -> Option<Box<dyn TestStore>> {
        self.open.as_ref().map(|open| open())
    }
}

/// What a backend implements to run the suite: fresh, empty databases on demand.
pub trait Factory: Sync {
    /// A new, empty database whose store reads the time from `clock` (never the system
    /// clock): every check moves time by hand.
    fn create(&self, clock: Arc<ManualClock>) -> Instance;
}

/// One check: its name (`area::what_it_checks`) and the function that runs it.
pub type Check = (&'static str, fn(&dyn Factory));

/// Every check of the suite, in the order [`run_all`] runs them ([`two_processes`] is apart:
/// it needs a way to start a process).
pub fn checks() -> Vec<Check> {
    let mut all = Vec::new();
    all.extend(usage::checks());
    all.extend(experiments::checks());
    all.extend(runs::checks());
    all.extend(units::checks());
    all.extend(leases::checks());
    all.extend(concurrency::checks());
    all
}

/// Runs every check of [`checks`] in order, printing each one's name before it runs (so a
/// failure's output says which) and the time it took; panics at the first failure.
pub fn run_all(factory: &dyn Factory) {
    let started = std::time::Instant::now();
    let all = checks();
    let n = all.len();
    for (i, (name, check)) in all.into_iter().enumerate() {
        println!("conformance [{}/{n}] {name} ...", i + 1);
        let t = std::time::Instant::now();
        check(factory);
        println!(
            "conformance [{}/{n}] {name} ok ({:.2?})",
            i + 1,
            t.elapsed()
        );
    }
    println!(
        "conformance: {n} checks passed in {:.2?}",
        started.elapsed()
    );
}

/// A database under test, its clock and what keeps it alive (fields drop in order: the
/// handle first, the guard last).
struct Fixture {
    store: Box<dyn TestStore>,
    clock: Arc<ManualClock>,
    open: Option<OpenHandle>,
    locator: Option<String>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl Fixture {
    /// Another handle on the same database, or `None` when the backend offers none.
    fn open_another(&self) -> Option<Box<dyn TestStore>> {
        self.open.as_ref().map(|open| open())
    }
}

/// A fresh, empty database whose clock starts at `at`.
fn fresh(factory: &dyn Factory, at: DateTime<Utc>) -> Fixture {
    let clock = Arc::new(ManualClock::new(at));
    let Instance {
        store,
        open,
        locator,
        guard,
    } = factory.create(clock.clone());
    Fixture {
        store,
        clock,
        open,
        locator,
        _guard: guard,
    }
}

/// Every record a filter selects, in stream order.
fn all_records(store: &dyn TestStore, filter: &RecordFilter) -> Vec<UsageRecord> {
    store
        .query(filter)
        .expect("query")
        .collect::<crate::Result<Vec<_>>>()
        .expect("query stream")
}

/// The i-th plain record of model `m1`.
fn record(i: usize) -> NewUsage {
    NewUsage::new(format!("query {i}"), format!("response {i}"), "m1")
}

/// A UTC time, for fixed test dates.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid date")
}
