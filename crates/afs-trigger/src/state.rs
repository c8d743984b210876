//! Trigger state persisted in the store, so a restart neither re-triggers nor forgets.

use afs_store::RunStore;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::TriggerError;
use crate::page_hinkley::PageHinkley;

/// The key under which the state is stored (see [`afs_store::RunStore::state`]).
pub const STATE_KEY: &str = "trigger";

/// The quality baseline the quality-drop policy compares against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Mean quality of the window the baseline was taken from.
    pub mean: f64,
    /// Samples in that window.
    pub n: u64,
    /// When it was taken.
    pub set_at: DateTime<Utc>,
}

/// Everything the triggers remember between checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    /// The first check ever made on this database (the schedule counts from it).
    pub first_check_at: Option<DateTime<Utc>>,
    /// When the last retrain started (successful or not): cooldown and schedule count from it.
    pub last_retrain_at: Option<DateTime<Utc>>,
    /// When the last successful retrain started: new samples are counted from it.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The stored quality baseline; reset when a new champion is promoted.
    pub baseline: Option<Baseline>,
    /// Page-Hinkley detector state.
    #[serde(default)]
    pub page_hinkley: PageHinkley,
    /// Hours before this instant have been fed to the detector.
    pub detector_fed_until: Option<DateTime<Utc>>,
    /// The state of the caller's own policies, by policy name: each keeps what it needs
    /// as JSON, saved with the rest after every check.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom: std::collections::BTreeMap<String, serde_json::Value>,
}

impl TriggerState {
    /// Reads the state from the store (default when none was saved).
    pub fn load<S: RunStore + ?Sized>(store: &S) -> Result<Self, TriggerError> {
        match store.state(STATE_KEY)? {
            None => Ok(TriggerState::default()),
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| TriggerError::State(e.to_string()))
            }
        }
    }

    /// Writes the state to the store.
    pub fn save<S: RunStore + ?Sized>(&self, store: &S) -> Result<(), TriggerError> {
        let text = serde_json::to_string(self).map_err(|e| TriggerError::State(e.to_string()))?;
        store.put_state(STATE_KEY, &text)?;
        Ok(())
    }

    /// Forgets the baseline and the detector's history: the next checks learn them afresh
    /// from the new champion's traffic.
    pub fn reset_quality_reference(&mut self, now: DateTime<Utc>) {
        self.baseline = None;
        self.page_hinkley = PageHinkley::default();
        self.detector_fed_until = Some(now);
    }
}
