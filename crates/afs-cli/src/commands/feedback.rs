//! `afs feedback`: set or replace the feedback of a record.

use afs_store::{FeedbackValue, UsageStore};
use serde::Serialize;

use crate::cli::{FeedbackArgs, GlobalArgs};
use crate::output::{print_json, print_line};
use crate::store_open::{configured, open, Create};

/// The JSON output of `afs feedback`.
#[derive(Debug, Serialize)]
struct FeedbackJson<'a> {
    id: &'a str,
    user_feedback: i64,
    feedback_text: Option<&'a str>,
}

/// Records the feedback given by `args`.
pub(crate) fn run(global: &GlobalArgs, args: &FeedbackArgs) -> anyhow::Result<()> {
    // clap guarantees exactly one of --value, --up, --down.
    let value = match (args.value, args.up, args.down) {
        (Some(v), _, _) => FeedbackValue::from_i64(v)?,
        (None, true, _) => FeedbackValue::Positive,
        _ => FeedbackValue::Negative,
    };
    let store = open(configured(global)?, Create::Never)?;
    store.record_feedback(&args.id, value, args.text.as_deref())?;
    tracing::info!(id = %args.id, value = value.as_i64(), "feedback recorded");
    if global.json {
        print_json(&FeedbackJson {
            id: &args.id,
            user_feedback: value.as_i64(),
            feedback_text: args.text.as_deref(),
        })
    } else {
        let label = match value {
            FeedbackValue::Positive => "+1 (up)",
            FeedbackValue::Neutral => "0 (neutral)",
            FeedbackValue::Negative => "-1 (down)",
        };
        print_line(&format!("recorded feedback {label} for {}", args.id))
    }
}
