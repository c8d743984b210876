//! Trigger and retrainer settings, with the seed's `TriggerConfig` names and defaults.

use serde::{Deserialize, Serialize};

use crate::error::TriggerError;

/// When to retrain. Field names and defaults follow the seed's `TriggerConfig`; the fields
/// it lacks are marked as afs additions.
///
/// It is also the `[trigger]` section of the afs config file: each field is a key of the
/// same name (`page_hinkley` is the table `[trigger.page_hinkley]`, last so that it
/// serialises after the plain keys), an absent key keeps its default, and an unknown key is
/// refused. [`TriggerConfig::validate`] checks the ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggerConfig {
    /// Retrain once enough quality-scored samples accumulated since the last successful retrain.
    pub enable_sample_count: bool,
    /// How many (default 1000).
    pub min_new_samples: u64,
    /// Retrain on a schedule.
    pub enable_scheduled: bool,
    /// Interval of the schedule, hours (default 168 = weekly).
    pub schedule_interval_hours: f64,
    /// afs: whether the schedule fires on the very first check, before any retrain happened
    /// (default false: the interval is counted from the first check instead).
    pub schedule_on_first_run: bool,
    /// Retrain when recent quality falls below the stored baseline.
    pub enable_quality_drop: bool,
    /// Relative drop that triggers (default 0.1 = 10% below the baseline).
    pub quality_drop_threshold: f64,
    /// afs: the recent window compared with the baseline, hours (default 24).
    pub quality_window_hours: f64,
    /// afs: quality samples the window needs before it is compared (default 50).
    pub min_quality_samples: u64,
    /// afs: also run a Page-Hinkley change detector on the hourly quality stream.
    pub enable_page_hinkley: bool,
    /// Retrain when the share of negative feedback is high.
    pub enable_error_rate: bool,
    /// afs: share of negative feedback among records *with* feedback that triggers (default 0.2).
    pub error_rate_threshold: f64,
    /// afs: the window for the error rate, hours (default 24).
    pub error_rate_window_hours: f64,
    /// afs: feedback events the window needs before the rate counts (default 20).
    pub min_feedback_events: u64,
    /// Hours after a retrain during which nothing but a forced retrain triggers (default 24).
    pub cooldown_hours: f64,
    /// afs: the parameters of the Page-Hinkley detector (`enable_page_hinkley`).
    pub page_hinkley: PageHinkleyConfig,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            enable_sample_count: true,
            min_new_samples: 1000,
            enable_scheduled: true,
            schedule_interval_hours: 168.0,
            schedule_on_first_run: false,
            enable_quality_drop: true,
            quality_drop_threshold: 0.1,
            quality_window_hours: 24.0,
            min_quality_samples: 50,
            enable_page_hinkley: false,
            enable_error_rate: false,
            error_rate_threshold: 0.2,
            error_rate_window_hours: 24.0,
            min_feedback_events: 20,
            cooldown_hours: 24.0,
            page_hinkley: PageHinkleyConfig::default(),
        }
    }
}

/// Page-Hinkley detector settings, tuned for quality scores in [0, 1].
///
/// The detector is fed `1 − quality` per record (so a quality drop is an upward shift) and
/// alarms when the cumulative deviation above the running mean, less `delta` per record,
/// rises `threshold` above its minimum. River's defaults (delta 0.005, threshold 50) are for
/// large-valued streams; for [0, 1] scores with a spread of about 0.15, delta 0.01 and
/// threshold 10 keep the chance of a false alarm per excursion near exp(−2·δ·λ/σ²) ≈ 1e−4
/// while a drop of 0.1 is caught after about 110 records.
///
/// The `[trigger.page_hinkley]` table of the afs config file, key by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageHinkleyConfig {
    /// Records seen before the detector may alarm (default 30).
    pub min_instances: u64,
    /// Tolerated drift per record (default 0.01).
    pub delta: f64,
    /// Alarm level of the cumulative deviation (default 10).
    pub threshold: f64,
    /// Forgetting factor of the cumulative sum, in (0, 1] (default 1: no forgetting).
    pub alpha: f64,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        PageHinkleyConfig {
            min_instances: 30,
            delta: 0.01,
            threshold: 10.0,
            alpha: 1.0,
        }
    }
}

fn check_positive(field: &'static str, value: f64) -> Result<(), TriggerError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(TriggerError::config(
            field,
            format!("{value} must be a number > 0"),
        ));
    }
    Ok(())
}

fn check_unit(field: &'static str, value: f64) -> Result<(), TriggerError> {
    if !value.is_finite() || !(0.0..=1.0).contains(&value) {
        return Err(TriggerError::config(
            field,
            format!("{value} must be within [0, 1]"),
        ));
    }
    Ok(())
}

impl TriggerConfig {
    /// Checks every field; the first problem found names its field.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_positive("schedule_interval_hours", self.schedule_interval_hours)?;
        check_unit("quality_drop_threshold", self.quality_drop_threshold)?;
        check_positive("quality_window_hours", self.quality_window_hours)?;
        check_unit("error_rate_threshold", self.error_rate_threshold)?;
        check_positive("error_rate_window_hours", self.error_rate_window_hours)?;
        if !self.cooldown_hours.is_finite() || self.cooldown_hours < 0.0 {
            return Err(TriggerError::config(
                "cooldown_hours",
                format!("{} must be a number >= 0", self.cooldown_hours),
            ));
        }
        check_positive("page_hinkley.threshold", self.page_hinkley.threshold)?;
        if !self.page_hinkley.delta.is_finite() || self.page_hinkley.delta < 0.0 {
            return Err(TriggerError::config(
                "page_hinkley.delta",
                format!("{} must be a number >= 0", self.page_hinkley.delta),
            ));
        }
        let alpha = self.page_hinkley.alpha;
        if !alpha.is_finite() || alpha <= 0.0 || alpha > 1.0 {
            return Err(TriggerError::config(
                "page_hinkley.alpha",
                format!("{alpha} must be within (0, 1]"),
            ));
        }
        Ok(())
    }
}

/// Settings of the [`crate::AutoRetrainer`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainerConfig {
    /// Refuse to train on fewer samples than this (default 100).
    pub min_samples_for_retrain: u64,
    /// Directory under which each run gets `runs/<run id>/` (default `continuous_output`,
    /// the seed's `output_dir`).
    pub output_dir: std::path::PathBuf,
    /// File name of the dataset inside the run directory (default `train.jsonl`).
    pub dataset_name: String,
}

impl Default for RetrainerConfig {
    fn default() -> Self {
        RetrainerConfig {
            min_samples_for_retrain: 100,
            output_dir: "continuous_output".into(),
            dataset_name: "train.jsonl".into(),
        }
    }
}

/// Converts fractional hours to a `chrono` duration (millisecond precision).
pub(crate) fn hours(h: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((h * 3_600_000.0).round() as i64)
}
