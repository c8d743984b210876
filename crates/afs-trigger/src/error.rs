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
    /// The class of this error, in the terms every afs layer uses (exit codes and HTTP
    /// statuses are chosen by it).
    pub fn kind(&self) -> afs_store::ErrorKind {
        use afs_store::ErrorKind;
        match self {
            TriggerError::Config { .. } => ErrorKind::InvalidInput,
            TriggerError::Store(e) => e.kind(),
            TriggerError::Datagen(e) => e.kind(),
            TriggerError::Io { .. } => ErrorKind::Io,
            TriggerError::State(_) => ErrorKind::Database,
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        TriggerError::Config {
            field,
            reason: reason.into(),
        }
    }
}
