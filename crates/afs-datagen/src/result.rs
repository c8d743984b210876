//! What a generation run reports: counts per stage, quality statistics, the records used,
//! and progress events for a progress bar.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Format;
use crate::existing::ExistingReport;
use crate::redact::RedactionCounts;

/// Mean, minimum and maximum quality of the new samples written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QualityStats {
    /// Mean quality score.
    pub mean: f64,
    /// Lowest quality score.
    pub min: f64,
    /// Highest quality score.
    pub max: f64,
}

/// The records behind the new samples written: their id and time range (lineage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordSpan {
    /// Smallest record id (ids sort by creation time).
    pub first_id: String,
    /// Largest record id.
    pub last_id: String,
    /// Earliest record timestamp, RFC 3339.
    pub first_timestamp: String,
    /// Latest record timestamp, RFC 3339.
    pub last_timestamp: String,
}

/// The outcome of [`crate::generate`].
///
/// Every candidate is counted by exactly one stage:
///
/// ```text
/// total_candidates = filtered_by_feedback + filtered_by_quality + duplicates_removed
///                  + near_duplicates_removed + existing_duplicates_removed + unpaired
///                  + k × (capped + new_samples)
/// ```
///
/// with `k = 2` for `dpo` (its samples are pairs of records) and `k = 1` otherwise; and
/// `final_count = new_samples + rehearsal_samples`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationResult {
    /// The output format (with a plug-in formatter: the configured format, whose kind of
    /// example it wrote).
    pub format: Format,
    /// The plug-in formatter that wrote the lines ([`crate::Hooks::formatter`]), by name;
    /// `None` (and absent from JSON) with the configured format's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formatter: Option<String>,
    /// Records read from the store (after the since/until/model filters).
    pub total_candidates: u64,
    /// Dropped by the feedback filter (for `dpo`/`kto`: records without feedback -1 or 1).
    pub filtered_by_feedback: u64,
    /// Records the scorer scored (they had no quality score).
    pub scored_records: u64,
    /// Dropped for a quality score below the minimum.
    pub filtered_by_quality: u64,
    /// Exact duplicates of an earlier record (same normalised query and response, before
    /// or after redaction).
    pub duplicates_removed: u64,
    /// Near-duplicates of an earlier record.
    pub near_duplicates_removed: u64,
    /// Records duplicating a sample of the existing file.
    pub existing_duplicates_removed: u64,
    /// `dpo` only: records left without a partner of opposite feedback for their query.
    pub unpaired: u64,
    /// New samples (for `dpo`, pairs) dropped by `max_samples` for lower quality.
    pub capped: u64,
    /// New samples written (for `dpo`, pairs).
    pub new_samples: u64,
    /// Existing samples mixed into the output.
    pub rehearsal_samples: u64,
    /// Lines in the output: `new_samples + rehearsal_samples`.
    pub final_count: u64,
    /// Replacements made by redaction in the samples written, per kind.
    pub redactions: RedactionCounts,
    /// Quality of the records behind the new samples (chosen side for `dpo`); `None`
    /// when there are none.
    pub quality_stats: Option<QualityStats>,
    /// Id and time range of the records behind the new samples; `None` when there are none.
    pub records: Option<RecordSpan>,
    /// What the existing file held, when one was given.
    pub existing: Option<ExistingReport>,
    /// The output file.
    pub output_path: PathBuf,
    /// The manifest written next to it (`<output>.manifest.json`, beside the file a
    /// symbolic link points to); empty when the output is a FIFO or a character device,
    /// which get no manifest.
    pub manifest_path: PathBuf,
    /// BLAKE3 of the output file, 64 hex digits.
    pub output_blake3: String,
    /// Size of the output file in bytes.
    pub output_bytes: u64,
}

/// The stage a [`Progress`] event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the existing file (`done` = lines read; `total` unknown).
    ReadExisting,
    /// `dpo` only: a first pass over the records with feedback, finding the queries that
    /// have both a thumbs-up and a thumbs-down (`done` = records read).
    GroupQueries,
    /// Streaming candidate records from the store (`done` = records read; `total` = the
    /// records the store will return, from its statistics: those of the window that can
    /// pass the feedback filter).
    Scan,
    /// Writing the final output (`done` = lines written; `total` = lines to write).
    Write,
}

/// A progress event; sent every few thousand items and at the end of each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is being done.
    pub stage: Stage,
    /// Items done so far in this stage.
    pub done: u64,
    /// Items in this stage, when known.
    pub total: Option<u64>,
}
