//! The continuous learning loop: wires the usage store, dataset generation, retraining
//! triggers and champion/challenger experiments into the loop that makes a deployed model
//! improve from its own production use.
//!
//! * [`ContinuousLearningLoop`] (the seed's class of that name): `log_usage`,
//!   `record_feedback` and `route` on the serving path; `run_iteration` (check the experiment
//!   → check triggers → generate → train → evaluation gate → deploy as challenger → promote
//!   or roll back on evidence); `run_loop` every [`LoopConfig::check_interval`] until
//!   [`stop`](ContinuousLearningLoop::stop); `status_summary`.
//! * [`LoopConfig`] nests the layers' configs; [`LoopConfig::validate`] names the bad key.
//! * [`status_summary`] reads the status from any process that opens the store.
//!
//! The loop is generic over its store ([`LoopStore`]); the binary that runs it picks one. The
//! end-to-end demo (`afs demo`) is the crate `afs-demo`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use afs_loop::{ContinuousLearningLoop, LoopConfig};
//! use afs_store::{NewModelVersion, NewUsage, SystemClock};
//! use afs_store_sqlite::{SqliteConfig, SqliteStore};
//! use afs_trigger::CommandTrainer;
//!
//! let store = Arc::new(SqliteStore::open(SqliteConfig::new("afs.db"), Arc::new(SystemClock))?);
//! let config = LoopConfig {
//!     initial_champion: Some(NewModelVersion::new("nayru-v1", "models/nayru-v1")),
//!     ..LoopConfig::default()
//! };
//! let trainer = CommandTrainer::shell("python train.py --data {data} --out {output_dir}", Duration::from_secs(86_400));
//! let learning = ContinuousLearningLoop::new(store, config, Box::new(trainer))?;
//! let route = learning.route(Some("user-42"))?;
//! learning.log_usage(NewUsage { quality_score: Some(0.85), ..NewUsage::new("What is 65816?", "CPU for SNES...", route.model) })?;
//! let report = learning.run_iteration()?;
//! println!("{}", report.summary());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod eval;
mod report;
mod runner;
mod serving;
mod state;
mod status;
mod stop;

pub use config::{EvalGate, LoopConfig};
pub use error::{LoopError, Result};
pub use report::{
    DeployStep, ExperimentStep, GateOutcome, IterationReport, LoopRunSummary, RetrainStep,
    StopReason,
};
pub use runner::{ContinuousLearningLoop, IterationOptions, LoopStore, LOOP_LEASE};
pub use serving::{Deployment, Routed, Serving, ROUTING_REFRESH};
pub use state::{ErrorEntry, InProgress, IterationRecord, LoopState, MAX_ERRORS, STATE_KEY};
pub use status::{status_summary, StatusSummary};
pub use stop::StopSignal;
