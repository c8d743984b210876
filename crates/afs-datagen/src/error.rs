//! Errors of dataset generation, each naming the field, record, file or line at fault.

use std::path::PathBuf;

/// A boxed error from a user-supplied component (a [`crate::QualityScorer`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a generation run failed. When [`crate::generate`] returns one of these, nothing has
/// been written at the output path (a previous file there is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum DatagenError {
    /// A config value is out of range or inconsistent; `field` names it.
    #[error("invalid config {field}: {reason}")]
    InvalidConfig {
        /// The config field, as named in [`crate::GeneratorConfig`].
        field: &'static str,
        /// Why it is refused, as a lowercase fragment.
        reason: String,
    },
    /// The usage store failed (reading candidates or writing back a score).
    #[error("usage store: {0}")]
    Store(#[from] afs_store::StoreError),
    /// The quality scorer failed on a record.
    #[error("quality scorer failed on record {id}: {source}")]
    Scorer {
        /// The record being scored.
        id: String,
        /// The scorer's error.
        #[source]
        source: BoxError,
    },
    /// The quality scorer returned a value that is not a finite number within [0, 1].
    #[error("quality scorer returned {value} for record {id}: not a number within [0, 1]")]
    InvalidScore {
        /// The record being scored.
        id: String,
        /// The value returned.
        value: f64,
    },
    /// A file could not be read, written or renamed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done (`read existing file`, `write output`, ...).
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The existing file changed between the two passes that read it.
    #[error("existing file {} changed while it was read: {reason}", path.display())]
    ExistingChanged {
        /// The existing file.
        path: PathBuf,
        /// What differed.
        reason: String,
    },
    /// The caller's stop flag ([`crate::Hooks::stop`]) was set: the run stopped at its next
    /// progress point and removed its unfinished files.
    #[error("interrupted before the output was complete; nothing was written at the output path")]
    Interrupted,
    /// A formatter was given an example of a kind its format cannot hold.
    #[error("format {format} cannot hold a {kind} example")]
    UnsupportedExample {
        /// The output format (the formatter's name).
        format: String,
        /// The kind of example (`sft`, `preference`, `labeled`).
        kind: &'static str,
    },
}

impl DatagenError {
    /// The class of this error, in the terms every afs layer uses (exit codes and HTTP
    /// statuses are chosen by it).
    pub fn kind(&self) -> afs_store::ErrorKind {
        use afs_store::ErrorKind;
        match self {
            DatagenError::InvalidConfig { .. } => ErrorKind::InvalidInput,
            DatagenError::Store(e) => e.kind(),
            DatagenError::Io { .. } | DatagenError::ExistingChanged { .. } => ErrorKind::Io,
            DatagenError::Interrupted => ErrorKind::Interrupted,
            DatagenError::Scorer { .. }
            | DatagenError::InvalidScore { .. }
            | DatagenError::UnsupportedExample { .. } => ErrorKind::Other,
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DatagenError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        DatagenError::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}
