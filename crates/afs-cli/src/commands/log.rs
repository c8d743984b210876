//! `afs log`: log one model call.

use afs_store::{Message, NewUsage, UsageStore};
use anyhow::Context;
use serde_json::json;

use crate::cli::{GlobalArgs, LogArgs};
use crate::exit::InvalidInput;
use crate::output::{print_json, print_line};
use crate::store_open::{configured, open, Create};

/// Logs the call described by `args` and prints its id.
pub(crate) fn run(global: &GlobalArgs, args: &LogArgs) -> anyhow::Result<()> {
    let messages = args.messages.as_deref().map(read_messages).transpose()?;
    let mut record = NewUsage {
        messages,
        expert: args.expert.clone(),
        latency_ms: args.latency_ms,
        token_count: args.tokens,
        quality_score: args.quality,
        unit_id: args.unit.clone(),
        context_hash: args.context_hash.clone(),
        ..NewUsage::new(
            args.query.as_deref().unwrap_or_default(),
            args.response.as_deref().unwrap_or_default(),
            &args.model,
        )
    };
    record.fill_turns();
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

/// The conversation of `--messages`: JSON text, or `@FILE` for a file holding it.
fn read_messages(arg: &str) -> anyhow::Result<Vec<Message>> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --messages file {path}"))?,
        None => arg.to_owned(),
    };
    crate::record_json::parse_messages(&text)
        .map_err(|e| InvalidInput(format!("--messages: {e}")).into())
}
