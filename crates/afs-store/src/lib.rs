//! The usage store's core: the bottom layer of afs. It holds what every backend shares and
//! no backend: the traits ([`UsageStore`], [`RunStore`], [`ExperimentStore`], [`LeaseStore`],
//! and [`RestoreStore`] for copying a whole store), the record, query, statistics and
//! experiment types, the errors, the input checks, and the domain rules of experiments
//! written once over [`backend::ExperimentTx`].
//!
//! Backends are crates of their own: `afs-store-sqlite` (one SQLite file, the embedded
//! default), `afs-store-mem` (in memory, for tests and simulations). Every backend runs the
//! conformance suite, [`conformance`] with the `testing` feature. Everything that writes a
//! timestamp asks a [`Clock`], so tests move time by hand with a [`ManualClock`].
//!
//! ```
//! use afs_store::{FeedbackValue, NewUsage, UsageStore};
//!
//! /// Logs one answer and its thumbs-up, whatever the backend.
//! fn log_liked(store: &dyn UsageStore) -> afs_store::Result<String> {
//!     let id = store.log(NewUsage {
//!         quality_score: Some(0.85),
//!         ..NewUsage::new("What is 65816?", "CPU for SNES...", "nayru-v1")
//!     })?;
//!     store.record_feedback(&id, FeedbackValue::Positive, None)?;
//!     Ok(id)
//! }
//! ```

mod archive;
pub mod backend;
mod clock;
/// The backend conformance suite (cargo feature `testing`): every check of the three store
/// traits, for any backend's tests.
#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod experiment;
pub mod group_commit;
mod id;
pub mod key;
mod lease;
pub mod paging;
pub mod process;
mod query;
mod record;
mod restore;
pub mod rng;
mod runs;
mod serde_time;
mod stats;
mod store;
mod target;
pub mod units;
pub mod window;

pub use archive::{rfc3339, write_archive, ArchiveLine};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorKind, Result, StoreError};
pub use experiment::{
    Decision, EventFilter, EventKind, EventNote, Experiment, ExperimentEvent, ExperimentPeriod,
    ExperimentStatus, ExperimentStore, ModelVersion, NewModelVersion, SequentialState,
    VersionStatus, WeightSource,
};
pub use id::new_id;
pub use lease::{Lease, LeaseStore};
pub use query::{FeedbackFilter, Order, Paging, RecordFields, RecordFilter, StatsWindow};
pub use record::{
    dedupe_hash, last_turns, messages_from_json, messages_to_json, record_dedupe_hash,
    validate_feedback_text, validate_latency, validate_messages, validate_qualities,
    validate_quality, validate_time, validate_token_count, Feedback, FeedbackValue, Message,
    NewUsage, Role, UsageRecord, DEFAULT_MAX_FIELD_BYTES, MAX_LATENCY_MS, MAX_MESSAGES,
    MAX_NAME_BYTES, MAX_TOKEN_COUNT, MAX_UNIT_ID_BYTES,
};
pub use restore::{ExperimentDump, RestoreStore};
pub use runs::{check_runs_finished, NewRun, RetrainRun, RunOutcome, RunStatus, RunStore};
pub use serde_time::text as time_text;
pub use stats::UsageStats;
pub use store::{DedupeReport, PruneReport, RecordStream, UsageStore};
pub use target::{resolve_output, OutputTarget};
pub use units::{
    unit_cohorts_from_records, CohortBuilder, LooseTally, UnitCohort, UnitMetric, UnitMoments,
    UnitTally,
};
