//! Errors of afs-abtest.

use afs_store::{ErrorKind, StoreError};

/// An error from an A/B operation.
#[derive(Debug, thiserror::Error)]
pub enum AbTestError {
    /// The store failed or refused (its `kind()` says how: invalid input, not found,
    /// conflict with the current state, database).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A setting of [`crate::AbTestConfig`] is invalid.
    #[error("invalid config {field}: {reason}")]
    InvalidConfig {
        /// The setting at fault.
        field: &'static str,
        /// Why, as a lowercase fragment.
        reason: String,
    },
    /// An argument is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument at fault (`weight`, ...).
        field: &'static str,
        /// Why, as a lowercase fragment.
        reason: String,
    },
    /// The operation needs a champion and none is set.
    #[error("no champion is set")]
    NoChampion,
    /// The operation needs a running experiment and none runs.
    #[error("no experiment is running")]
    NoRunningExperiment,
}

impl AbTestError {
    /// The class of this error, in the store's terms (what the CLI maps to exit codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            AbTestError::Store(e) => e.kind(),
            AbTestError::InvalidConfig { .. } | AbTestError::InvalidInput { .. } => {
                ErrorKind::InvalidInput
            }
            AbTestError::NoChampion | AbTestError::NoRunningExperiment => ErrorKind::Conflict,
        }
    }

    pub(crate) fn invalid_config(field: &'static str, reason: impl Into<String>) -> Self {
        AbTestError::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AbTestError::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias of afs-abtest.
pub type Result<T, E = AbTestError> = std::result::Result<T, E>;
