//! Database-neutral errors of the store, with a `kind()` callers can match on.

use std::fmt;

/// The broad class of a [`StoreError`]; what callers (the CLI's exit codes, the HTTP
/// service's status codes) match on. Upper layers never see driver errors directly.
///
/// New kinds may be added (a new backend may fail in new ways), so a `match` on it needs a
/// wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed a value the store refuses (a field is empty, too large, out of range).
    InvalidInput,
    /// The record id (or unit) named by the caller does not exist.
    NotFound,
    /// The database could not be opened, migrated or written (I/O, corruption, locking).
    Database,
    /// A file the store was asked to write or read (an archive) failed.
    Io,
    /// The operation conflicts with the current state (e.g. a retrain is already running).
    Conflict,
    /// The database server could not be reached, or did not answer in time (connection
    /// refused or lost, a timeout). A backend retries what is safe to retry before saying
    /// so; whether a write that failed this way took effect is unknown.
    Unavailable,
    /// The caller asked the operation to stop (a stop flag, SIGINT or SIGTERM) before it
    /// was done; what it had begun was undone or recorded as interrupted. Not given by the
    /// store itself: upper layers (generation, the loop) classify their errors with this
    /// enum too.
    Interrupted,
    /// A failure outside the other classes, e.g. a component the user plugged in (a quality
    /// scorer) failed or returned a value out of range.
    Other,
}

/// An error from the usage store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A field of the input is invalid; `field` names it and `reason` says why.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field, as named in the schema (`quality_score`, `query`, ...).
        field: &'static str,
        /// Why the value is refused, as a lowercase fragment.
        reason: String,
    },
    /// A record in a batch is invalid; nothing of the batch was written.
    #[error("record {index} of batch: {source}")]
    InvalidBatchRecord {
        /// Zero-based position of the bad record in the batch.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: Box<StoreError>,
    },
    /// Nothing of this kind has this id.
    #[error("no {what} with id {id:?}")]
    NotFound {
        /// What was looked up: `usage record`, `retrain run`, `experiment`, `model version`.
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// The database failed; the driver's error is boxed inside.
    #[error("database error: {context}: {source}")]
    Database {
        /// What the store was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation conflicts with the current state; `reason` says with what.
    #[error("{reason}")]
    Conflict {
        /// What is in the way, as a lowercase fragment.
        reason: String,
    },
    /// The file is not a database afs may open (another application's SQLite database, or
    /// not SQLite at all); it was left as it was found.
    #[error("{path} is not an afs database: {reason}; afs opens only its own databases and the Python module's usage.db, and left this file unchanged")]
    NotAfsDatabase {
        /// The file.
        path: std::path::PathBuf,
        /// What it is instead, as a lowercase fragment.
        reason: String,
    },
    /// The database server could not be reached or did not answer in time.
    #[error("database unavailable: {context}: {source}")]
    Unavailable {
        /// What the store was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, naming the file.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidInput { .. } => ErrorKind::InvalidInput,
            StoreError::InvalidBatchRecord { source, .. } => source.kind(),
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Database { .. } | StoreError::NotAfsDatabase { .. } => ErrorKind::Database,
            StoreError::Io { .. } => ErrorKind::Io,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }

    /// A [`StoreError::Conflict`]: the store's state forbids the operation.
    pub fn conflict(reason: impl Into<String>) -> Self {
        StoreError::Conflict {
            reason: reason.into(),
        }
    }

    /// The `Conflict` of a write that needs retrain run `id` to be running (it has
    /// finished).
    pub fn run_not_running(id: &str) -> Self {
        StoreError::conflict(format!("retrain run {id} is not running"))
    }

    /// The [`StoreError::NotFound`] of the usage record `id`.
    pub fn record_not_found(id: &str) -> Self {
        StoreError::NotFound {
            what: "usage record",
            id: id.to_string(),
        }
    }

    /// The error for a store clock outside the range a record may carry (e.g. `AFS_NOW`
    /// before 1970), from the check `e` of the time it reads: an
    /// [`StoreError::InvalidInput`] naming the clock rather than a field the caller did not
    /// give.
    pub fn bad_clock(e: &StoreError) -> Self {
        let reason = match e {
            StoreError::InvalidInput { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        StoreError::invalid(
            "clock",
            format!(
                "the store's clock reads a time outside 1970..2199 ({reason}); records cannot \
                 be dated by it"
            ),
        )
    }

    /// An [`StoreError::InvalidInput`] naming `field`.
    pub fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        StoreError::InvalidInput {
            field,
            reason: reason.to_string(),
        }
    }

    /// A [`StoreError::Database`]: the driver's error `source` while doing `context`.
    pub fn db(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Database {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
