//! Exit codes of `afs` and the mapping from errors to them.

use std::fmt;

use afs_abtest::AbTestError;
use afs_datagen::DatagenError;
use afs_loop::LoopError;
use afs_store::{ErrorKind, StoreError};
use afs_trigger::TriggerError;

/// Success.
pub(crate) const SUCCESS: u8 = 0;
/// Any failure that is not the caller's input: database, file or terminal I/O, a failed
/// retrain run.
pub(crate) const FAILURE: u8 = 1;
/// Usage error. Mostly reported by clap itself before any command runs; [`Usage`] is the
/// same for a required value that may come from the flag or the config file.
pub(crate) const USAGE: u8 = 2;
/// Invalid input: a value the store refuses, a rejected import line, an invalid config file.
pub(crate) const INVALID_INPUT: u8 = 3;
/// An id named by the caller does not exist.
pub(crate) const NOT_FOUND: u8 = 4;
/// The current state refuses the operation: another retrain is running on the same database,
/// or an `afs ab` command does not fit the experiment state (no champion, no running
/// experiment, one already running, a model name already used). Every store error of kind
/// [`ErrorKind::Conflict`] maps here, so "try again later / fix the state first" has one code.
pub(crate) const BUSY: u8 = 5;
/// The database server could not be reached or did not answer in time (kind
/// [`ErrorKind::Unavailable`]): try again when it is back.
pub(crate) const UNAVAILABLE: u8 = 6;
/// `afs trigger check --exit-code`: no trigger fired.
pub(crate) const NOT_TRIGGERED: u8 = 10;
/// Stopped by SIGINT or SIGTERM before the work was done (128 + SIGINT, as shells report).
pub(crate) const INTERRUPTED: u8 = 130;

/// The command was stopped by a signal; what was interrupted is recorded (exit code 130).
#[derive(Debug)]
pub(crate) struct Interrupted(pub(crate) String);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Invalid input detected by the CLI itself rather than by the store (exit code 3).
#[derive(Debug)]
pub(crate) struct InvalidInput(pub(crate) String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// A usage error found after parsing, e.g. a value required from a flag or the config file
/// and given by neither (exit code 2).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Another retrain is already running on the database (exit code 5).
#[derive(Debug)]
pub(crate) struct Busy(pub(crate) String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// A retrain run ran and was recorded as failed, timed out or refused (exit code 1); its
/// outcome has already been printed on stdout.
#[derive(Debug)]
pub(crate) struct RunFailed(pub(crate) String);

impl fmt::Display for RunFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunFailed {}

/// Ends the process with this exit code and no error message: the command's output already
/// says everything (e.g. `afs trigger check --exit-code` when nothing triggered).
#[derive(Debug)]
pub(crate) struct Silent(pub(crate) u8);

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Silent {}

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
        // The loop's errors wrap the others transparently, so they are matched first, by
        // their class.
        if let Some(loop_err) = cause.downcast_ref::<LoopError>() {
            return classify_loop(loop_err);
        }
        if let Some(store_err) = cause.downcast_ref::<StoreError>() {
            return classify_store(store_err);
        }
        // The libraries' errors are matched by variant: `TriggerError::Store` is
        // transparent, so the store error inside is not in the chain of sources.
        if let Some(trigger_err) = cause.downcast_ref::<TriggerError>() {
            return classify_kind(trigger_err.kind());
        }
        if let Some(datagen_err) = cause.downcast_ref::<DatagenError>() {
            return classify_kind(datagen_err.kind());
        }
        if let Some(ab_err) = cause.downcast_ref::<AbTestError>() {
            return match ab_err {
                AbTestError::Store(e) => classify_store(e),
                other => classify_kind(other.kind()),
            };
        }
        if let Some(Silent(code)) = cause.downcast_ref::<Silent>() {
            return (*code, "silent");
        }
        if cause.is::<InvalidInput>() {
            return (INVALID_INPUT, "invalid_input");
        }
        if cause.is::<Usage>() {
            return (USAGE, "usage");
        }
        if cause.is::<Busy>() {
            return (BUSY, "busy");
        }
        if cause.is::<RunFailed>() {
            return (FAILURE, "run_failed");
        }
        if cause.is::<Interrupted>() {
            return (INTERRUPTED, "interrupted");
        }
        if cause.is::<std::io::Error>() {
            return (FAILURE, "io");
        }
    }
    (FAILURE, "error")
}

/// The exit code and kind of an error of the loop (a caught panic is a failure).
pub(crate) fn classify_loop(err: &LoopError) -> (u8, &'static str) {
    match err.kind() {
        Some(kind) => classify_kind(kind),
        None => (FAILURE, "panic"),
    }
}

fn classify_store(err: &StoreError) -> (u8, &'static str) {
    classify_kind(err.kind())
}

fn classify_kind(kind: ErrorKind) -> (u8, &'static str) {
    match kind {
        ErrorKind::InvalidInput => (INVALID_INPUT, "invalid_input"),
        ErrorKind::NotFound => (NOT_FOUND, "not_found"),
        ErrorKind::Database => (FAILURE, "database"),
        ErrorKind::Io => (FAILURE, "io"),
        ErrorKind::Conflict => (BUSY, "conflict"),
        ErrorKind::Unavailable => (UNAVAILABLE, "unavailable"),
        ErrorKind::Interrupted => (INTERRUPTED, "interrupted"),
        // `Other`, and a kind added later: a failure until it is given a code.
        _ => (FAILURE, "error"),
    }
}

/// True when the error is [`Silent`]: exit with its code and print nothing.
pub(crate) fn is_silent(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Silent>())
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
        let not_found: anyhow::Error = StoreError::NotFound {
            what: "usage record",
            id: "x".into(),
        }
        .into();
        assert_eq!(classify(&not_found).0, NOT_FOUND);
        let wrapped = Err::<(), _>(StoreError::NotFound {
            what: "usage record",
            id: "x".into(),
        })
        .context("recording feedback")
        .unwrap_err();
        assert_eq!(classify(&wrapped), (NOT_FOUND, "not_found"));
        let invalid: anyhow::Error = InvalidInput("bad".into()).into();
        assert_eq!(classify(&invalid).0, INVALID_INPUT);
        assert_eq!(classify(&anyhow::anyhow!("other")).0, FAILURE);
    }

    /// One classification: an interrupted generation is "interrupted" (130) whichever layer
    /// wraps it (the loop's own mapping once called it a database error).
    #[test]
    fn an_interrupted_generation_is_interrupted_through_every_layer() {
        let direct: anyhow::Error = DatagenError::Interrupted.into();
        assert_eq!(classify(&direct), (INTERRUPTED, "interrupted"));
        let in_trigger: anyhow::Error = TriggerError::Datagen(DatagenError::Interrupted).into();
        assert_eq!(classify(&in_trigger), (INTERRUPTED, "interrupted"));
        let in_loop: anyhow::Error =
            LoopError::Trigger(TriggerError::Datagen(DatagenError::Interrupted)).into();
        assert_eq!(classify(&in_loop), (INTERRUPTED, "interrupted"));
        let scorer: anyhow::Error =
            LoopError::Trigger(TriggerError::Datagen(DatagenError::InvalidScore {
                id: "r".into(),
                value: 2.0,
            }))
            .into();
        assert_eq!(classify(&scorer), (FAILURE, "error"));
    }

    #[test]
    fn an_unreachable_database_has_its_own_code() {
        let down: anyhow::Error = StoreError::Unavailable {
            context: "connect".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
        .into();
        assert_eq!(classify(&down), (UNAVAILABLE, "unavailable"));
    }

    #[test]
    fn loop_errors_map_by_kind() {
        let conflict: anyhow::Error =
            LoopError::Conflict("the demo needs a new database".into()).into();
        assert_eq!(classify(&conflict), (BUSY, "conflict"));
        let store: anyhow::Error = LoopError::Store(StoreError::NotFound {
            what: "record",
            id: "x".into(),
        })
        .into();
        assert_eq!(classify(&store), (NOT_FOUND, "not_found"));
        let panicked: anyhow::Error = LoopError::Panicked {
            iteration: 3,
            message: "boom".into(),
        }
        .into();
        assert_eq!(classify(&panicked), (FAILURE, "panic"));
    }

    #[test]
    fn ab_errors_map_by_kind() {
        let no_experiment: anyhow::Error = AbTestError::NoRunningExperiment.into();
        assert_eq!(classify(&no_experiment), (BUSY, "conflict"));
        let conflict: anyhow::Error = AbTestError::Store(StoreError::Conflict {
            reason: "an experiment is already running".into(),
        })
        .into();
        assert_eq!(classify(&conflict), (BUSY, "conflict"));
        let bad_weight: anyhow::Error = AbTestError::InvalidInput {
            field: "weight",
            reason: "2 is not within [0, 1]".into(),
        }
        .into();
        assert_eq!(classify(&bad_weight), (INVALID_INPUT, "invalid_input"));
        let unknown: anyhow::Error = AbTestError::Store(StoreError::NotFound {
            what: "experiment",
            id: "9".into(),
        })
        .into();
        assert_eq!(classify(&unknown), (NOT_FOUND, "not_found"));
    }
}
