//! An in-memory afs store: [`MemStore`] implements [`UsageStore`], [`RunStore`] and
//! [`ExperimentStore`](afs_store::ExperimentStore) without a database, for unit tests and
//! simulations.
//!
//! It keeps the contracts of the SQLite store (`afs_store_sqlite::SqliteStore`) where they mean
//! something in memory:
//!
//! * **Validation** is afs-store's own ([`NewUsage::validate`], [`validate_quality`], ...),
//!   ids come from [`afs_store::new_id`], and every timestamp from the clock given to
//!   [`MemStore::new`]. Times are kept to the microsecond, as SQLite keeps them.
//! * **Order.** Records are kept in time order, keyed like SQLite's rows since schema 5:
//!   `ts_us × 1024 + n`, up to 1,024 records per microsecond (a record that finds its
//!   microsecond full moves to the next one, its timestamp with it), so streams come out in
//!   the same order.
//! * **Statistics** keep per-minute sums per model (see `window.rs`): a window reads whole
//!   minutes from the sums and scans only the records of the partial minutes at its edges;
//!   an end after the newest record is open. The resolution each consumer gets is the one
//!   the SQLite store documents (docs/ARCHITECTURE.md): trigger windows (start of a minute,
//!   end now), sample counts, Page-Hinkley's and the dashboard's whole hours scan nothing;
//!   only an absolute time inside a minute scans that minute's records. Results equal
//!   [`UsageStats::of_records`] over the window (up to floating-point rounding of the sums).
//!   Bulk deletes (dedupe, prune, forget) recompute the minutes they touched from what
//!   remains, as SQLite does.
//! * **Experiments.** The rules (one champion, one running experiment, names never reused,
//!   weights, periods, events, decisions) come from [`afs_store::backend`]: this crate only
//!   implements [`ExperimentBackend`](afs_store::backend::ExperimentBackend). Per-unit
//!   statistics are kept per unit and arm on every write while an experiment runs; a look
//!   builds the cohorts from those rows (cost: the experiment's units, plus the records with
//!   feedback after a maturity cut), never from the log.
//! * **Transactions.** One lock guards the whole state: every method is one atomic step,
//!   checked before it writes, and readers see a consistent state. Streams read in pages,
//!   each under the lock, like SQLite's keyset pages.
//! * **Runs.** "The process that owns a run" is this process, and a store in memory dies
//!   with it: [`RunStore::recover_stale_runs`] finds nothing to recover (see its notes in
//!   `runs.rs`).
//! * **Files.** None: [`UsageStore::files`] is empty.
//! * **Leases** ([`LeaseStore`](afs_store::LeaseStore)) are names in a set shared by the
//!   store's clones of it; they end with the store, as everything in it does.
//!
//! ```
//! use std::sync::Arc;
//! use afs_store::{NewUsage, SystemClock, UsageStore, FeedbackValue};
//! use afs_store_mem::MemStore;
//!
//! let store = MemStore::new(Arc::new(SystemClock));
//! let id = store.log(NewUsage { quality_score: Some(0.85), ..NewUsage::new("q", "r", "nayru-v1") })?;
//! store.record_feedback(&id, FeedbackValue::Positive, None)?;
//! assert_eq!(store.stats(&Default::default())?.positive_feedback, 1);
//! # Ok::<(), afs_store::StoreError>(())
//! ```
//!
//! [`NewUsage::validate`]: afs_store::NewUsage::validate
//! [`validate_quality`]: afs_store::validate_quality
//! [`UsageStats::of_records`]: afs_store::UsageStats::of_records
//! [`UsageStore`]: afs_store::UsageStore
//! [`UsageStore::files`]: afs_store::UsageStore::files
//! [`RunStore`]: afs_store::RunStore
//! [`RunStore::recover_stale_runs`]: afs_store::RunStore::recover_stale_runs

mod experiments;
mod lease;
mod restore;
mod runs;
mod state;
mod store;
mod units;
mod window;

pub use store::MemStore;
