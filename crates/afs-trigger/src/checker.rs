//! `RetrainTrigger`: runs every enabled policy, applies the cooldown, persists the state.

use afs_store::{RunStore, UsageStore};

use crate::config::{hours, TriggerConfig};
use crate::error::TriggerError;
use crate::policy::{policies, CheckContext, Trigger, TriggerResult, TriggerType};
use crate::state::TriggerState;

/// A store the trigger layer can use: the usage log plus run history and state.
pub trait TriggerStore: UsageStore + RunStore {
    /// This store as a plain usage store (for policies, which only read aggregates).
    fn as_usage(&self) -> &dyn UsageStore;
}

impl<S: UsageStore + RunStore> TriggerStore for S {
    fn as_usage(&self) -> &dyn UsageStore {
        self
    }
}

/// Decides whether a retrain is due.
pub struct RetrainTrigger {
    config: TriggerConfig,
    policies: Vec<Box<dyn Trigger>>,
}

impl std::fmt::Debug for RetrainTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrainTrigger")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RetrainTrigger {
    /// A trigger with the enabled policies of `config` (validated).
    pub fn new(config: TriggerConfig) -> Result<Self, TriggerError> {
        config.validate()?;
        let policies = policies(&config);
        Ok(RetrainTrigger { config, policies })
    }

    /// Adds a policy of the caller's own, checked after the configured ones, with the same
    /// rules ([`Trigger`]: called on every check, reads aggregates only; the cooldown
    /// applies to it; the first policy that fires names the result). Its state, if any,
    /// lives in [`TriggerState::custom`] under its name.
    pub fn with_policy(mut self, policy: Box<dyn Trigger>) -> Self {
        self.policies.push(policy);
        self
    }

    /// The settings in force.
    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    /// Checks every policy now. With `force`, the result is a triggered `manual` one
    /// whatever the policies say (the cooldown does not apply). During a cooldown nothing
    /// else triggers. Detector state and the baseline are updated and saved either way.
    ///
    /// The first policy that fires names the result; the metrics of all policies are
    /// reported, prefixed with the policy's type (`sample_count.new_samples`, ...).
    pub fn check<S: TriggerStore + ?Sized>(
        &self,
        store: &S,
        force: bool,
    ) -> Result<TriggerResult, TriggerError> {
        let mut state = TriggerState::load(store)?;
        let now = store.clock().now();
        state.first_check_at.get_or_insert(now);
        let mut results = Vec::with_capacity(self.policies.len());
        {
            let mut ctx = CheckContext {
                store: store.as_usage(),
                now,
                state: &mut state,
            };
            for policy in &self.policies {
                results.push(policy.check(&mut ctx)?);
            }
        }
        state.save(store)?;

        let mut all_metrics = std::collections::BTreeMap::new();
        for r in &results {
            let prefix = r.trigger_type.map_or("", TriggerType::as_str);
            for (k, v) in &r.metrics {
                all_metrics.insert(format!("{prefix}.{k}"), *v);
            }
        }
        let cooldown_left = state
            .last_retrain_at
            .map(|t| t + hours(self.config.cooldown_hours) - now)
            .filter(|left| *left > chrono::Duration::zero());
        let mut result = if force {
            TriggerResult::new(true, TriggerType::Manual, "retrain forced by the operator")
        } else if let Some(left) = cooldown_left {
            let fired: Vec<&str> = results
                .iter()
                .filter(|r| r.triggered)
                .filter_map(|r| r.trigger_type.map(TriggerType::as_str))
                .collect();
            let mut reason = format!(
                "in cooldown for {:.1} more h after the retrain at {}",
                left.num_milliseconds() as f64 / 3_600_000.0,
                state
                    .last_retrain_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
            if !fired.is_empty() {
                reason.push_str(&format!(" (would have triggered: {})", fired.join(", ")));
            }
            TriggerResult {
                triggered: false,
                trigger_type: None,
                reason,
                metrics: Default::default(),
            }
            .metric(
                "cooldown_hours_left",
                left.num_milliseconds() as f64 / 3_600_000.0,
            )
        } else if let Some(fired) = results.iter().find(|r| r.triggered) {
            TriggerResult {
                metrics: Default::default(),
                ..fired.clone()
            }
        } else if results.is_empty() {
            TriggerResult {
                triggered: false,
                trigger_type: None,
                reason: "no trigger policy is enabled".into(),
                metrics: Default::default(),
            }
        } else {
            let reasons: Vec<String> = results.iter().map(|r| r.reason.clone()).collect();
            TriggerResult {
                triggered: false,
                trigger_type: None,
                reason: format!("not triggered: {}", reasons.join("; ")),
                metrics: Default::default(),
            }
        };
        result.metrics.extend(all_metrics);
        Ok(result)
    }
}

/// Records that a retrain started now: the cooldown and the schedule count from here.
pub fn record_retrain_started<S: TriggerStore + ?Sized>(store: &S) -> Result<(), TriggerError> {
    let mut state = TriggerState::load(store)?;
    state.last_retrain_at = Some(store.clock().now());
    state.save(store)
}

/// Records that the retrain that started at `started_at` succeeded: new samples are
/// counted from its start.
pub fn record_retrain_succeeded<S: TriggerStore + ?Sized>(
    store: &S,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), TriggerError> {
    let mut state = TriggerState::load(store)?;
    state.last_success_at = Some(started_at);
    state.save(store)
}

/// Resets the quality baseline and the change detector after a new champion is promoted:
/// quality is judged against the new model's own traffic from now on.
pub fn reset_after_promotion<S: TriggerStore + ?Sized>(store: &S) -> Result<(), TriggerError> {
    let mut state = TriggerState::load(store)?;
    state.reset_quality_reference(store.clock().now());
    state.save(store)
}
