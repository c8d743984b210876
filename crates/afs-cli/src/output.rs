//! What `afs` prints on stdout: the JSON shapes of records and statistics, and writers that
//! treat a closed stdout as a normal end.

use std::io::{self, Write};

use afs_store::{RetrainRun, UsageRecord, UsageStats};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::exit::StdoutClosed;

/// Formats a time as RFC 3339 in UTC with a `Z` suffix and only the fraction digits needed.
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Natural order of names: runs of digits compare as numbers, so `v2` comes before `v10`;
/// the rest compares as text. Names equal by that rule fall back to plain order.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let dx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let dy = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (nx, ny) = (&x[..dx], &y[..dy]);
                // Compare the numbers without parsing: leading zeros off, then length, then
                // digits.
                let strip = |n: &[u8]| {
                    let zeros = n.iter().take_while(|&&c| c == b'0').count();
                    n[zeros.min(n.len().saturating_sub(1))..].to_vec()
                };
                let (sx, sy) = (strip(nx), strip(ny));
                let order = sx.len().cmp(&sy.len()).then_with(|| sx.cmp(&sy));
                if order != Ordering::Equal {
                    return order;
                }
                x = &x[dx..];
                y = &y[dy..];
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// `n` and a noun, plural unless `n` is 1: "1 record", "3 records".
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Converts a write error on stdout: a broken pipe becomes [`StdoutClosed`].
pub(crate) fn stdout_error(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(err).context("cannot write to stdout")
    }
}

/// Prints `text` and a newline on stdout.
pub(crate) fn print_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// Writes `bytes` to stdout as they are.
pub(crate) fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// The version of the JSON that afs writes: its `--json` documents and the bodies of its
/// HTTP API (sent as the `Afs-Schema-Version` header). It changes only with a change that
/// could break a reader; what may change without it is in docs/CLI.md (JSON output).
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The environment variable that wraps every JSON document afs writes (stdout, and errors on
/// stderr) as `{"schema_version": N, "data": DOCUMENT}`.
pub(crate) const ENVELOPE_ENV: &str = "AFS_JSON_ENVELOPE";

/// Whether [`ENVELOPE_ENV`] asks for the envelope (`1` or `true`), read once.
fn envelope() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var(ENVELOPE_ENV)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
    })
}

/// `value` as one JSON document: as it is, or in the envelope that names the schema version
/// when [`ENVELOPE_ENV`] asks for it.
pub(crate) fn json_text(value: &impl Serialize) -> serde_json::Result<String> {
    if envelope() {
        serde_json::to_string(&serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "data": value,
        }))
    } else {
        serde_json::to_string(value)
    }
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = json_text(value)?;
    print_line(&text)
}

/// A record as printed by `afs records`: every field, times in RFC 3339.
#[derive(Debug, Serialize)]
pub(crate) struct RecordJson<'a> {
    id: &'a str,
    timestamp: String,
    query: &'a str,
    response: &'a str,
    model: &'a str,
    expert: Option<&'a str>,
    latency_ms: Option<f64>,
    token_count: Option<i64>,
    quality_score: Option<f64>,
    user_feedback: Option<i64>,
    feedback_text: Option<&'a str>,
    feedback_at: Option<String>,
    unit: Option<&'a str>,
    context_hash: Option<&'a str>,
    dedupe_hash: Option<&'a str>,
    created_at: Option<String>,
    /// Only for a multi-turn record, so single-turn output keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [afs_store::Message]>,
}

impl<'a> From<&'a UsageRecord> for RecordJson<'a> {
    fn from(record: &'a UsageRecord) -> Self {
        RecordJson {
            id: &record.id,
            timestamp: rfc3339(record.timestamp),
            query: &record.query,
            response: &record.response,
            model: &record.model,
            expert: record.expert.as_deref(),
            latency_ms: record.latency_ms,
            token_count: record.token_count,
            quality_score: record.quality_score,
            user_feedback: record.feedback.map(|f| f.as_i64()),
            feedback_text: record.feedback_text.as_deref(),
            feedback_at: record.feedback_at.map(rfc3339),
            unit: record.unit_id.as_deref(),
            context_hash: record.context_hash.as_deref(),
            dedupe_hash: record.dedupe_hash.as_deref(),
            created_at: record.created_at.map(rfc3339),
            messages: record.messages.as_deref(),
        }
    }
}

/// Statistics as printed by `afs stats`: the seed's field names first, then the extras.
#[derive(Debug, Serialize)]
pub(crate) struct StatsJson {
    total: u64,
    with_feedback: u64,
    positive_feedback: u64,
    negative_feedback: u64,
    avg_quality_score: Option<f64>,
    avg_latency_ms: Option<f64>,
    total_tokens: i64,
    feedback_rate: f64,
    neutral_feedback: u64,
    quality_samples: u64,
    quality_stddev: Option<f64>,
    positive_rate: Option<f64>,
    negative_rate: Option<f64>,
}

impl From<&UsageStats> for StatsJson {
    fn from(stats: &UsageStats) -> Self {
        StatsJson {
            total: stats.total,
            with_feedback: stats.with_feedback,
            positive_feedback: stats.positive_feedback,
            negative_feedback: stats.negative_feedback,
            avg_quality_score: stats.avg_quality_score(),
            avg_latency_ms: stats.avg_latency_ms(),
            total_tokens: stats.total_tokens,
            feedback_rate: stats.feedback_rate(),
            neutral_feedback: stats.neutral_feedback,
            quality_samples: stats.n_quality,
            quality_stddev: stats.quality_variance().map(f64::sqrt),
            positive_rate: stats.positive_rate(),
            negative_rate: stats.negative_rate(),
        }
    }
}

/// A retrain run as printed by `afs runs` and `afs retrain`: times in RFC 3339, the trigger's
/// reason and the trainer's metrics parsed from the JSON the store keeps.
#[derive(Debug, Serialize)]
pub(crate) struct RunJson<'a> {
    id: &'a str,
    status: &'static str,
    trigger_type: &'a str,
    trigger_reason: Option<String>,
    started_at: String,
    finished_at: Option<String>,
    /// Seconds from start to finish; null while running.
    duration_secs: Option<f64>,
    n_samples: Option<u64>,
    dataset_path: Option<&'a str>,
    model_path: Option<&'a str>,
    metrics: Option<serde_json::Value>,
    error: Option<&'a str>,
    run_dir: &'a str,
}

impl<'a> From<&'a RetrainRun> for RunJson<'a> {
    fn from(run: &'a RetrainRun) -> Self {
        let trigger_reason = serde_json::from_str::<serde_json::Value>(&run.trigger)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string));
        RunJson {
            id: &run.id,
            status: run.status.as_str(),
            trigger_type: &run.trigger_type,
            trigger_reason,
            started_at: rfc3339(run.started_at),
            finished_at: run.finished_at.map(rfc3339),
            duration_secs: run
                .finished_at
                .map(|end| (end - run.started_at).num_milliseconds() as f64 / 1000.0),
            n_samples: run.n_samples,
            dataset_path: run.dataset_path.as_deref(),
            model_path: run.model_path.as_deref(),
            // Metrics are stored as JSON text; shown as JSON, or as a string if unreadable.
            metrics: run.metrics.as_deref().map(|text| {
                serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
            }),
            error: run.error.as_deref(),
            run_dir: &run.run_dir,
        }
    }
}

/// A duration in seconds, short: `0.4s`, `42s`, `3m05s`, `2h01m`.
pub(crate) fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_string();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let whole = secs.round() as u64;
    match whole {
        0..=59 => format!("{whole}s"),
        60..=3599 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

/// Lays out rows of cells as an aligned text table: the first column left-aligned, the
/// others right-aligned, two spaces between columns, no trailing spaces.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    aligned(rows, true)
}

/// An aligned table with every column left-aligned (the last one not padded).
pub(crate) fn left_table(rows: &[Vec<String>]) -> String {
    aligned(rows, false)
}

/// Rows of cells padded to their column's widest cell, two spaces apart, each line without
/// trailing spaces; the columns after the first right-aligned when `right`.
fn aligned(rows: &[Vec<String>], right: bool) -> String {
    let n_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let width = widths[c];
            if c == 0 {
                line.push_str(&format!("{cell:<width$}"));
            } else if right {
                line.push_str(&format!("  {cell:>width$}"));
            } else {
                line.push_str(&format!("  {cell:<width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The JSON type of `value`, with an article ("a number", "an object", "null"), for error
/// messages about input (import lines, HTTP bodies).
pub(crate) fn json_type_name(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value's JSON type, and the value itself when it is short.
pub(crate) fn describe_json_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Number(_) | Value::Bool(_) => format!("{} ({value})", json_type_name(value)),
        Value::String(s) if s.len() <= 40 => format!("a string ({value})"),
        _ => json_type_name(value).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["model".to_string(), "total".to_string()],
            vec!["a-long-name".to_string(), "7".to_string()],
            vec!["b".to_string(), "1234".to_string()],
        ];
        assert_eq!(
            table(&rows),
            "model        total\na-long-name      7\nb             1234\n"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(0.42), "0.4s");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7260.0), "2h01m");
        assert_eq!(duration(-1.0), "-");
    }

    #[test]
    fn times_are_utc_with_z() {
        let at = DateTime::parse_from_rfc3339("2025-01-02T05:04:05.120+02:00").unwrap();
        assert_eq!(rfc3339(at.with_timezone(&Utc)), "2025-01-02T03:04:05.120Z");
    }

    #[test]
    fn left_table_aligns_every_column_left() {
        let rows = vec![
            vec!["id".to_string(), "status".to_string(), "x".to_string()],
            vec!["1".to_string(), "ok".to_string(), "long text".to_string()],
        ];
        assert_eq!(left_table(&rows), "id  status  x\n1   ok      long text\n");
    }
}

#[cfg(test)]
mod natural_order_tests {
    use super::natural_cmp;

    #[test]
    fn numbers_inside_names_compare_as_numbers() {
        let mut names = vec!["nayru-v10", "nayru-v2", "nayru-v1", "alpha", "nayru-v02x"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["alpha", "nayru-v1", "nayru-v2", "nayru-v02x", "nayru-v10"]
        );
    }
}
