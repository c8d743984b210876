//! Plug-ins written outside afs, against its public traits only, as a team adds its own:
//!
//! * [`MessagesFormat`]: an output format for training data (a `afs_datagen::Formatter`):
//!   OpenAI's chat fine-tuning lines, `{"messages": [...]}` and nothing else. Passed to
//!   generation in `afs_datagen::Hooks::formatter`.
//! * [`NegativeBurst`]: a retraining policy (an `afs_trigger::Trigger`): retrain when at
//!   least `min_negatives` thumbs-down arrived in the last hour, and more than at the last
//!   check; it keeps that count in the trigger state under its own name. Added with
//!   `afs_trigger::RetrainTrigger::with_policy`.
//! * [`BetaBinomialJudge`]: an experiment judge (an `afs_abtest::Judge`): a Bayesian
//!   beta-binomial rule on the positive-feedback rate that keeps its posterior, its streaks
//!   and its look count in the store's opaque judge state
//!   (`afs_store::SequentialState::state`). Plugged in with `afs_abtest::AbTest::with_judge`.
//!   It is *not* an always-valid test: its docs say what it does and does not guarantee.
//!
//! The tests in `tests/` run them inside afs on a real SQLite store.

use afs_datagen::{unsupported_example, Body, DatagenError, Example, ExampleKind, Formatter};
use afs_store::StatsWindow;
use afs_trigger::{CheckContext, Trigger, TriggerError, TriggerResult, TriggerType};
use chrono::DurationRound;
use serde_json::json;

mod judge;

pub use judge::{prob_greater, BetaBinomialJudge, BetaState};

/// OpenAI's chat fine-tuning format: one `{"messages": [...]}` object per line (a system
/// turn when there is a system prompt, then the user's and the assistant's), no metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagesFormat;

impl Formatter for MessagesFormat {
    fn name(&self) -> &str {
        "openai-messages"
    }

    fn kind(&self) -> ExampleKind {
        ExampleKind::Sft
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let Body::Response(response) = example.body else {
            return Err(unsupported_example(self, example));
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = example.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": example.prompt}));
        messages.push(json!({"role": "assistant", "content": response}));
        // serde_json escapes every control character, so a line never breaks.
        serde_json::to_writer(&mut *out, &json!({ "messages": messages })).map_err(|e| {
            DatagenError::Scorer {
                id: example.metadata.id.unwrap_or_default().to_string(),
                source: Box::new(e),
            }
        })?;
        out.push(b'\n');
        Ok(())
    }
}

/// Retrains after a burst of thumbs-down: at least `min_negatives` in the last hour, and
/// more than the last check saw (so one burst fires once, not at every check while it
/// lasts in the window).
#[derive(Debug, Clone, Copy)]
pub struct NegativeBurst {
    /// Thumbs-down in the last hour that make a burst.
    pub min_negatives: u64,
}

impl NegativeBurst {
    /// The policy's name: its [`TriggerType::Custom`] and its key in the trigger state.
    pub const NAME: &'static str = "negative_burst";
}

impl Trigger for NegativeBurst {
    fn trigger_type(&self) -> TriggerType {
        TriggerType::Custom(Self::NAME)
    }

    fn check(&self, ctx: &mut CheckContext<'_>) -> Result<TriggerResult, TriggerError> {
        // Aggregates only, as every policy: a window from a minute boundary to now reads
        // the store's rollups whole, never a scan of the log.
        let start = ctx.now - chrono::Duration::hours(1);
        let window = StatsWindow {
            since: Some(
                start
                    .duration_trunc(chrono::Duration::minutes(1))
                    .unwrap_or(start),
            ),
            until: Some(ctx.now),
            model: None,
        };
        let negatives = ctx.store.stats(&window)?.negative_feedback;
        let seen = ctx
            .state
            .custom
            .get(Self::NAME)
            .and_then(|v| v["negatives"].as_u64())
            .unwrap_or(0);
        ctx.state
            .custom
            .insert(Self::NAME.to_string(), json!({ "negatives": negatives }));
        let fired = negatives >= self.min_negatives && negatives > seen;
        let reason = if fired {
            format!(
                "{negatives} thumbs-down in the last hour (at least {})",
                self.min_negatives
            )
        } else {
            format!(
                "{negatives} thumbs-down in the last hour ({} needed, {seen} at the last check)",
                self.min_negatives
            )
        };
        Ok(TriggerResult::new(fired, self.trigger_type(), reason)
            .metric("negatives_last_hour", negatives as f64))
    }
}
