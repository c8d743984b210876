//! The PostgreSQL backend of the afs store ([`PgStore`]): [`UsageStore`](afs_store::UsageStore),
//! [`RunStore`](afs_store::RunStore) and [`ExperimentStore`](afs_store::ExperimentStore)
//! (through [`afs_store::backend`]) on one PostgreSQL database that several hosts share.
//!
//! # How it works
//!
//! - **Driver and pool:** the synchronous [`postgres`] driver with an [`r2d2`] pool
//!   (`r2d2_postgres`), the same pool crate the SQLite backend uses; no async runtime is
//!   needed below the store traits, which are synchronous.
//! - **Opening** parses the URL (`postgres://user:password@host:port/database`), connects once
//!   with a connect timeout, and refuses, changing nothing: a server that cannot be reached
//!   ([`ErrorKind::Unavailable`](afs_store::ErrorKind::Unavailable)), wrong credentials or a
//!   missing database ([`ErrorKind::Database`](afs_store::ErrorKind::Database), naming the
//!   cause), a database that holds another application's tables and no afs schema
//!   ([`StoreError::NotAfsDatabase`](afs_store::StoreError::NotAfsDatabase)), and a schema
//!   newer than this build.
//! - **Versioned migrations** (`src/migrations.rs`) run in one transaction under an advisory
//!   lock, so several processes opening a new database at once create it once. The version
//!   lives in the `afs_meta` table, beside `application = afs`. A database already at this
//!   build's version is recognised by two short reads without the lock, and the connection that
//!   checked it is the pool's first: a short command (`afs stats`) starts one server backend
//!   and took 17 ms instead of 26 (dev cluster, `perf stat -r 20`).
//! - **Every table is prefixed `afs_`** and lives in the connection's current schema.
//! - **Times** are stored as `bigint` microseconds since the epoch (UTC), as SQLite stores
//!   them, so both backends keep the same precision and order.
//! - **Errors:** a lost connection, a refused connection or a pool timeout is
//!   [`ErrorKind::Unavailable`](afs_store::ErrorKind::Unavailable); everything else from the
//!   driver is [`ErrorKind::Database`](afs_store::ErrorKind::Database).
//! - **Retries where safe:** the pool checks a connection before handing it out and replaces
//!   one the server dropped (a restart, a failover, `pg_terminate_backend`); a transaction
//!   whose connection is lost before its commit was sent runs again on a new connection
//!   (twice, after 0.1 s and 0.4 s), and one that hit a serialisation failure or a deadlock
//!   runs again at once: in both cases nothing was committed. A connection lost during a
//!   commit, or during a single autocommit statement (logging, feedback), is not retried:
//!   whether it took effect is unknown, and the caller gets `Unavailable`
//!   (`tests/connection_loss.rs`).
//!
//! The details of the usage log (rollups, group commit, `COPY`, partitions) are in
//! `src/usage.rs`; of experiments, units and runs in `src/experiments.rs`, `src/units.rs`
//! and `src/runs.rs`.

mod error;
mod experiments;
mod lease;
mod migrations;
mod restore;
mod runs;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod units;
mod usage;
mod usage_partitions;
mod usage_rows;
mod usage_stream;
mod usage_window;
mod usage_writer;

pub use error::{is_postgres_url, redact_url};
pub use migrations::SCHEMA_VERSION;
pub use store::{PgConfig, PgStore};
