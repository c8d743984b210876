//! The results table (each figure with its target, PASS/MISS and the Python seed's figure)
//! and the JSON summary.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{ImportResult, LogResults, Results};

/// The seed's figures, measured on this machine on a 100k-record workload.
mod seed {
    pub(super) const LOG: &str = "493 rec/s";
    pub(super) const STATS: &str = "68 ms (stats @100k)";
    pub(super) const TRIGGER: &str = "325 ms (all checks @100k), linear";
    pub(super) const QUERY: &str = "748 ms (whole query @100k)";
    pub(super) const SIZE: &str = "1,824 B/rec";
}

/// Targets of the issue "Workspace, CI and the usage store".
mod target {
    pub(super) const LOG_RATE: f64 = 10_000.0;
    pub(super) const IMPORT_RATE: f64 = 40_000.0;
    pub(super) const STATS_MS: f64 = 5.0;
    /// "Flat as the log grows": the 10x larger log may cost at most this much more.
    pub(super) const STATS_GROWTH: f64 = 1.5;
    pub(super) const FIRST_ROW_MS: f64 = 10.0;
    pub(super) const BYTES_PER_RECORD: f64 = 1824.0;
}

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Status {
    /// Target met.
    Pass,
    /// Target missed.
    Miss,
    /// No target: shown for information.
    Info,
    /// Could not be measured.
    Error,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Miss => "MISS",
            Status::Info => "info",
            Status::Error => "ERROR",
        }
    }

    fn of(pass: bool) -> Status {
        if pass {
            Status::Pass
        } else {
            Status::Miss
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// Stable identifier for scripts, e.g. `stats.window.1m`.
    id: String,
    /// Which figure of the issue this belongs to (1 to 5); 0 for background information.
    group: u8,
    /// What was measured.
    label: String,
    /// The measured number, in `unit`.
    value: Option<f64>,
    unit: &'static str,
    /// The measured number as printed.
    measured: String,
    target: String,
    status: Status,
    /// The Python seed's figure, for context.
    seed: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl Figure {
    fn new(
        group: u8,
        id: impl Into<String>,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            id: id.into(),
            group,
            label: label.into(),
            value: Some(value),
            unit,
            measured: format_value(value, unit),
            target: "-".into(),
            status: Status::Info,
            seed: "-".into(),
            note: None,
        }
    }

    fn error(group: u8, id: &str, label: impl Into<String>, reason: impl Into<String>) -> Self {
        Figure {
            value: None,
            measured: "-".into(),
            status: Status::Error,
            note: Some(reason.into()),
            ..Figure::new(group, id, label, 0.0, "")
        }
    }

    fn at_least(mut self, target: f64) -> Self {
        self.target = format!(">= {}", format_value(target, self.unit));
        self.status = Status::of(self.value.is_some_and(|v| v >= target));
        self
    }

    fn at_most(mut self, target: f64) -> Self {
        self.target = format!("<= {}", format_value(target, self.unit));
        self.status = Status::of(self.value.is_some_and(|v| v <= target));
        self
    }

    fn target(mut self, text: impl Into<String>, pass: bool) -> Self {
        self.target = text.into();
        self.status = Status::of(pass);
        self
    }

    fn seed(mut self, text: &str) -> Self {
        self.seed = text.into();
        self
    }

    fn measured(mut self, text: String) -> Self {
        self.measured = text;
        self
    }

    fn note(mut self, text: impl Into<String>) -> Self {
        self.note = Some(text.into());
        self
    }

    /// Marks a figure whose run produced a wrong result: its number means nothing.
    fn wrong(mut self, reason: String) -> Self {
        self.status = Status::Error;
        self.note = Some(reason);
        self
    }
}

/// `100000` as `100k`, `1000000` as `1M`.
pub(crate) fn short_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn format_ms(ms: f64) -> String {
    match ms {
        ms if ms < 10.0 => format!("{ms:.3}"),
        ms if ms < 100.0 => format!("{ms:.2}"),
        ms if ms < 1000.0 => format!("{ms:.1}"),
        ms => thousands(ms.round() as u64),
    }
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{} ms", format_ms(value)),
        "x" => format!("{value:.2}x"),
        "" => String::new(),
        unit => format!("{} {unit}", thousands(value.round().max(0.0) as u64)),
    }
}

fn ms_with_p95(median_ms: f64, p95_ms: f64) -> String {
    format!("{} ms (p95 {})", format_ms(median_ms), format_ms(p95_ms))
}

/// Every figure of `results`, in the order.
pub(crate) fn figures(results: &Results) -> Vec<Figure> {
    let mut rows = Vec::new();
    let small = short_count(results.sizes.small);
    let big = short_count(results.sizes.big);

    if let Some(rates) = &results.logging {
        let one = Figure::new(
            1,
            "log.threads_1",
            "Log one call at a time, 1 thread",
            rates.one_thread,
            "rec/s",
        )
        .at_least(target::LOG_RATE)
        .seed(seed::LOG);
        let ratio = rates.many_threads / rates.one_thread;
        let many = Figure::new(
            1,
            format!("log.threads_{}", rates.threads),
            format!("Log one call at a time, {} threads", rates.threads),
            rates.many_threads,
            "rec/s",
        )
        .measured(format!(
            "{} ({ratio:.2}x 1 thread)",
            format_value(rates.many_threads, "rec/s")
        ))
        .target("> 1 thread", ratio > 1.0);
        if rates.lost > 0 {
            let why = format!("{} logged records are missing from the log", rates.lost);
            rows.push(one.wrong(why.clone()));
            rows.push(many.wrong(why));
        } else {
            rows.push(one);
            rows.push(many);
        }
    }

    let import_label = format!(
        "afs import of {} JSONL records",
        short_count(results.sizes.import)
    );
    match &results.import {
        None => {}
        Some(ImportResult::Ok(outcome)) => rows.push(
            Figure::new(
                2,
                "import",
                import_label,
                outcome.n_records as f64 / outcome.secs,
                "rec/s",
            )
            .at_least(target::IMPORT_RATE)
            .seed("n/a (no import)")
            .note(format!(
                "import: {:.2} s wall time for a {:.0} MB file",
                outcome.secs,
                outcome.file_bytes as f64 / 1e6
            )),
        ),
        Some(ImportResult::Error(reason)) => {
            rows.push(Figure::error(2, "import", import_label, reason.clone()))
        }
    }

    let logs: Vec<(&LogResults, String)> =
        [(&results.small, small.clone()), (&results.big, big.clone())]
            .into_iter()
            .filter_map(|(log, name)| log.as_ref().map(|log| (log, name)))
            .collect();

    for (log, name) in &logs {
        let Some(stats) = &log.stats else { continue };
        let mut row = Figure::new(
            3,
            format!("stats.window.{}", name.to_lowercase()),
            format!("stats_by_model, 7-day window, {name} log"),
            stats.window.median_ms,
            "ms",
        )
        .at_most(target::STATS_MS)
        .measured(ms_with_p95(stats.window.median_ms, stats.window.p95_ms))
        .seed(seed::STATS);
        if stats.all_time_total != log.n_records {
            row = row.wrong(format!(
                "all-time statistics count {} records in a log of {}",
                stats.all_time_total, log.n_records
            ));
        }
        rows.push(row);
    }
    if let (Some(small_stats), Some(big_stats)) = (
        results.small.as_ref().and_then(|l| l.stats.as_ref()),
        results.big.as_ref().and_then(|l| l.stats.as_ref()),
    ) {
        let ratio = big_stats.window.median_ms / small_stats.window.median_ms;
        rows.push(
            Figure::new(
                3,
                "stats.window.growth",
                format!("  same, {big} / {small} log (flat?)"),
                ratio,
                "x",
            )
            .target(
                format!("<= {:.1}x (flat)", target::STATS_GROWTH),
                ratio <= target::STATS_GROWTH,
            )
            .seed("grows with the log"),
        );
    }
    for (log, name) in &logs {
        let Some(stats) = &log.stats else { continue };
        let id = name.to_lowercase();
        rows.push(
            Figure::new(
                3,
                format!("stats.all_time.{id}"),
                format!("stats, all time, {name} log"),
                stats.all_time.median_ms,
                "ms",
            )
            .measured(ms_with_p95(stats.all_time.median_ms, stats.all_time.p95_ms))
            .seed(seed::STATS),
        );
        rows.push(
            Figure::new(
                3,
                format!("trigger.{id}"),
                format!("count_quality_samples (trigger check), {name} log"),
                stats.trigger.median_ms,
                "ms",
            )
            .measured(ms_with_p95(stats.trigger.median_ms, stats.trigger.p95_ms))
            .seed(seed::TRIGGER),
        );
    }

    for (log, name) in logs.iter().rev() {
        let Some(stream) = &log.stream else { continue };
        let id = name.to_lowercase();
        let mut row = Figure::new(
            4,
            format!("query.first_row.{id}"),
            format!("Query q>=0.7 + feedback: first row, {name} log"),
            stream.first_row.median_ms,
            "ms",
        )
        .measured(ms_with_p95(
            stream.first_row.median_ms,
            stream.first_row.p95_ms,
        ))
        .seed(seed::QUERY);
        if log.n_records == results.sizes.big {
            row = row.at_most(target::FIRST_ROW_MS);
        }
        rows.push(row);
    }
    for (log, name) in logs.iter().rev() {
        let Some(stream) = &log.stream else { continue };
        rows.push(
            Figure::new(
                4,
                format!("query.all_rows.{}", name.to_lowercase()),
                format!("  same, stream all matching rows, {name} log"),
                stream.all_secs * 1000.0,
                "ms",
            )
            .measured(format!(
                "{} ms ({} rows)",
                format_ms(stream.all_secs * 1000.0),
                thousands(stream.n_rows)
            ))
            .seed(seed::QUERY),
        );
    }

    for (log, name) in &logs {
        let Some(disk) = &log.disk else {
            continue;
        };
        let per_record = disk.bytes as f64 / log.n_records as f64;
        let per_object: Vec<String> = disk
            .by_object
            .iter()
            .take(6)
            .map(|o| {
                let n = log.n_records as f64;
                format!(
                    "{} {:.0} (payload {:.0})",
                    o.name,
                    o.bytes as f64 / n,
                    o.payload as f64 / n
                )
            })
            .collect();
        let mut row = Figure::new(
            5,
            format!("size.{}", name.to_lowercase()),
            format!("Disk per record, {name} log"),
            per_record,
            "B/rec",
        )
        .seed(seed::SIZE)
        .note(format!(
            "size {name}: {:.0} MB on disk for {:.0} B of query+response text per record; \
             B/rec by table or index: {}",
            disk.bytes as f64 / 1e6,
            log.text_bytes as f64 / log.n_records as f64,
            per_object.join(", ")
        ));
        if log.n_records == results.sizes.small {
            row = row.at_most(target::BYTES_PER_RECORD);
        }
        rows.push(row);
    }

    for (log, name) in &logs {
        rows.push(
            Figure::new(
                0,
                format!("build.{}", name.to_lowercase()),
                format!("Build {name} log with log_batch of 5,000"),
                log.n_records as f64 / log.build_secs,
                "rec/s",
            )
            .measured(format!(
                "{} ({:.1} s)",
                format_value(log.n_records as f64 / log.build_secs, "rec/s"),
                log.build_secs
            )),
        );
    }
    rows
}

/// The table as text: one row per figure, then the notes.
pub(crate) fn table(rows: &[Figure]) -> String {
    let header = ["#", "Figure", "Measured", "Target", "Status", "Python seed"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|f| {
            [
                if f.group == 0 {
                    "-".into()
                } else {
                    f.group.to_string()
                },
                f.label.clone(),
                f.measured.clone(),
                f.target.clone(),
                f.status.label().into(),
                f.seed.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        let padded: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "| {} |", padded.join(" | "));
    };
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
    for row in &cells {
        line(&mut out, &row.each_ref().map(String::as_str));
    }
    let notes: Vec<&Figure> = rows.iter().filter(|f| f.note.is_some()).collect();
    if !notes.is_empty() {
        out.push('\n');
        for f in notes {
            let _ = writeln!(
                out,
                "note [{}]: {}",
                f.id,
                f.note.as_deref().unwrap_or_default()
            );
        }
    }
    let count = |s: Status| rows.iter().filter(|f| f.status == s).count();
    let _ = writeln!(
        out,
        "\n{} PASS, {} MISS, {} ERROR",
        count(Status::Pass),
        count(Status::Miss),
        count(Status::Error)
    );
    out
}
