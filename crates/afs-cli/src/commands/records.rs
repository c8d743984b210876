//! `afs records`: stream matching records as JSON lines.

use std::io::{self, BufWriter, Write};

use afs_store::{
    validate_quality, FeedbackFilter, FeedbackValue, Order, Paging, RecordFields, RecordFilter,
    UsageStore,
};
use anyhow::Context;

use crate::cli::{GlobalArgs, RecordsArgs};
use crate::exit::InvalidInput;
use crate::output::{json_text, stdout_error, RecordJson};
use crate::store_open::{configured, open, Create};

/// Writes every record matching `args` to stdout, one JSON object per line, as it is read.
pub(crate) fn run(global: &GlobalArgs, args: &RecordsArgs) -> anyhow::Result<()> {
    if let Some(min_quality) = args.min_quality {
        validate_quality(min_quality)
            .map_err(|err| InvalidInput(format!("--min-quality: {err}")))?;
    }
    let feedback = match (args.min_feedback, args.with_feedback, args.without_feedback) {
        (Some(v), _, _) => {
            let value = FeedbackValue::from_i64(v)
                .map_err(|err| InvalidInput(format!("--min-feedback: {err}")))?;
            FeedbackFilter::AtLeast(value.as_i64())
        }
        (None, true, _) => FeedbackFilter::Present,
        (None, false, true) => FeedbackFilter::Absent,
        (None, false, false) => FeedbackFilter::Any,
    };
    let store = open(configured(global)?, Create::Never)?;
    let now = store.clock().now();
    let filter = RecordFilter {
        since: args.since.map(|t| t.resolve(now)),
        until: args.until.map(|t| t.resolve(now)),
        model: args.model.clone(),
        expert: args.expert.clone(),
        unit_id: args.unit.clone(),
        min_quality: args.min_quality,
        keep_unscored: false,
        feedback,
        limit: args.limit,
        order: if args.newest_first {
            Order::NewestFirst
        } else {
            Order::OldestFirst
        },
        fields: RecordFields::All,
        // Small first pages: the first lines appear at once, and `| head` stops early.
        paging: Paging::Growing,
    };
    tracing::debug!(?filter, "querying records");

    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut line = Vec::with_capacity(1024);
    let mut n_records = 0u64;
    for record in store.query(&filter)? {
        let record = record.context("cannot read records")?;
        line.clear();
        line.extend_from_slice(json_text(&RecordJson::from(&record))?.as_bytes());
        line.push(b'\n');
        out.write_all(&line).map_err(stdout_error)?;
        n_records += 1;
    }
    out.flush().map_err(stdout_error)?;
    tracing::info!(n_records, "records written");
    Ok(())
}
