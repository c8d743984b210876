//! The prune archive's line format, one for every backend.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::record::{FeedbackValue, UsageRecord};

/// Writes `records` to a new file at `path`, one [`ArchiveLine`] each, and syncs it; returns
/// how many. The file must not exist (it is created, never replaced); on any error, a read
/// error of `records` included, the partial file is removed and nothing is left behind.
pub fn write_archive(
    path: &Path,
    records: impl IntoIterator<Item = Result<UsageRecord>>,
) -> Result<u64> {
    let io_err = |e: std::io::Error| StoreError::Io {
        context: format!("write archive {}", path.display()),
        source: e,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    let result = (|| {
        let mut out = BufWriter::new(file);
        let mut n = 0u64;
        for record in records {
            serde_json::to_writer(&mut out, &ArchiveLine::from(&record?))
                .map_err(|e| io_err(std::io::Error::other(e)))?;
            out.write_all(b"\n").map_err(io_err)?;
            n += 1;
        }
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// One line of a prune archive: the import format's field names plus the record's id and
/// bookkeeping times, so an archive can be read back by `afs import`. Every backend's
/// `prune` writes its archive with it, one JSON object per line.
#[derive(Debug, Serialize)]
pub struct ArchiveLine<'a> {
    id: &'a str,
    timestamp: String,
    query: &'a str,
    response: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expert: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feedback: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feedback_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feedback_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [crate::Message]>,
}

impl<'a> From<&'a UsageRecord> for ArchiveLine<'a> {
    fn from(r: &'a UsageRecord) -> Self {
        ArchiveLine {
            id: &r.id,
            timestamp: crate::rfc3339(r.timestamp),
            query: &r.query,
            response: &r.response,
            model: &r.model,
            messages: r.messages.as_deref(),
            expert: r.expert.as_deref(),
            latency_ms: r.latency_ms,
            token_count: r.token_count,
            quality_score: r.quality_score,
            feedback: r.feedback.map(FeedbackValue::as_i64),
            feedback_text: r.feedback_text.as_deref(),
            feedback_at: r.feedback_at.map(crate::rfc3339),
            unit: r.unit_id.as_deref(),
            context_hash: r.context_hash.as_deref(),
            created_at: r.created_at.map(crate::rfc3339),
        }
    }
}

/// RFC 3339 text, UTC, microsecond precision: how afs writes times as text (archives, text
/// columns).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
