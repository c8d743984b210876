//! `afs stats`: usage statistics, overall or per model.

use std::collections::BTreeMap;

use afs_store::{StatsWindow, UsageStats, UsageStore};

use crate::cli::{GlobalArgs, StatsArgs};
use crate::output::{print_json, print_line, table, StatsJson};
use crate::store_open::{configured, open, Create};

/// Prints the statistics asked for by `args`.
pub(crate) fn run(global: &GlobalArgs, args: &StatsArgs) -> anyhow::Result<()> {
    let store = open(configured(global)?, Create::Never)?;
    let now = store.clock().now();
    let window = StatsWindow {
        since: args.since.map(|t| t.resolve_to_minute(now)),
        until: args.until.map(|t| t.resolve_to_minute(now)),
        model: args.model.clone(),
    };
    tracing::debug!(?window, "computing statistics");
    if args.by_model {
        let by_model = store.stats_by_model(&window)?;
        if global.json {
            let json: BTreeMap<&str, StatsJson> = by_model
                .iter()
                .map(|(model, stats)| (model.as_str(), StatsJson::from(stats)))
                .collect();
            print_json(&json)
        } else if by_model.is_empty() {
            print_line("no records")
        } else {
            print_line(table(&model_rows(&by_model)).trim_end())
        }
    } else {
        let stats = store.stats(&window)?;
        if global.json {
            print_json(&StatsJson::from(&stats))
        } else {
            print_line(table(&summary_rows(&stats)).trim_end())
        }
    }
}

/// One `name value` row per figure, in the order of the JSON output.
fn summary_rows(stats: &UsageStats) -> Vec<Vec<String>> {
    let rows = [
        ("total", stats.total.to_string()),
        ("with_feedback", stats.with_feedback.to_string()),
        ("positive_feedback", stats.positive_feedback.to_string()),
        ("negative_feedback", stats.negative_feedback.to_string()),
        ("neutral_feedback", stats.neutral_feedback.to_string()),
        ("feedback_rate", fixed(Some(stats.feedback_rate()), 4)),
        ("positive_rate", fixed(stats.positive_rate(), 4)),
        ("negative_rate", fixed(stats.negative_rate(), 4)),
        ("avg_quality_score", fixed(stats.avg_quality_score(), 4)),
        (
            "quality_stddev",
            fixed(stats.quality_variance().map(f64::sqrt), 4),
        ),
        ("quality_samples", stats.n_quality.to_string()),
        ("avg_latency_ms", fixed(stats.avg_latency_ms(), 1)),
        ("total_tokens", stats.total_tokens.to_string()),
    ];
    rows.into_iter()
        .map(|(name, value)| vec![name.to_string(), value])
        .collect()
}

/// A header row and one row per model with the most used figures.
fn model_rows(by_model: &BTreeMap<String, UsageStats>) -> Vec<Vec<String>> {
    let header = [
        "model",
        "total",
        "feedback",
        "up",
        "down",
        "avg_quality",
        "stddev",
        "avg_latency_ms",
        "tokens",
    ];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    // Model names in natural order: nayru-v2 before nayru-v10.
    let mut models: Vec<(&String, &UsageStats)> = by_model.iter().collect();
    models.sort_by(|a, b| crate::output::natural_cmp(a.0, b.0));
    for (model, stats) in models {
        rows.push(vec![
            model.clone(),
            stats.total.to_string(),
            stats.with_feedback.to_string(),
            stats.positive_feedback.to_string(),
            stats.negative_feedback.to_string(),
            fixed(stats.avg_quality_score(), 4),
            fixed(stats.quality_variance().map(f64::sqrt), 4),
            fixed(stats.avg_latency_ms(), 1),
            stats.total_tokens.to_string(),
        ]);
    }
    rows
}

/// A number with `decimals` digits, or `-` when there is none.
fn fixed(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}
