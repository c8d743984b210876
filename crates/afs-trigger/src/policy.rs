//! Trigger policies: each decides on its own whether a retrain is due.

use std::collections::BTreeMap;

use afs_store::{StatsWindow, UsageStore};
use chrono::{DateTime, DurationRound, Utc};
use serde::Serialize;

use crate::config::{hours, PageHinkleyConfig, TriggerConfig};
use crate::error::TriggerError;
use crate::state::{Baseline, TriggerState};

/// Which policy produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerType {
    /// Enough new quality samples.
    SampleCount,
    /// The schedule's interval elapsed.
    Scheduled,
    /// Recent quality fell below the baseline.
    QualityDrop,
    /// The Page-Hinkley detector saw a change in quality.
    QualityChange,
    /// Too much negative feedback.
    ErrorRate,
    /// Forced by an operator.
    Manual,
    /// A policy of the caller's own ([`RetrainTrigger::with_policy`]), by its name
    /// (snake_case, e.g. `"holiday_freeze"`): the name the run history and JSON show.
    ///
    /// [`RetrainTrigger::with_policy`]: crate::RetrainTrigger::with_policy
    Custom(&'static str),
}

impl Serialize for TriggerType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl TriggerType {
    /// The snake_case name used in JSON and the run history.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerType::SampleCount => "sample_count",
            TriggerType::Scheduled => "scheduled",
            TriggerType::QualityDrop => "quality_drop",
            TriggerType::QualityChange => "quality_change",
            TriggerType::ErrorRate => "error_rate",
            TriggerType::Manual => "manual",
            TriggerType::Custom(name) => name,
        }
    }
}

/// The outcome of a check (the seed's `TriggerResult`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerResult {
    /// Whether a retrain is due.
    pub triggered: bool,
    /// The policy that fired, or the one reporting when none did (`None` when no policy ran).
    pub trigger_type: Option<TriggerType>,
    /// Why, in words.
    pub reason: String,
    /// The figures behind the decision.
    pub metrics: BTreeMap<String, f64>,
}

impl TriggerResult {
    /// A result of the policy `trigger_type`, without metrics.
    pub fn new(triggered: bool, trigger_type: TriggerType, reason: impl Into<String>) -> Self {
        TriggerResult {
            triggered,
            trigger_type: Some(trigger_type),
            reason: reason.into(),
            metrics: BTreeMap::new(),
        }
    }

    /// The result with one more figure behind it (`name` without the policy's prefix).
    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.to_string(), value);
        self
    }
}

/// What a policy may read and update during one check.
pub struct CheckContext<'a> {
    /// The usage log (policies read its aggregates only).
    pub store: &'a dyn UsageStore,
    /// The time of the check.
    pub now: DateTime<Utc>,
    /// Persisted state; policies may update their part, the checker saves it afterwards.
    pub state: &'a mut TriggerState,
}

/// A retraining policy.
///
/// `check` is called once per check, in a fixed order, whether or not an earlier policy
/// fired and even during a cooldown (so stateful detectors keep consuming the stream). It
/// must read only the store's aggregates, never scan the log, and must leave `ctx.state`
/// consistent for the next call: the caller persists it after all policies ran.
pub trait Trigger: Send + Sync {
    /// The policy's type.
    fn trigger_type(&self) -> TriggerType;

    /// Evaluates the policy at `ctx.now`.
    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError>;
}

/// The last `h` hours before `now`, at minute resolution: the window starts at the start of
/// the minute `h` hours ago. Both ends then cost the store no scan of records, whatever
/// arrived: a start on a minute boundary reads whole buckets, and an end at or after the
/// newest record reads its last buckets whole (see `afs_store::UsageStore::stats`).
fn window(now: DateTime<Utc>, h: f64) -> StatsWindow {
    StatsWindow {
        since: Some(floor_minute(now - hours(h))),
        until: Some(now),
        model: None,
    }
}

/// `t` rounded down to its minute.
fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(t)
}

/// `t` rounded up to a minute boundary.
fn ceil_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_minute(t);
    if floor == t {
        t
    } else {
        floor + chrono::Duration::minutes(1)
    }
}

/// Quality samples accumulated since the last successful retrain (all time before the first).
pub struct SampleCount {
    /// Samples needed.
    pub min_new_samples: u64,
}

impl Trigger for SampleCount {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::SampleCount
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        let since = ctx.state.last_success_at;
        // From the minute after the retrain's: samples of its own minute likely went into
        // its data, and a minute boundary costs the store no scan of records.
        let n = ctx
            .store
            .count_quality_samples(since.map(ceil_minute), None)?;
        let triggered = n >= self.min_new_samples;
        let since_text = since.map_or("the start of the log".to_string(), |t| {
            format!("the last successful retrain at {t}")
        });
        let reason = if triggered {
            format!(
                "{n} new quality samples since {since_text} (threshold {})",
                self.min_new_samples
            )
        } else {
            format!(
                "{n} of {} new quality samples since {since_text}",
                self.min_new_samples
            )
        };
        Ok(TriggerResult::new(triggered, self.trigger_type(), reason)
            .metric("new_samples", n as f64)
            .metric("min_new_samples", self.min_new_samples as f64))
    }
}

/// The schedule: an interval since the last retrain.
pub struct Schedule {
    /// Interval, hours.
    pub interval_hours: f64,
    /// Whether the very first check (no retrain ever) triggers.
    pub on_first_run: bool,
}

impl Trigger for Schedule {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::Scheduled
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        let (from, what) = match (ctx.state.last_retrain_at, self.on_first_run) {
            (Some(t), _) => (t, "the last retrain"),
            (None, true) => {
                return Ok(TriggerResult::new(
                    true,
                    self.trigger_type(),
                    "no retrain has run yet and the schedule fires on the first run",
                )
                .metric("interval_hours", self.interval_hours));
            }
            (None, false) => (
                ctx.state.first_check_at.unwrap_or(ctx.now),
                "the first check",
            ),
        };
        let elapsed = (ctx.now - from).num_milliseconds() as f64 / 3_600_000.0;
        let triggered = elapsed >= self.interval_hours;
        let reason = format!(
            "{elapsed:.1} h since {what} (interval {} h)",
            self.interval_hours
        );
        Ok(TriggerResult::new(triggered, self.trigger_type(), reason)
            .metric("hours_since", elapsed)
            .metric("interval_hours", self.interval_hours))
    }
}

/// Recent quality against a stored baseline.
pub struct QualityDrop {
    /// Relative drop that triggers.
    pub threshold: f64,
    /// Recent window, hours.
    pub window_hours: f64,
    /// Samples the window needs.
    pub min_samples: u64,
}

impl Trigger for QualityDrop {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::QualityDrop
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        let stats = ctx.store.stats(&window(ctx.now, self.window_hours))?;
        let n = stats.n_quality;
        let Some(recent) = stats.avg_quality_score().filter(|_| n >= self.min_samples) else {
            return Ok(TriggerResult::new(
                false,
                self.trigger_type(),
                format!(
                    "only {n} quality samples in the last {} h (need {})",
                    self.window_hours, self.min_samples
                ),
            )
            .metric("window_samples", n as f64));
        };
        let Some(baseline) = ctx.state.baseline.clone() else {
            ctx.state.baseline = Some(Baseline {
                mean: recent,
                n,
                set_at: ctx.now,
            });
            return Ok(TriggerResult::new(
                false,
                self.trigger_type(),
                format!("baseline set to {recent:.4} from {n} samples"),
            )
            .metric("baseline", recent)
            .metric("recent_quality", recent)
            .metric("window_samples", n as f64));
        };
        let drop = if baseline.mean > 0.0 {
            (baseline.mean - recent) / baseline.mean
        } else {
            0.0
        };
        let triggered = drop > self.threshold;
        let reason = format!(
            "recent quality {recent:.4} is {:.1}% {} the baseline {:.4} (threshold {:.1}%)",
            drop.abs() * 100.0,
            if drop >= 0.0 { "below" } else { "above" },
            baseline.mean,
            self.threshold * 100.0
        );
        Ok(TriggerResult::new(triggered, self.trigger_type(), reason)
            .metric("baseline", baseline.mean)
            .metric("recent_quality", recent)
            .metric("relative_drop", drop)
            .metric("threshold", self.threshold)
            .metric("window_samples", n as f64))
    }
}

/// Page-Hinkley change detection on the hourly quality stream.
pub struct QualityChange {
    /// Detector parameters.
    pub config: PageHinkleyConfig,
    /// How far back the detector starts on its first check, hours.
    pub warmup_hours: f64,
}

impl Trigger for QualityChange {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::QualityChange
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        // Feed only complete hours, each exactly once.
        let this_hour = ctx
            .now
            .duration_trunc(chrono::Duration::hours(1))
            .unwrap_or(ctx.now);
        let from = ctx
            .state
            .detector_fed_until
            .unwrap_or(this_hour - hours(self.warmup_hours));
        if from < this_hour {
            let by_hour = ctx.store.stats_by_hour(&StatsWindow {
                since: Some(from),
                until: Some(this_hour),
                model: None,
            })?;
            for stats in by_hour.values() {
                if let Some(mean) = stats.avg_quality_score() {
                    ctx.state
                        .page_hinkley
                        .update(&self.config, stats.n_quality, mean);
                }
            }
            ctx.state.detector_fed_until = Some(this_hour);
        }
        let ph = &ctx.state.page_hinkley;
        let triggered = ph.alarm(&self.config);
        let reason = if triggered {
            format!(
                "Page-Hinkley detected a quality drop (statistic {:.2} > {})",
                ph.statistic(),
                self.config.threshold
            )
        } else {
            format!(
                "Page-Hinkley statistic {:.2} of {} after {} samples",
                ph.statistic(),
                self.config.threshold,
                ph.n
            )
        };
        Ok(TriggerResult::new(triggered, self.trigger_type(), reason)
            .metric("ph_statistic", ph.statistic())
            .metric("ph_threshold", self.config.threshold)
            .metric("ph_samples", ph.n as f64)
            .metric("ph_mean_quality", 1.0 - ph.mean))
    }
}

/// Negative feedback among records *with* feedback in a recent window.
pub struct ErrorRate {
    /// Rate that triggers.
    pub threshold: f64,
    /// Window, hours.
    pub window_hours: f64,
    /// Feedback events the window needs.
    pub min_feedback: u64,
}

impl Trigger for ErrorRate {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::ErrorRate
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        let stats = ctx.store.stats(&window(ctx.now, self.window_hours))?;
        let events = stats.with_feedback;
        let result = |triggered, reason: String| {
            TriggerResult::new(triggered, TriggerType::ErrorRate, reason)
                .metric("feedback_events", events as f64)
                .metric("negative_feedback", stats.negative_feedback as f64)
                .metric("threshold", self.threshold)
        };
        let Some(rate) = stats
            .negative_rate()
            .filter(|_| events >= self.min_feedback)
        else {
            return Ok(result(
                false,
                format!(
                    "only {events} feedback events in the last {} h (need {})",
                    self.window_hours, self.min_feedback
                ),
            ));
        };
        let triggered = rate > self.threshold;
        let reason = format!(
            "{:.1}% of {events} feedback events in the last {} h were negative (threshold {:.1}%)",
            rate * 100.0,
            self.window_hours,
            self.threshold * 100.0
        );
        Ok(result(triggered, reason).metric("error_rate", rate))
    }
}

/// The enabled policies of a config, in evaluation order: the most urgent first.
pub fn policies(config: &TriggerConfig) -> Vec<Box<dyn Trigger>> {
    let mut out: Vec<Box<dyn Trigger>> = Vec::new();
    if config.enable_quality_drop {
        out.push(Box::new(QualityDrop {
            threshold: config.quality_drop_threshold,
            window_hours: config.quality_window_hours,
            min_samples: config.min_quality_samples,
        }));
    }
    if config.enable_page_hinkley {
        out.push(Box::new(QualityChange {
            config: config.page_hinkley.clone(),
            warmup_hours: 7.0 * 24.0,
        }));
    }
    if config.enable_error_rate {
        out.push(Box::new(ErrorRate {
            threshold: config.error_rate_threshold,
            window_hours: config.error_rate_window_hours,
            min_feedback: config.min_feedback_events,
        }));
    }
    if config.enable_sample_count {
        out.push(Box::new(SampleCount {
            min_new_samples: config.min_new_samples,
        }));
    }
    if config.enable_scheduled {
        out.push(Box::new(Schedule {
            interval_hours: config.schedule_interval_hours,
            on_first_run: config.schedule_on_first_run,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_start_on_minute_boundaries() {
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 12, 30, 45).unwrap()
            + chrono::Duration::milliseconds(250);
        let w = window(now, 24.0);
        assert_eq!(
            w.since,
            Some(Utc.with_ymd_and_hms(2026, 4, 30, 12, 30, 0).unwrap())
        );
        assert_eq!(w.until, Some(now));
        let on = Utc.with_ymd_and_hms(2026, 5, 1, 12, 30, 0).unwrap();
        assert_eq!(floor_minute(on), on);
        assert_eq!(ceil_minute(on), on);
        assert_eq!(ceil_minute(now), on + chrono::Duration::minutes(1));
        assert_eq!(floor_minute(now), on);
    }
}
