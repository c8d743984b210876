//! The results table (each figure with its target, PASS/MISS and the Python seed's figure)
//! and the JSON summary.

use std::fmt::Write as _;

use serde::Serialize;

use crate::abtest::{AbResults, CheckCost, ScenarioSummary};
use crate::datagen::{ChildOutcome, ChildReport, DatagenTimes, Variant};
use crate::postgres::PgResults;
use crate::serve::{ScenarioRun, ServeResults};
use crate::trigger::TriggerTimes;
use crate::{ImportResult, LogResults, Measured, Results};

/// The seed's figures, measured on this machine on a 100k-record workload.
mod seed {
    pub(super) const LOG: &str = "493 rec/s";
    pub(super) const STATS: &str = "68 ms (stats @100k)";
    pub(super) const TRIGGER: &str = "325 ms (all checks @100k), linear";
    pub(super) const QUERY: &str = "748 ms (whole query @100k)";
    pub(super) const SIZE: &str = "1,824 B/rec";
    /// Issue 3: the seed's generator on the 100k-record log.
    pub(super) const DATAGEN_SECS: f64 = 1.19;
    pub(super) const DATAGEN: &str = "1.19 s @100k";
    /// Issue 5: the seed's A/B rule fixed by the obvious patch, checked hourly for 14 days.
    pub(super) const AB_FIXED_RULE: &str = "35.9% (fixed rule, simulated)";
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
    /// Issue 3: at least this many times faster than the seed on its 100k-record log.
    pub(super) const DATAGEN_SPEEDUP: f64 = 20.0;
    /// Issue 3: 1M records through the full pipeline with exact dedupe, seconds.
    pub(super) const DATAGEN_1M_SECS: f64 = 10.0;
    /// Issue 3: 1M candidate records in well under this much RSS, MB.
    pub(super) const DATAGEN_RSS_MB: f64 = 200.0;
    /// Issue 4: one check on a 1M-record log.
    pub(super) const TRIGGER_MS: f64 = 5.0;
    /// Issues 5 and 13: false promotions of an identical model under sticky routing, percent.
    pub(super) const FALSE_PROMOTIONS_PCT: f64 = 2.5;
    /// Issue 13: one whole experiment check at 1M records and 100k units, ms.
    pub(super) const CHECK_MS: f64 = 50.0;
    /// Issue 13: false rollbacks of an identical model under sticky routing, percent.
    pub(super) const FALSE_ROLLBACKS_PCT: f64 = 5.0;
    /// Issue 5: better challengers promoted within 14 days, percent.
    pub(super) const POWER_PCT: f64 = 80.0;
    /// Issue 5: worse challengers rolled back within 48 hours, percent.
    pub(super) const HARM_ROLLBACK_PCT: f64 = 90.0;
    /// Issue 5: the challenger's share of 1M unit ids within this relative distance of its
    /// weight.
    pub(super) const SPLIT_RELATIVE: f64 = 0.01;
    /// Issue 7: single-record `POST /v1/usage`, 64 connections, requests per second.
    pub(super) const SERVE_USAGE_RPS: f64 = 5_000.0;
    /// Issue 7: the same requests' 99th-percentile latency, ms.
    pub(super) const SERVE_USAGE_P99_MS: f64 = 20.0;
    /// Issue 7: records per second through the batch endpoint.
    pub(super) const SERVE_BATCH_RECORDS: f64 = 40_000.0;
    /// Issue 7: `GET /v1/route`, requests per second.
    pub(super) const SERVE_ROUTE_RPS: f64 = 20_000.0;
    /// Issue 15: a check or a 24-hour statistic in-process, whatever arrived, ms.
    pub(super) const BURST_MS: f64 = 5.0;
    /// Issue 15: the same as a whole `afs` process, ms.
    pub(super) const BURST_PROCESS_MS: f64 = 30.0;
    /// PostgreSQL: `afs import`, records per second.
    pub(super) const PG_IMPORT_RATE: f64 = 50_000.0;
    /// PostgreSQL: `afs generate` on the 100k log at least this many times faster than the
    /// seed.
    pub(super) const PG_DATAGEN_SPEEDUP: f64 = 10.0;
}

/// Issue numbers of the groups.
mod issue {
    pub(super) const STORE: u8 = 2;
    pub(super) const DATAGEN: u8 = 3;
    pub(super) const TRIGGER: u8 = 4;
    pub(super) const ABTEST: u8 = 5;
    pub(super) const SERVE: u8 = 7;
    pub(super) const UNITS: u8 = 13;
    pub(super) const BURST: u8 = 15;
    pub(super) const QUALITY_WRITE_BACK: u8 = 15;
    /// The usage store on PostgreSQL.
    pub(super) const POSTGRES: u8 = 16;
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
    /// The issue whose target the figure measures: 2 the usage store, 3 training-data
    /// generation, 4 retraining triggers, 5 champion/challenger experiments, 7 the HTTP
    /// service.
    issue: u8,
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
            issue: issue::STORE,
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

    /// Moves the figure to another issue than the usage store's.
    fn issue(mut self, issue: u8) -> Self {
        self.issue = issue;
        self
    }

    /// Whether the figure belongs to the usage store's issue (the content of store.json).
    pub(crate) fn is_store(&self) -> bool {
        self.issue == issue::STORE
    }

    fn label_suffix(mut self, text: &str) -> Self {
        self.label.push_str(text);
        self
    }

    /// Whether the figure is background information without a figure number of its issue
    /// (the time to build a log).
    pub(crate) fn is_background(&self) -> bool {
        self.group == 0
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

pub(crate) fn thousands(n: u64) -> String {
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
        "s" if value < 1.0 => format!("{value:.3} s"),
        "s" => format!("{value:.2} s"),
        "MB" => format!("{value:.1} MB"),
        "%" => format!("{value:.1}%"),
        "" => String::new(),
        unit => format!("{} {unit}", thousands(value.round().max(0.0) as u64)),
    }
}

fn ms_with_p95(median_ms: f64, p95_ms: f64) -> String {
    format!("{} ms (p95 {})", format_ms(median_ms), format_ms(p95_ms))
}

/// Every figure of `results`, in the issue's order.
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
        // Issue 15: concurrent logging should scale, at least 1.5x one thread.
        .target(">= 1.5x 1 thread", ratio >= 1.5)
        .issue(issue::BURST);
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

    datagen_figures(&logs, &mut rows);
    trigger_figures(&logs, &mut rows);
    if let Some(ab) = &results.abtest {
        abtest_figures(ab, &mut rows);
    }
    if let Some(serve) = &results.serve {
        serve_figures(serve, &mut rows);
    }
    if let Some(burst) = &results.burst {
        burst_figures(burst, &mut rows);
    }
    if let Some(pg) = &results.postgres {
        postgres_figures(pg, &mut rows);
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
                    format!("{}.{}", f.issue, f.group)
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

/// `n / secs` as text: `2.2M rec/s`, `950k rec/s`.
fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs.max(1e-12);
    if r >= 1e6 {
        format!("{:.2}M rec/s", r / 1e6)
    } else {
        format!("{:.0}k rec/s", r / 1e3)
    }
}

/// Issue 3: generation time on each log, and the child processes' time and peak memory.
fn datagen_figures(logs: &[(&LogResults, String)], rows: &mut Vec<Figure>) {
    for (log, name) in logs {
        let id = name.to_lowercase();
        let times = match &log.datagen {
            None => continue,
            Some(Measured::Error(reason)) => {
                rows.push(
                    Figure::error(
                        1,
                        &format!("datagen.{id}"),
                        format!("generate, {name} log"),
                        reason.clone(),
                    )
                    .issue(issue::DATAGEN),
                );
                continue;
            }
            Some(Measured::Ok(times)) => times,
        };
        in_process_figure(log, name, times, rows);
        for (variant, outcome) in &times.children {
            child_figures(log, name, *variant, outcome, rows);
        }
    }
}

/// The in-process runs with the seed's settings: the "same work" as the seed's 1.19 s.
fn in_process_figure(log: &LogResults, name: &str, times: &DatagenTimes, rows: &mut Vec<Figure>) {
    let (Some(median), Some(run)) = (times.median_secs, times.median_run()) else {
        return;
    };
    let id = name.to_lowercase();
    let ms = median * 1000.0;
    let speedup = seed::DATAGEN_SECS / median;
    let secs = times.runs.iter().map(|r| r.secs);
    let fastest = secs.clone().fold(f64::INFINITY, f64::min);
    let slowest = secs.fold(0.0, f64::max);
    let mut row = Figure::new(
        1,
        format!("datagen.seed.{id}"),
        format!(
            "generate, seed settings, {name} log (median of {}, in process)",
            times.runs.len()
        ),
        ms,
        "ms",
    )
    .issue(issue::DATAGEN)
    .measured(format!(
        "{} ms ({}; {speedup:.1}x seed; {} samples; runs {}-{} ms)",
        format_ms(ms),
        rate(log.n_records, median),
        thousands(run.final_count),
        format_ms(fastest * 1000.0),
        format_ms(slowest * 1000.0),
    ))
    .seed(seed::DATAGEN)
    .note(format!(
        "datagen {name}: {} candidates, {} dropped by the feedback filter, {} scored by the \
         heuristic scorer (not written back), {} dropped by the quality filter, {} exact \
         duplicates, {} samples written ({:.1} MB, {} redactions); runs {}; without \
         redaction: median {}",
        thousands(run.total_candidates),
        thousands(run.filtered_by_feedback),
        thousands(run.scored_records),
        thousands(run.filtered_by_quality),
        thousands(run.duplicates_removed),
        thousands(run.final_count),
        run.output_bytes as f64 / 1e6,
        thousands(run.redactions),
        times
            .runs
            .iter()
            .map(|r| format!("{:.3} s", r.secs))
            .collect::<Vec<_>>()
            .join(", "),
        times
            .no_redact_median_secs
            .map_or("-".to_string(), |s| format!("{s:.3} s"))
    ));
    if log.n_records == 100_000 {
        let limit = seed::DATAGEN_SECS * 1000.0 / target::DATAGEN_SPEEDUP;
        row = row.target(
            format!(
                "<= {} ms ({:.0}x faster)",
                format_ms(limit),
                target::DATAGEN_SPEEDUP
            ),
            ms <= limit,
        );
    }
    rows.push(row);
    // The first run also opens the store's pooled connections (each parses the schema) and
    // grows the heap: what a one-off `afs generate` pays on top of the median.
    if let Some(first) = times.runs.first() {
        let first_ms = first.secs * 1000.0;
        rows.push(
            Figure::new(
                1,
                format!("datagen.seed.{id}.first"),
                "  same, first run in the process (opens the pooled connections)".to_string(),
                first_ms,
                "ms",
            )
            .issue(issue::DATAGEN)
            .measured(format!(
                "{} ms ({:.1}x seed)",
                format_ms(first_ms),
                seed::DATAGEN_SECS / first.secs
            )),
        );
    }
    let label = "  same, whole `afs generate` command (process start to exit)".to_string();
    match &times.cli {
        Ok(secs) if secs.is_empty() => {}
        Ok(secs) => {
            let mut sorted = secs.clone();
            sorted.sort_by(f64::total_cmp);
            let median_ms = sorted[(sorted.len() - 1) / 2] * 1000.0;
            rows.push(
                Figure::new(1, format!("datagen.cli.{id}"), label, median_ms, "ms")
                    .issue(issue::DATAGEN)
                    .measured(format!(
                        "{} ms, median of {} ({:.1}x seed; runs {}-{} ms)",
                        format_ms(median_ms),
                        sorted.len(),
                        seed::DATAGEN_SECS * 1000.0 / median_ms,
                        format_ms(sorted[0] * 1000.0),
                        format_ms(sorted[sorted.len() - 1] * 1000.0),
                    )),
            );
        }
        Err(reason) => rows.push(
            Figure::error(1, &format!("datagen.cli.{id}"), label, reason.clone())
                .issue(issue::DATAGEN),
        ),
    }
    let label = "  same, writing back the scores it gives (on a copy)".to_string();
    match &times.write_back {
        Ok(None) => {}
        Ok(Some(wb)) => {
            // The cost per score is set against the median without write-back; a single
            // record logged one call at a time (group 1) is what the issue compares it to.
            let per_score_us = times
                .median_secs
                .map(|m| (wb.in_process_secs - m).max(0.0) * 1e6 / (wb.scored.max(1) as f64));
            let log_us = Some(wb.log_call_secs * 1e6);
            let mut figure = Figure::new(
                1,
                format!("datagen.inproc.{id}.write_back"),
                label,
                wb.in_process_secs * 1000.0,
                "ms",
            )
            .issue(issue::QUALITY_WRITE_BACK)
            .measured(format!(
                "{} ms in process, 1 run ({} scores; {} per score over the median{}; \
                 {:.1} us per record in a log_batch)",
                format_ms(wb.in_process_secs * 1000.0),
                thousands(wb.scored),
                per_score_us.map_or("n/a".to_string(), |us| format!("{us:.1} us")),
                log_us.map_or(String::new(), |us| format!("; a log call: {us:.1} us")),
                wb.log_batch_secs * 1e6,
            ));
            if let (Some(score), Some(log)) = (per_score_us, log_us) {
                figure =
                    figure.target(format!("<= {:.1} us/score (a log call)", log), score <= log);
            }
            rows.push(figure);
            rows.push(
                Figure::new(
                    1,
                    format!("datagen.cli.{id}.write_back"),
                    "  same, whole `afs generate` command writing back (on a copy)".to_string(),
                    wb.whole_secs * 1000.0,
                    "ms",
                )
                .issue(issue::QUALITY_WRITE_BACK)
                .measured(format!(
                    "{} ms, 1 run (closing checkpoints the changed pages into the file)",
                    format_ms(wb.whole_secs * 1000.0),
                )),
            );
        }
        Err(reason) => rows.push(
            Figure::error(
                1,
                &format!("datagen.cli.{id}.write_back"),
                label,
                reason.clone(),
            )
            .issue(issue::DATAGEN),
        ),
    }
}

/// One child-process run: time (with the 1M target for the seed's settings) and peak RSS.
fn child_figures(
    log: &LogResults,
    name: &str,
    variant: Variant,
    outcome: &ChildOutcome,
    rows: &mut Vec<Figure>,
) {
    let id = format!("datagen.child.{}.{}", variant.name(), name.to_lowercase());
    let what = match variant {
        Variant::Seed => "seed settings".to_string(),
        Variant::Dpo => "format=dpo".to_string(),
        Variant::NearDedupe => "seed settings + near-dedupe 0.8".to_string(),
        Variant::NoRedact => "seed settings, no redaction".to_string(),
    };
    let label = format!("generate, {what}, {name} log (1 run, child process)");
    let report: &ChildReport = match outcome {
        ChildOutcome::Ok(report) => report,
        ChildOutcome::Error(reason) => {
            rows.push(Figure::error(1, &id, label, reason.clone()).issue(issue::DATAGEN));
            return;
        }
    };
    let run = &report.run;
    let peak_mb = report.peak_rss_kb as f64 / 1024.0;
    let is_1m = log.n_records == 1_000_000;
    match variant {
        Variant::Seed => {
            let mut time = Figure::new(1, id.clone(), label, run.secs, "s")
                .issue(issue::DATAGEN)
                .measured(format!(
                    "{} ({}; {} samples)",
                    format_value(run.secs, "s"),
                    rate(log.n_records, run.secs),
                    thousands(run.final_count)
                ))
                .seed("n/a (not measured at 1M)");
            if is_1m {
                time = time.at_most(target::DATAGEN_1M_SECS);
            }
            rows.push(time);
            let mut memory = Figure::new(
                2,
                format!("datagen.peak_rss.{}", name.to_lowercase()),
                format!("  same, peak RSS of the child (VmHWM), {name} candidates"),
                peak_mb,
                "MB",
            )
            .issue(issue::DATAGEN)
            .measured(format!(
                "{peak_mb:.1} MB ({:.1} MB after opening the store)",
                report.rss_before_kb as f64 / 1024.0
            ));
            if is_1m {
                memory = memory.target(
                    format!("<= {:.0} MB (well under)", target::DATAGEN_RSS_MB),
                    peak_mb <= target::DATAGEN_RSS_MB,
                );
            }
            rows.push(memory);
        }
        Variant::Dpo | Variant::NearDedupe | Variant::NoRedact => {
            let extra = match variant {
                Variant::Dpo => format!(
                    "{} pairs, {} unpaired",
                    thousands(run.final_count),
                    thousands(run.unpaired)
                ),
                Variant::NearDedupe => format!(
                    "{} samples, {} near-dups removed",
                    thousands(run.final_count),
                    thousands(run.near_duplicates_removed)
                ),
                _ => format!("{} samples", thousands(run.final_count)),
            };
            let mut row = Figure::new(1, id, label, run.secs, "s")
                .issue(issue::DATAGEN)
                .measured(format!(
                    "{}, peak RSS {peak_mb:.1} MB; {extra}",
                    format_value(run.secs, "s")
                ))
                .seed("n/a (seed has no dpo / near-dedupe)");
            if variant == Variant::Dpo && run.final_count == 0 {
                row = row.note(format!(
                    "dpo {name}: pairs need a thumbs-up and a thumbs-down response to the same \
                     query; every query of the synthetic workload is distinct, so no pair \
                     forms (the time is the full pass over the {} records with feedback)",
                    thousands(run.total_candidates - run.filtered_by_feedback)
                ));
            }
            rows.push(row);
        }
    }
}

/// Issue 4: one trigger check with every policy, per log.
fn trigger_figures(logs: &[(&LogResults, String)], rows: &mut Vec<Figure>) {
    let mut measured: Vec<(&TriggerTimes, &str)> = Vec::new();
    for (log, name) in logs {
        let id = format!("trigger.check.{}", name.to_lowercase());
        match &log.trigger {
            None => {}
            Some(Measured::Error(reason)) => rows.push(
                Figure::error(1, &id, format!("trigger check, {name} log"), reason.clone())
                    .issue(issue::TRIGGER),
            ),
            Some(Measured::Ok(t)) => {
                rows.push(
                    Figure::new(
                        1,
                        id,
                        format!(
                            "trigger check, all {} policies + state save, {name} log",
                            t.policies
                        ),
                        t.check.median_ms,
                        "ms",
                    )
                    .issue(issue::TRIGGER)
                    .at_most(target::TRIGGER_MS)
                    .measured(ms_with_p95(t.check.median_ms, t.check.p95_ms))
                    .seed(seed::TRIGGER)
                    .note(format!(
                        "trigger {name}: the store calls of a check on their own (median): \
                         stats of the 24 h window {} ms (made twice), stats_by_hour of the last \
                         hour {} ms, count_quality_samples since the start of the log {} ms \
                         (since 7 days: {} ms), trigger state load + save {} ms; the first \
                         check (no saved state, 7 days fed to Page-Hinkley) {} ms",
                        format_ms(t.parts.window_24h.median_ms),
                        format_ms(t.parts.last_hour.median_ms),
                        format_ms(t.parts.samples_all_time.median_ms),
                        format_ms(t.parts.samples_7d.median_ms),
                        format_ms(t.parts.state.median_ms),
                        format_ms(t.first_ms),
                    )),
                );
                rows.push(
                    Figure::new(
                        1,
                        format!("trigger.check_after_retrain.{}", name.to_lowercase()),
                        format!("  same, after a retrain 7 days earlier, {name} log"),
                        t.after_retrain.median_ms,
                        "ms",
                    )
                    .issue(issue::TRIGGER)
                    .at_most(target::TRIGGER_MS)
                    .measured(ms_with_p95(
                        t.after_retrain.median_ms,
                        t.after_retrain.p95_ms,
                    )),
                );
                measured.push((t, name));
            }
        }
    }
    if let [(small, small_name), (big, big_name)] = measured[..] {
        rows.push(
            Figure::new(
                1,
                "trigger.check.growth",
                format!("  same, {big_name} / {small_name} log"),
                big.check.median_ms / small.check.median_ms,
                "x",
            )
            .issue(issue::TRIGGER)
            .seed("10x (linear)"),
        );
    }
    if let Some((last, _)) = measured.last() {
        rows.last_mut().expect("a trigger row").note = Some(format!(
            "trigger: RetrainTrigger::check with every policy enabled, store clock pinned; {} \
             checks (after 1 + 4 untimed) one simulated hour apart, the last at the newest \
             record, no retrain ever recorded (the sample count covers the whole log); each \
             check feeds one new hour to Page-Hinkley and saves the state in the store. \
             'After a retrain': {} checks on the hours before, with a successful retrain \
             recorded 7 days before them. Last check: triggered={}, {}",
            last.check.n, last.after_retrain.n, last.triggered, last.reason
        ));
    }
}

fn pct(count: usize, runs: usize) -> f64 {
    100.0 * count as f64 / runs.max(1) as f64
}

fn count_of(count: usize, runs: usize) -> String {
    format!("{:.1}% ({count}/{runs})", pct(count, runs))
}

/// Issue 5: simulated experiments and the routing check.
fn abtest_figures(ab: &Measured<AbResults>, rows: &mut Vec<Figure>) {
    let ab = match ab {
        Measured::Ok(ab) => ab,
        Measured::Error(reason) => {
            rows.push(
                Figure::error(1, "abtest", "simulated experiments", reason.clone())
                    .issue(issue::ABTEST),
            );
            return;
        }
    };
    let missing = |name: &str| {
        Figure::error(
            1,
            &format!("abtest.{name}"),
            format!("scenario {name}"),
            "not simulated",
        )
        .issue(issue::ABTEST)
    };

    let secs: f64 = ab.scenarios.iter().map(|s| s.secs).sum();
    let note = format!(
        "abtest: afs_sim on the in-memory store (the real router, judge, bandit and AbTest; the \
         SQLite backend makes the same decisions, as checked on the first seeds), seeds \
         {}.., {} threads, {secs:.0} s for {} scenarios; ~500 requests/h (daily cycle) from \
         2,000 users with heavy-tailed activity and persistent differences, routed by user, \
         feedback 3 h late on average, a week of history before the deployment, one look \
         per simulated hour for 14 days; A/A runs continue to the horizon with the decision \
         recorded but not applied, so the fixed rule is followed on the same traffic",
        ab.base_seed,
        ab.threads,
        ab.scenarios.len()
    );
    // A/A: false promotions, with the seed's fixed rule on the same runs.
    let aa_variants = [
        ("aa", "A/A false promotions"),
        ("aa_w20", "A/A false promotions, 80/20"),
        (
            "aa_statistics_only",
            "  A/A, min lift 0 (sequential test alone)",
        ),
        (
            "aa_positive_rate",
            "  A/A, thumbs-up rate as primary metric",
        ),
        ("aa_bandit", "  A/A, Thompson-sampling weights"),
        (
            "aa_request_level",
            "  A/A judged per request (before issue 13), for contrast",
        ),
        (
            "aa_request_level_no_srm",
            "  A/A judged per request, SRM alarm off, for contrast",
        ),
        ("aa_per_request", "  A/A routed per request, no unit ids"),
    ];
    for (name, label) in aa_variants {
        let Some(s) = ab.scenario(name) else {
            rows.push(missing(name));
            continue;
        };
        let p = s.promotion_rate() * 100.0;
        let mut row = Figure::new(
            1,
            format!("abtest.{name}.false_promotions"),
            format!("{label}, {} runs", thousands(s.runs as u64)),
            p,
            "%",
        )
        .issue(issue::ABTEST)
        .measured(count_of(s.promoted, s.runs));
        if !name.contains("request_level") {
            row = row.target(
                format!("<= {:.1}%", target::FALSE_PROMOTIONS_PCT),
                p <= target::FALSE_PROMOTIONS_PCT,
            );
        }
        row.measured
            .push_str(&format!(", {}", interval_of(s.promoted, s.runs)));
        if name == "aa" {
            row = row
                .seed(seed::AB_FIXED_RULE)
                .note(note.clone())
                .label_suffix(", ~500 req/h from 2,000 users routed by user, 90/10, 14 d hourly");
        }
        rows.push(row);
        let r = s.rollback_rate() * 100.0;
        let mut rollbacks = Figure::new(
            1,
            format!("abtest.{name}.false_rollbacks"),
            "  same runs, false rollbacks",
            r,
            "%",
        )
        .issue(issue::ABTEST)
        .measured(format!(
            "{}, {}",
            count_of(s.rolled_back, s.runs),
            interval_of(s.rolled_back, s.runs)
        ));
        if !name.contains("request_level") {
            rollbacks = rollbacks.target(
                format!("<= {:.0}%", target::FALSE_ROLLBACKS_PCT),
                r <= target::FALSE_ROLLBACKS_PCT,
            );
        }
        rows.push(rollbacks);
        if name == "aa" {
            rows.push(
                Figure::new(
                    1,
                    "abtest.aa.fixed_rule",
                    "  same runs, seed's fixed rule (>= 5% better or p < 0.05)",
                    s.fixed_rule_promotion_rate() * 100.0,
                    "%",
                )
                .issue(issue::ABTEST)
                .measured(count_of(s.fixed_rule_promoted, s.runs))
                .seed(seed::AB_FIXED_RULE),
            );
        }
    }

    if let Some(check) = &ab.sqlite {
        rows.push(
            Figure::new(
                1,
                "abtest.sqlite_agrees",
                format!(
                    "  A/A through the real SQLite store, first {} seed(s): same outcome as in memory",
                    check.runs
                ),
                check.identical as f64,
                "runs",
            )
            .issue(issue::ABTEST)
            .measured(format!(
                "{}/{} identical ({:.1} s per run)",
                check.identical,
                check.runs,
                check.secs / check.runs.max(1) as f64
            ))
            .target("all identical", check.identical == check.runs),
        );
    }
    // Power.
    let power = [
        (
            "power_quality",
            "Power: +0.03 quality, x1.05 thumbs-up, promoted in 14 d",
        ),
        ("power_quality_w20", "  same challenger at 80/20"),
        ("power_quality_no_cuped", "  90/10 without CUPED"),
        ("power_quality_ratio", "  90/10, request-weighted ratio"),
        (
            "power_quality_request_level",
            "  90/10 judged per request (before issue 13)",
        ),
        (
            "power_positive_rate",
            "Power: +5% thumbs-up (0.70 vs 0.735) as primary metric",
        ),
        (
            "power_positive_rate_bandit",
            "  +5% thumbs-up, Thompson-sampling weights",
        ),
    ];
    for (name, label) in power {
        let Some(s) = ab.scenario(name) else {
            rows.push(missing(name));
            continue;
        };
        let p = s.promotion_rate() * 100.0;
        let row = Figure::new(
            2,
            format!("abtest.{name}.promoted"),
            format!("{label}, {} runs", thousands(s.runs as u64)),
            p,
            "%",
        )
        .issue(issue::ABTEST)
        .measured(format!(
            "{}, {}, median {} h",
            count_of(s.promoted, s.runs),
            interval_of(s.promoted, s.runs),
            s.median_hours_to_decision
                .map_or("-".to_string(), |h| format!("{h:.0}"))
        ));
        // The requirement is on the default judge at 10% and 20%; the variants are shown
        // for comparison.
        rows.push(if matches!(name, "power_quality" | "power_quality_w20") {
            row.at_least(target::POWER_PCT)
        } else {
            row
        });
    }

    // Harm.
    for (name, label) in [
        ("harm", "Harm: challenger 10% worse"),
        ("harm_w20", "  10% worse at 80/20"),
        ("harm_bandit", "  10% worse, Thompson-sampling weights"),
    ] {
        let Some(s) = ab.scenario(name) else {
            rows.push(missing(name));
            continue;
        };
        rows.push(harm_row(name, label, s));
        rows.push(
            Figure::new(
                3,
                format!("abtest.{name}.promoted"),
                "  same runs, promoted",
                s.promoted as f64,
                "runs",
            )
            .issue(issue::ABTEST)
            .measured(count_of(s.promoted, s.runs))
            .target("0 (never)", s.promoted == 0),
        );
    }

    // Sticky routing.
    let r = &ab.routing;
    let off = |share: f64, weight: f64| (share / weight - 1.0).abs();
    let worst = off(r.share_at_10, 0.1).max(off(r.share_at_50, 0.5));
    rows.push(
        Figure::new(
            4,
            "abtest.routing.split",
            format!(
                "Sticky routing: challenger share, {} ids, at 10% / 50%",
                thousands(r.units)
            ),
            worst * 100.0,
            "%",
        )
        .issue(issue::ABTEST)
        .measured(format!(
            "{:.3}% / {:.3}% (off by {:.2}% rel.)",
            r.share_at_10 * 100.0,
            r.share_at_50 * 100.0,
            worst * 100.0
        ))
        .target(
            format!("within {:.0}% of target", target::SPLIT_RELATIVE * 100.0),
            worst <= target::SPLIT_RELATIVE,
        ),
    );
    rows.push(
        Figure::new(
            4,
            "abtest.routing.sticky",
            "  same ids: arm changed on a 2nd routing / moved back 10%->50%",
            (r.unstable + r.moved_back) as f64,
            "ids",
        )
        .issue(issue::ABTEST)
        .measured(format!("{} / {}", r.unstable, r.moved_back))
        .target("0 / 0", r.unstable == 0 && r.moved_back == 0),
    );
    if let Some(cost) = &ab.cost {
        check_cost_figures(cost, rows);
    }
}

fn check_cost_figures(cost: &CheckCost, rows: &mut Vec<Figure>) {
    let size = format!(
        "{} records / {} units",
        thousands(cost.records),
        thousands(cost.units)
    );
    rows.push(
        Figure::new(
            5,
            "abtest.check",
            format!(
                "Experiment check, {size} (AbTest::check, median of {})",
                cost.reps
            ),
            cost.check_ms,
            "ms",
        )
        .issue(issue::UNITS)
        .measured(format!(
            "{:.2} ms (unit statistics alone {:.3} ms)",
            cost.check_ms, cost.unit_stats_ms
        ))
        .note(format!(
            "abtest.check: a 90/10 experiment of {size} (one in twenty records without a unit \
             id, three in ten with feedback) after a week of history, built with log_batch in \
             {:.0} s; the whole look reads the rollups and the per-unit cohort sums, judges and \
             writes its decision",
            cost.build_secs
        ))
        .at_most(target::CHECK_MS),
    );
    rows.push(
        Figure::new(
            5,
            "abtest.check_after_logging",
            format!(
                "  the next check, folding {} unit rows changed by 40,000 new records",
                thousands(cost.folded_units)
            ),
            cost.check_after_logging_ms,
            "ms",
        )
        .issue(issue::UNITS)
        .at_most(target::CHECK_MS),
    );
    for (name, label, rate) in [
        ("one", "1 thread", cost.log_one_thread),
        ("four", "4 threads", cost.log_four_threads),
    ] {
        rows.push(
            Figure::new(
                5,
                format!("abtest.log_during_experiment.{name}"),
                format!("  logging one record per call while it runs, {label}"),
                rate,
                "rec/s",
            )
            .issue(issue::UNITS)
            .measured(format_value(rate, "rec/s"))
            .at_least(target::LOG_RATE),
        );
    }
}

/// Issue 15: the checks after records arrived in bursts, and while logging runs.
fn burst_figures(burst: &Measured<crate::burst::BurstTimes>, rows: &mut Vec<Figure>) {
    let burst = match burst {
        Measured::Ok(b) => b,
        Measured::Error(reason) => {
            rows.push(
                Figure::error(1, "burst", "checks after bursts", reason.clone())
                    .issue(issue::BURST),
            );
            return;
        }
    };
    for p in &burst.patterns {
        let k = &p.key;
        rows.push(
            Figure::new(
                1,
                format!("burst.{k}"),
                format!("After {}:", p.name),
                0.0,
                "",
            )
            .measured(format!("built in {:.0} s", p.build_secs))
            .issue(issue::BURST),
        );
        for (id, label, value, target) in [
            (
                "trigger",
                "  trigger check, 5 policies (in-process, median)",
                p.trigger_ms,
                target::BURST_MS,
            ),
            (
                "stats",
                "  stats of the last 24 h by model (in-process)",
                p.stats_ms,
                target::BURST_MS,
            ),
            (
                "experiment",
                "  experiment check (in-process)",
                p.experiment_ms,
                target::BURST_MS,
            ),
            (
                "experiment_first",
                "  the first experiment check after the records (folds their units)",
                p.experiment_first_ms,
                target::BURST_MS,
            ),
            (
                "trigger_process",
                "  afs trigger check (whole process, median)",
                p.trigger_process_ms,
                target::BURST_PROCESS_MS,
            ),
            (
                "stats_process",
                "  afs stats --since 24h --by-model (whole process)",
                p.stats_process_ms,
                target::BURST_PROCESS_MS,
            ),
            (
                "ab_check_process",
                "  afs ab check (whole process)",
                p.experiment_process_ms,
                target::BURST_PROCESS_MS,
            ),
        ] {
            let mut row = Figure::new(1, format!("burst.{k}.{id}"), label, value, "ms")
                .issue(issue::BURST)
                .at_most(target);
            if id == "experiment_first" {
                row = row.measured(format!(
                    "{value:.1} ms ({} unit rows folded)",
                    thousands(p.folded_units)
                ));
            }
            rows.push(row);
        }
    }
}

/// The 95% Wilson interval of `count` in `runs`, in percent: `95% [0.6, 2.0]`.
fn interval_of(count: usize, runs: usize) -> String {
    let (lo, hi) = afs_sim::wilson(count, runs);
    format!("95% [{:.1}, {:.1}]", lo * 100.0, hi * 100.0)
}

fn harm_row(name: &str, label: &str, s: &ScenarioSummary) -> Figure {
    let p = s.rollback_within_48h_rate() * 100.0;
    Figure::new(
        3,
        format!("abtest.{name}.rolled_back_48h"),
        format!(
            "{label}: rolled back within 48 h, {} runs",
            thousands(s.runs as u64)
        ),
        p,
        "%",
    )
    .issue(issue::ABTEST)
    .measured(format!(
        "{}, {}, median {} h",
        count_of(s.rolled_back_within_48h, s.runs),
        interval_of(s.rolled_back_within_48h, s.runs),
        s.median_hours_to_decision
            .map_or("-".to_string(), |h| format!("{h:.0}"))
    ))
    .at_least(target::HARM_ROLLBACK_PCT)
}

/// Issue 7: `afs serve` under load from a second process.
fn serve_figures(serve: &Measured<ServeResults>, rows: &mut Vec<Figure>) {
    let serve = match serve {
        Measured::Ok(serve) => serve,
        Measured::Error(reason) => {
            rows.push(
                Figure::error(1, "serve", "afs serve under load", reason.clone())
                    .issue(issue::SERVE),
            );
            return;
        }
    };
    let secs = serve.secs;
    let first = rows.len();

    let label = format!("POST /v1/usage, 1 record/request, 64 connections, {secs:.0} s");
    match serve_run(serve, "usage") {
        Err(reason) => {
            rows.push(Figure::error(1, "serve.usage", label, reason).issue(issue::SERVE))
        }
        Ok(run) => {
            let r = &run.report;
            rows.push(
                Figure::new(1, "serve.usage.rps", label, r.requests_per_sec, "req/s")
                    .issue(issue::SERVE)
                    .measured(format!(
                        "{} ({}; {})",
                        format_value(r.requests_per_sec, "req/s"),
                        error_count(r.errors),
                        load_1m(run)
                    ))
                    .target(
                        format!(
                            ">= {}, 0 errors",
                            format_value(target::SERVE_USAGE_RPS, "req/s")
                        ),
                        r.requests_per_sec >= target::SERVE_USAGE_RPS && r.errors == 0,
                    ),
            );
            let l = &r.latency_ms;
            rows.push(
                Figure::new(1, "serve.usage.p99", "  same, p99 latency", l.p99, "ms")
                    .issue(issue::SERVE)
                    .measured(format!(
                        "{} ms (p50 {}, p90 {}, p99.9 {}, max {})",
                        format_ms(l.p99),
                        format_ms(l.p50),
                        format_ms(l.p90),
                        format_ms(l.p999),
                        format_ms(l.max)
                    ))
                    .at_most(target::SERVE_USAGE_P99_MS),
            );
        }
    }

    let batch = serve
        .scenario("batch")
        .and_then(|s| s.scenario.batch_size)
        .unwrap_or(0);
    let label = format!(
        "POST /v1/usage, {} records/request, 4 connections, {secs:.0} s",
        thousands(batch as u64)
    );
    match serve_run(serve, "batch") {
        Err(reason) => {
            rows.push(Figure::error(2, "serve.batch", label, reason).issue(issue::SERVE))
        }
        Ok(run) => {
            let r = &run.report;
            rows.push(
                Figure::new(2, "serve.batch.records", label, r.records_per_sec, "rec/s")
                    .issue(issue::SERVE)
                    .measured(format!(
                        "{} ({:.0} req/s, p99 {} ms; {}; {})",
                        format_value(r.records_per_sec, "rec/s"),
                        r.requests_per_sec,
                        format_ms(r.latency_ms.p99),
                        error_count(r.errors),
                        load_1m(run)
                    ))
                    .target(
                        format!(
                            ">= {}, 0 errors",
                            format_value(target::SERVE_BATCH_RECORDS, "rec/s")
                        ),
                        r.records_per_sec >= target::SERVE_BATCH_RECORDS && r.errors == 0,
                    ),
            );
        }
    }

    let label = format!("GET /v1/route, new unit per request, 64 connections, {secs:.0} s");
    match serve_run(serve, "route") {
        Err(reason) => {
            rows.push(Figure::error(3, "serve.route", label, reason).issue(issue::SERVE))
        }
        Ok(run) => {
            let r = &run.report;
            rows.push(
                Figure::new(3, "serve.route.rps", label, r.requests_per_sec, "req/s")
                    .issue(issue::SERVE)
                    .measured(format!(
                        "{} (p99 {} ms; {}; {})",
                        format_value(r.requests_per_sec, "req/s"),
                        format_ms(r.latency_ms.p99),
                        error_count(r.errors),
                        load_1m(run)
                    ))
                    .target(
                        format!(
                            ">= {}, 0 errors",
                            format_value(target::SERVE_ROUTE_RPS, "req/s")
                        ),
                        r.requests_per_sec >= target::SERVE_ROUTE_RPS && r.errors == 0,
                    ),
            );
        }
    }

    // One note for the group: how it was measured, the load average, and anything amiss.
    let mut loads = Vec::new();
    let mut problems = Vec::new();
    for outcome in &serve.scenarios {
        let name = outcome.scenario.name;
        let Measured::Ok(run) = &outcome.result else {
            continue;
        };
        loads.push(format!(
            "{name} {} -> {}",
            run.load_before.as_deref().unwrap_or("?"),
            run.load_after.as_deref().unwrap_or("?")
        ));
        if run.report.errors > 0 {
            problems.push(format!(
                "{name}: {} of {} requests failed, first: {}",
                run.report.errors,
                run.report.requests,
                run.report.first_error.as_deref().unwrap_or("?")
            ));
        }
        if run.server_exit != "exit status: 0" {
            problems.push(format!(
                "{name}: the server ended with {} after SIGTERM",
                run.server_exit
            ));
        }
    }
    let mut note = format!(
        "serve: each scenario on a fresh database (champion m1 registered with `afs ab \
         set-champion`, so /v1/route has a model) served by a fresh `afs serve --addr \
         127.0.0.1:0` (default workers: one per CPU, {} CPUs here), stopped with SIGTERM \
         after its run; load from a second process, `afs-bench serve-load` (1 generator thread, \
         closed loop: one request in flight per connection), {:.0} s of warm-up not counted, \
         then {secs:.0} s. Load average (1/5/15 min) just before -> just after each run: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        serve.warmup_secs,
        loads.join("; ")
    );
    if !problems.is_empty() {
        let _ = write!(note, ". PROBLEMS: {}", problems.join("; "));
    }
    // On the first measured row: an error row's note is its reason.
    if let Some(row) = rows[first..].iter_mut().find(|f| f.note.is_none()) {
        row.note = Some(note);
    }
}

/// The run of one serve scenario, or why there is none.
fn serve_run<'a>(serve: &'a ServeResults, name: &str) -> Result<&'a ScenarioRun, String> {
    match serve.scenario(name).map(|s| &s.result) {
        None => Err("not measured".into()),
        Some(Measured::Error(reason)) => Err(reason.clone()),
        Some(Measured::Ok(run)) => Ok(run),
    }
}

fn error_count(n: u64) -> String {
    match n {
        1 => "1 error".into(),
        n => format!("{} errors", thousands(n)),
    }
}

/// The 1-minute load average just before and just after a run.
fn load_1m(run: &ScenarioRun) -> String {
    let first = |load: &Option<String>| {
        load.as_deref()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "load {} -> {}",
        first(&run.load_before),
        first(&run.load_after)
    )
}

/// The usage store on PostgreSQL, each figure with the CPU the server spent on it, in the
/// issue's order; the builds of the logs last.
fn postgres_figures(pg: &PgResults, rows: &mut Vec<Figure>) {
    let pg = match pg {
        PgResults::Ran(pg) => pg,
        PgResults::Skipped(reason) => {
            rows.push(
                Figure::new(0, "postgres", "PostgreSQL figures", 0.0, "")
                    .issue(issue::POSTGRES)
                    .measured(format!("skipped: {reason}")),
            );
            return;
        }
        PgResults::Error(reason) => {
            rows.push(
                Figure::error(1, "postgres", "PostgreSQL figures", reason.clone())
                    .issue(issue::POSTGRES),
            );
            return;
        }
    };
    let first = rows.len();
    let mut builds = Vec::new();
    let cpu = |secs: Option<f64>, per: &str| {
        secs.map_or("server CPU not measured".to_string(), |s| {
            format!("server CPU {s:.2} s {per}")
        })
    };
    let cpu_call = |c: &Option<crate::postgres::CpuPerCall>| {
        c.as_ref()
            .map_or("server CPU not measured".to_string(), |c| {
                format!("server CPU {}", c.text())
            })
    };
    let error = |group: u8, id: &str, label: String, reason: &str| {
        Figure::error(group, id, label, reason.to_string()).issue(issue::POSTGRES)
    };

    // 1: logging one record per call.
    let label = |threads: usize, n: u64| {
        format!(
            "PostgreSQL: log one call at a time, {threads} thread{} ({} calls; server {}; \
             logging connections synchronous_commit=off, store.synchronous=normal, the default)",
            if threads == 1 { "" } else { "s" },
            thousands(n),
            pg.durability
        )
    };
    match &pg.logging {
        Measured::Error(reason) => rows.push(error(
            1,
            "postgres.log",
            label(4, pg.sizes.log_four),
            reason,
        )),
        Measured::Ok(rates) => {
            for (run, id) in [
                (&rates.four, "postgres.log.threads_4"),
                (&rates.one, "postgres.log.threads_1"),
            ] {
                let mut row = Figure::new(
                    1,
                    id,
                    label(run.threads, run.n_records),
                    run.rate(),
                    "rec/s",
                )
                .issue(issue::POSTGRES)
                .measured(format!(
                    "{} ({})",
                    format_value(run.rate(), "rec/s"),
                    cpu(
                        run.server_cpu_secs,
                        &format!("for {} records", short_count(run.n_records))
                    )
                ));
                if run.threads == 4 {
                    row = row.at_least(target::LOG_RATE).note(format!(
                        "postgres.log: PgStore::log in process, one record per call from {} \
                         threads (and from 1 for reference), each run in a fresh database \
                         after {} untimed calls; a call returns once its record committed \
                         (group commit shares one INSERT between callers waiting at once), \
                         with the server's {} and synchronous_commit=off on afs's logging \
                         connections (PgConfig::fast_log_commits, the default)",
                        run.threads, pg.sizes.log_warmup, pg.durability
                    ));
                } else {
                    row = row.label_suffix(", for reference");
                }
                if run.lost > 0 {
                    row = row.wrong(format!(
                        "{} logged records are missing from the log",
                        run.lost
                    ));
                }
                rows.push(row);
            }
        }
    }

    // 2: afs import.
    let label = format!(
        "PostgreSQL: afs import of {} JSONL records (whole process)",
        short_count(pg.sizes.import)
    );
    match &pg.import {
        Measured::Error(reason) => rows.push(error(2, "postgres.import", label, reason)),
        Measured::Ok(import) => {
            let rate = import.n_records as f64 / import.secs;
            rows.push(
                Figure::new(2, "postgres.import", label, rate, "rec/s")
                    .issue(issue::POSTGRES)
                    .measured(format!(
                        "{} (median of {:.2} s in runs of {}; {})",
                        format_value(rate, "rec/s"),
                        import.secs,
                        import
                            .runs
                            .iter()
                            .map(|s| format!("{s:.2}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        cpu(
                            import.server_cpu_secs,
                            &format!("for {} records", short_count(import.n_records))
                        )
                    ))
                    .at_least(target::PG_IMPORT_RATE)
                    .note(format!(
                        "postgres.import: `afs --db URL --json import FILE` into a fresh \
                         database (afs creates its tables), timed from process start to exit, \
                         the median of three after one untimed import, each after a \
                         CHECKPOINT and with no autovacuum worker running; \
                         the file ({:.0} MB) holds the same records as the SQLite import \
                         figure's; batches of the store's size (UsageStore::batch_rows: 2,000 on \
                         PostgreSQL) written by two threads on two connections \
                         (UsageStore::batch_writers)",
                        import.file_bytes as f64 / 1e6
                    )),
            );
        }
    }

    // 3 and 5 are measured on the big log, 4 on the small one.
    let big = short_count(pg.sizes.big);
    let at_size = pg.sizes.big == 1_000_000;
    let stats_label = format!(
        "PostgreSQL: stats_by_model, 24 h window, {big} log (median of {})",
        pg.sizes.stats_reps
    );
    let (stats, query) = match &pg.big {
        Measured::Error(reason) => (Err(reason.as_str()), Err(reason.as_str())),
        Measured::Ok(log) => {
            builds.push(build_row(&log.build, "postgres.build.big"));
            (measured_ref(&log.stats), measured_ref(&log.query))
        }
    };
    match stats {
        Err(reason) => rows.push(error(3, "postgres.stats", stats_label, reason)),
        Ok(stats) => {
            let mut row = Figure::new(
                3,
                "postgres.stats",
                stats_label,
                stats.times.median_ms,
                "ms",
            )
            .issue(issue::POSTGRES)
            .measured(format!(
                "{}; {}",
                ms_with_p95(stats.times.median_ms, stats.times.p95_ms),
                cpu_call(&stats.server_cpu)
            ))
            .note(format!(
                "postgres.stats: PgStore::stats_by_model in process over [now - 24 h + 17 min, \
                 now - 3 min), both edges inside a minute ({} records of {} models in it), on \
                 the SQLite big log's records built with log_batch; 5 untimed calls, then the \
                 timed ones, then more calls for the server CPU alone",
                thousands(stats.window_total),
                stats.models
            ));
            if at_size {
                row = row.at_most(target::STATS_MS);
            }
            rows.push(row);
        }
    }

    // 4: afs generate.
    let small = short_count(pg.sizes.small);
    let label = format!(
        "PostgreSQL: afs generate, {small} bench log (whole process, median of {})",
        pg.sizes.generate_reps
    );
    match &pg.generate {
        Measured::Error(reason) => rows.push(error(4, "postgres.generate", label, reason)),
        Measured::Ok(g) => {
            let ms = g.median_secs * 1000.0;
            let mut row = Figure::new(4, "postgres.generate", label, ms, "ms")
                .issue(issue::POSTGRES)
                .measured(format!(
                    "{} ms ({:.1}x seed; {} samples; runs {} ms; {})",
                    format_ms(ms),
                    seed::DATAGEN_SECS / g.median_secs,
                    thousands(g.final_count),
                    g.runs
                        .iter()
                        .map(|s| format_ms(s * 1000.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                    cpu(g.server_cpu_secs, "per run")
                ))
                .seed(seed::DATAGEN)
                .note(
                    "postgres.generate: `afs --db URL --json generate --no-write-back --out \
                     FILE` (the seed's settings; scores not written back, so every run reads \
                     the same log) on the SQLite small log's records, timed from process start \
                     to exit, after one untimed run",
                );
            if pg.sizes.small == 100_000 {
                let limit = seed::DATAGEN_SECS * 1000.0 / target::PG_DATAGEN_SPEEDUP;
                row = row.target(
                    format!(
                        "<= {} ms ({:.0}x faster)",
                        format_ms(limit),
                        target::PG_DATAGEN_SPEEDUP
                    ),
                    ms <= limit,
                );
            }
            rows.push(row);
            builds.push(build_row(&g.build, "postgres.build.small"));
        }
    }

    // 5: the first row of a filtered query.
    let label = format!(
        "PostgreSQL: query model={} q>={}: first row, {big} log (median of {})",
        crate::postgres::QUERY_MODEL,
        crate::postgres::QUERY_MIN_QUALITY,
        pg.sizes.first_row_reps
    );
    match query {
        Err(reason) => rows.push(error(5, "postgres.query", label, reason)),
        Ok(query) => {
            let mut row = Figure::new(5, "postgres.query", label, query.first_row.median_ms, "ms")
                .issue(issue::POSTGRES)
                .measured(format!(
                    "{}; {}",
                    ms_with_p95(query.first_row.median_ms, query.first_row.p95_ms),
                    cpu_call(&query.server_cpu)
                ))
                .note(
                    "postgres.query: PgStore::query in process with a RecordFilter of a model and \
                 a quality floor, timed from the call to holding the first record, a fresh \
                 stream each time, after 2 untimed calls",
                );
            if at_size {
                row = row.at_most(target::FIRST_ROW_MS);
            }
            rows.push(row);
        }
    }
    rows.append(&mut builds);

    // One note for the group, on its first row: the server and how its CPU is measured.
    if let Some(row) = rows[first..].iter_mut().find(|f| f.status != Status::Error) {
        let note = format!(
            "postgres: on {}; the server reports {}. Each figure in a fresh database; a log, \
             once built, is vacuumed, analysed and checkpointed before it is read. {}",
            pg.server,
            pg.settings,
            if pg.cpu_measured {
                "Server CPU: user+system time of the postmaster and every process below it, \
                 plus the backends it reaped, from /proc before and after each measurement"
            } else {
                "Server CPU is not measured (a server at a URL)"
            }
        );
        row.note = Some(match row.note.take() {
            Some(own) => format!("{note}\n  {own}"),
            None => note,
        });
    }
}

/// The value measured, or why there is none.
fn measured_ref<T>(measured: &Measured<T>) -> Result<&T, &str> {
    match measured {
        Measured::Ok(value) => Ok(value),
        Measured::Error(reason) => Err(reason),
    }
}

/// Background row: a PostgreSQL log built with `log_batch`.
fn build_row(build: &crate::postgres::Build, id: &str) -> Figure {
    let rate = build.n_records as f64 / build.secs;
    let cpu = |secs: Option<f64>| secs.map_or("not measured".to_string(), |s| format!("{s:.1} s"));
    Figure::new(
        0,
        id,
        format!(
            "PostgreSQL: build {} log with log_batch of {}",
            short_count(build.n_records),
            thousands(crate::postgres::BATCH as u64)
        ),
        rate,
        "rec/s",
    )
    .issue(issue::POSTGRES)
    .measured(format!(
        "{} ({:.1} s, server CPU {}; then VACUUM+CHECKPOINT {:.1} s, server CPU {})",
        format_value(rate, "rec/s"),
        build.secs,
        cpu(build.server_cpu_secs),
        build.settle_secs,
        cpu(build.settle_cpu_secs)
    ))
}
