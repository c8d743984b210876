//! Errors of the trigger layer.

use afs_store::StoreError;

/// An error from checking triggers or running a retrain.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A setting is out of range; `field` names it.
    #[error("invalid trigger setting {field}: {reason}")]
    Config {
        /// The setting, as named in the `[trigger]` section.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The store failed (or refused: see the store error's kind, e.g. a run already running).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Generating the dataset failed.
    #[error("generate training data: {0}")]
    Datagen(#[from] afs_datagen::DatagenError),
    /// A file or directory of the run could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Persisted trigger state could not be read back.
    #[error("trigger state in the store is unreadable: {0}")]
    State(String),
}

impl TriggerError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        TriggerError::Config {
            field,
            reason: reason.into(),
        }
    }
}
