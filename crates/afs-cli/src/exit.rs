//! Exit codes of `afs` and the mapping from errors to them.

use std::fmt;

use afs_store::{ErrorKind, StoreError};

/// Success.
pub(crate) const SUCCESS: u8 = 0;
/// Any failure that is not the caller's input: database, file or terminal I/O.
pub(crate) const FAILURE: u8 = 1;
/// Invalid input: a value the store refuses, a rejected import line.
pub(crate) const INVALID_INPUT: u8 = 3;
/// An id named by the caller does not exist.
pub(crate) const NOT_FOUND: u8 = 4;
// Usage errors (exit code 2) are reported by clap itself before any command runs.

/// Invalid input detected by the CLI itself rather than by the store (exit code 3).
#[derive(Debug)]
pub(crate) struct InvalidInput(pub(crate) String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// Stdout was closed by the reader (e.g. `afs records | head`); not a failure.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// The exit code and a short machine-readable kind for an error.
pub(crate) fn classify(err: &anyhow::Error) -> (u8, &'static str) {
    for cause in err.chain() {
        if let Some(store_err) = cause.downcast_ref::<StoreError>() {
            return match store_err.kind() {
                ErrorKind::InvalidInput => (INVALID_INPUT, "invalid_input"),
                ErrorKind::NotFound => (NOT_FOUND, "not_found"),
                ErrorKind::Database => (FAILURE, "database"),
                ErrorKind::Io => (FAILURE, "io"),
                ErrorKind::Conflict => (FAILURE, "conflict"),
            };
        }
        if cause.is::<InvalidInput>() {
            return (INVALID_INPUT, "invalid_input");
        }
        if cause.is::<std::io::Error>() {
            return (FAILURE, "io");
        }
    }
    (FAILURE, "error")
}

/// True when the error only means that stdout's reader went away.
pub(crate) fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<StdoutClosed>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn store_error_kinds_map_to_exit_codes() {
        let not_found: anyhow::Error = StoreError::NotFound { id: "x".into() }.into();
        assert_eq!(classify(&not_found).0, NOT_FOUND);
        let wrapped = Err::<(), _>(StoreError::NotFound { id: "x".into() })
            .context("recording feedback")
            .unwrap_err();
        assert_eq!(classify(&wrapped), (NOT_FOUND, "not_found"));
        let invalid: anyhow::Error = InvalidInput("bad".into()).into();
        assert_eq!(classify(&invalid).0, INVALID_INPUT);
        assert_eq!(classify(&anyhow::anyhow!("other")).0, FAILURE);
    }
}
