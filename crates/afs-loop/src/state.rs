//! The loop's persisted status: one JSON value in the store's state table, so `afs status`
//! in another process sees what the loop did, and a restart sees what it was doing.

use afs_store::RunStore;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{LoopError, Result};

/// The key under which the loop status is stored (see [`afs_store::RunStore::state`]).
pub const STATE_KEY: &str = "loop";

/// How many recent errors the status keeps; older ones are dropped.
pub const MAX_ERRORS: usize = 20;

/// What the loop remembers between iterations and processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Iterations started on this database, ever (the last one's number).
    pub iterations: u64,
    /// Iterations that ended with an error or a panic.
    #[serde(default)]
    pub failed_iterations: u64,
    /// Iterations found unfinished because their process stopped (killed, crashed).
    #[serde(default)]
    pub interrupted_iterations: u64,
    /// When the last iteration started checking (the store's clock).
    pub last_check_at: Option<DateTime<Utc>>,
    /// The last iteration that ended, successfully or not.
    pub last_iteration: Option<IterationRecord>,
    /// The iteration in progress, if any. Still set after a process died mid-iteration,
    /// until the next start records it as interrupted.
    pub in_progress: Option<InProgress>,
    /// The most recent errors, oldest first, at most [`MAX_ERRORS`].
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

/// How an iteration ended, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// Its number.
    pub number: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (when it was found interrupted, for an interrupted one).
    pub finished_at: DateTime<Utc>,
    /// `ok`, `failed` (an error or panic ended it) or `interrupted` (its process stopped).
    pub outcome: String,
    /// What it did, in words.
    pub summary: String,
}

/// An iteration under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    /// Its number.
    pub number: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What it is doing: `experiment check`, `retrain`, `evaluation gate`, `deploy`.
    pub phase: String,
    /// The process running it.
    pub pid: u32,
    /// That process's identity (`afs_store::process::identity`), so a reused pid is not
    /// taken for it; empty in states written before it was recorded.
    #[serde(default)]
    pub identity: String,
}

/// One recorded error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// When it was recorded (the store's clock).
    pub at: DateTime<Utc>,
    /// The iteration it happened in, if any.
    pub iteration: Option<u64>,
    /// What went wrong.
    pub message: String,
}

impl LoopState {
    /// Reads the status from the store (default when none was saved).
    pub fn load<S: RunStore + ?Sized>(store: &S) -> Result<Self> {
        match store.state(STATE_KEY)? {
            None => Ok(LoopState::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| LoopError::State(e.to_string())),
        }
    }

    /// Writes the status to the store.
    pub fn save<S: RunStore + ?Sized>(&self, store: &S) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| LoopError::State(e.to_string()))?;
        store.put_state(STATE_KEY, &text)?;
        Ok(())
    }

    /// Appends an error, dropping the oldest beyond [`MAX_ERRORS`].
    pub fn push_error(&mut self, at: DateTime<Utc>, iteration: Option<u64>, message: String) {
        self.errors.push(ErrorEntry {
            at,
            iteration,
            message,
        });
        if self.errors.len() > MAX_ERRORS {
            let excess = self.errors.len() - MAX_ERRORS;
            self.errors.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn errors_are_bounded_and_keep_the_newest() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut state = LoopState::default();
        for i in 0..(MAX_ERRORS as u64 + 5) {
            state.push_error(t, Some(i), format!("error {i}"));
        }
        assert_eq!(state.errors.len(), MAX_ERRORS);
        assert_eq!(state.errors[0].message, "error 5");
        assert_eq!(
            state.errors.last().unwrap().message,
            format!("error {}", MAX_ERRORS + 4)
        );
    }
}
