//! `afs log`: log one model call.

use afs_store::{NewUsage, UsageStore};
use serde_json::json;

use crate::cli::{GlobalArgs, LogArgs};
use crate::output::{print_json, print_line};
use crate::store_open::{configured, open, Create};

/// Logs the call described by `args` and prints its id.
pub(crate) fn run(global: &GlobalArgs, args: &LogArgs) -> anyhow::Result<()> {
    let record = NewUsage {
        expert: args.expert.clone(),
        latency_ms: args.latency_ms,
        token_count: args.tokens,
        quality_score: args.quality,
        unit_id: args.unit.clone(),
        context_hash: args.context_hash.clone(),
        ..NewUsage::new(&args.query, &args.response, &args.model)
    };
    let config = configured(global)?;
    // Validate before opening so that bad input does not even create the database file;
    // the store validates again.
    record.validate(config.max_field_bytes())?;
    let id = open(config, Create::IfMissing)?.log(record)?;
    tracing::info!(%id, "logged");
    if global.json {
        print_json(&json!({ "id": id }))
    } else {
        print_line(&id)
    }
}
