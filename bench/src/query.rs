//! Figure 4: streaming a filtered query (quality >= 0.7, with feedback): time to the first
//! row and time to stream every matching row.

use std::time::Instant;

use afs_store::{FeedbackFilter, RecordFilter, UsageStore};
use afs_store_sqlite::SqliteStore;
use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::timing::{repeat, Samples};

/// Timings of the filtered query on one log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamTimes {
    /// From calling `query` to holding the first record, fresh iterator each time.
    pub(crate) first_row: Samples,
    /// Streaming every matching record, seconds.
    pub(crate) all_secs: f64,
    /// Matching records.
    pub(crate) n_rows: u64,
}

/// The seed's "good training data" query.
fn filter() -> RecordFilter {
    RecordFilter {
        min_quality: Some(0.7),
        feedback: FeedbackFilter::Present,
        ..RecordFilter::default()
    }
}

/// Times the first row `reps` times, then streams the whole result once.
pub(crate) fn measure(store: &SqliteStore, reps: usize) -> Result<StreamTimes> {
    let filter = filter();
    let first_row = repeat(2, reps, || {
        let mut rows = store.query(&filter)?;
        let first = rows
            .next()
            .context("the filtered query returned no rows")??;
        std::hint::black_box(first);
        Ok(())
    })?;

    let start = Instant::now();
    let mut n_rows = 0u64;
    let mut wrong = 0u64;
    for record in store.query(&filter)? {
        let record = record?;
        if record.feedback.is_none() || record.quality_score.is_none_or(|q| q < 0.7) {
            wrong += 1;
        }
        n_rows += 1;
    }
    let all_secs = start.elapsed().as_secs_f64();
    if wrong > 0 {
        bail!("the filtered query returned {wrong} records that do not match the filter");
    }
    eprintln!(
        "  first row: median {:.3} ms, p95 {:.3} ms; all {n_rows} rows in {:.0} ms",
        first_row.median_ms,
        first_row.p95_ms,
        all_secs * 1000.0
    );
    Ok(StreamTimes {
        first_row,
        all_secs,
        n_rows,
    })
}
