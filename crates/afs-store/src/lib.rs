//! The usage store: the bottom layer of afs, holding the usage log, feedback and the
//! per-model rollups every upper layer reads.
//!
//! The [`UsageStore`] trait is the seam between afs and its storage; [`SqliteStore`] is the
//! embedded default (one SQLite file, WAL mode, versioned migrations, a connection pool and
//! group commit for single-record logging). Everything that writes a timestamp asks a
//! [`Clock`], so tests move time by hand with a [`ManualClock`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use afs_store::{NewUsage, SqliteConfig, SqliteStore, SystemClock, UsageStore, FeedbackValue};
//!
//! let store = SqliteStore::open(SqliteConfig::new("afs.db"), Arc::new(SystemClock))?;
//! let id = store.log(NewUsage { quality_score: Some(0.85), ..NewUsage::new("What is 65816?", "CPU for SNES...", "nayru-v1") })?;
//! store.record_feedback(&id, FeedbackValue::Positive, None)?;
//! # Ok::<(), afs_store::StoreError>(())
//! ```

pub mod backend;
mod clock;
/// The backend conformance suite (cargo feature `testing`): every check of the three store
/// traits, for any backend's tests.
#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod experiment;
mod id;
pub mod key;
mod query;
mod record;
pub mod process;
pub mod rng;
mod runs;
mod sqlite;
mod stats;
mod store;
mod target;
pub mod units;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorKind, Result, StoreError};
pub use experiment::{
    Decision, EventFilter, EventKind, EventNote, Experiment, ExperimentEvent, ExperimentPeriod,
    ExperimentStatus, ExperimentStore, ModelVersion, NewModelVersion, SequentialState,
    VersionStatus, WeightSource,
};
pub use id::new_id;
pub use query::{FeedbackFilter, Order, Paging, RecordFields, RecordFilter, StatsWindow};
pub use record::{
    dedupe_hash, validate_latency, validate_quality, validate_time, validate_token_count, Feedback,
    FeedbackValue, NewUsage, UsageRecord, DEFAULT_MAX_FIELD_BYTES, MAX_LATENCY_MS, MAX_NAME_BYTES,
    MAX_TOKEN_COUNT, MAX_UNIT_ID_BYTES,
};
pub use runs::{NewRun, RetrainRun, RunOutcome, RunStatus, RunStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous, SCHEMA_VERSION};
pub use stats::UsageStats;
pub use store::{DedupeReport, PruneReport, RecordStream, UsageStore};
pub use target::{resolve_output, OutputTarget};
pub use units::{
    unit_cohorts_from_records, CohortBuilder, UnitCohort, UnitMetric, UnitMoments, UnitTally,
};
