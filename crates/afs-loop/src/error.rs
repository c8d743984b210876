//! Errors of the loop layer, with the class (`kind`) the CLI maps to exit codes.

use afs_abtest::AbTestError;
use afs_store::{ErrorKind, StoreError};
use afs_trigger::TriggerError;

/// An error from the continuous loop or the demo.
///
/// Failures that belong to one iteration's work (a trainer that fails, an evaluation gate
/// that rejects a model, a deployment the store refuses) are *not* errors: they are recorded
/// in the [`crate::IterationReport`] and in the persisted loop status, and the loop goes on.
/// These errors are what stops an operation outright.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A setting is out of range; `key` names it as `section.field` (`loop.check_interval`,
    /// `trigger.cooldown_hours`, `abtest.alpha`, `generator.min_quality_score`, ...).
    #[error("invalid setting {key}: {reason}")]
    InvalidConfig {
        /// The setting, as `section.field`.
        key: String,
        /// Why it is refused, as a lowercase fragment.
        reason: String,
    },
    /// The store failed or refused (its `kind()` says how).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The trigger layer failed (checking triggers or recording a run).
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// An experiment operation failed.
    #[error(transparent)]
    AbTest(#[from] AbTestError),
    /// The persisted loop status could not be read back.
    #[error("loop status in the store is unreadable: {0}")]
    State(String),
    /// Iteration `iteration` panicked; the panic was caught and recorded.
    #[error("iteration {iteration} panicked: {message}")]
    Panicked {
        /// The iteration's number.
        iteration: u64,
        /// The panic's message.
        message: String,
    },
    /// A file or directory could not be handled.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operation does not fit the current state (e.g. the demo was given a database
    /// that already holds data).
    #[error("{0}")]
    Conflict(String),
}

impl LoopError {
    /// The class of this error in the store's terms, for exit codes and HTTP statuses;
    /// `None` for a caught panic, which has no such class (an internal failure).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            LoopError::InvalidConfig { .. } => Some(ErrorKind::InvalidInput),
            LoopError::Store(e) => Some(e.kind()),
            LoopError::Trigger(e) => Some(e.kind()),
            LoopError::AbTest(e) => Some(e.kind()),
            LoopError::State(_) => Some(ErrorKind::Database),
            LoopError::Io { .. } => Some(ErrorKind::Io),
            LoopError::Conflict(_) => Some(ErrorKind::Conflict),
            LoopError::Panicked { .. } => None,
        }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        LoopError::InvalidConfig {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of afs-loop.
pub type Result<T, E = LoopError> = std::result::Result<T, E>;
