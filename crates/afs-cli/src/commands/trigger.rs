//! `afs trigger check`: run the trigger policies now and print whether a retrain is due.

use afs_trigger::{RetrainTrigger, TriggerResult};

use crate::cli::{GlobalArgs, TriggerArgs, TriggerCheckArgs, TriggerCommand};
use crate::config;
use crate::exit::{Silent, NOT_TRIGGERED};
use crate::output::{print_json, print_line, table};
use crate::store_open::{open, Create};

/// Runs the `afs trigger` subcommand named by `args`.
pub(crate) fn run(global: &GlobalArgs, args: &TriggerArgs) -> anyhow::Result<()> {
    match &args.command {
        TriggerCommand::Check(check_args) => check(global, check_args),
    }
}

/// Checks the triggers of the `[trigger]` config section against the store.
fn check(global: &GlobalArgs, args: &TriggerCheckArgs) -> anyhow::Result<()> {
    let config = config::load(global)?;
    let store = open(config.store_config(&global.db), Create::Never)?;
    let trigger = RetrainTrigger::new(config.trigger)?;
    let result = trigger.check(&store, args.force)?;
    tracing::info!(triggered = result.triggered, trigger_type = ?result.trigger_type, "trigger checked");
    if global.json {
        print_json(&result)?;
    } else {
        print_line(describe(&result).trim_end())?;
    }
    if args.exit_code && !result.triggered {
        return Err(Silent(NOT_TRIGGERED).into());
    }
    Ok(())
}

/// `triggered (TYPE)` or `not triggered`, the reason, then the metrics, one per line.
pub(crate) fn describe(result: &TriggerResult) -> String {
    let mut text = match (result.triggered, result.trigger_type) {
        (true, Some(t)) => format!("triggered ({})\n", t.as_str()),
        (true, None) => "triggered\n".to_string(),
        (false, _) => "not triggered\n".to_string(),
    };
    text.push_str(&format!("  reason: {}\n", result.reason));
    if !result.metrics.is_empty() {
        text.push_str("  metrics:\n");
        let rows: Vec<Vec<String>> = result
            .metrics
            .iter()
            .map(|(name, value)| vec![format!("    {name}"), format_metric(*value)])
            .collect();
        text.push_str(&table(&rows));
    }
    text
}

/// A metric without needless digits: `1000`, `0.8125`, `NaN`.
fn format_metric(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.is_finite() {
        let text = format!("{value:.4}");
        let text = text.trim_end_matches('0');
        text.trim_end_matches('.').to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_short() {
        assert_eq!(format_metric(1000.0), "1000");
        assert_eq!(format_metric(0.8125), "0.8125");
        assert_eq!(format_metric(0.1), "0.1");
        assert_eq!(format_metric(2.0 / 3.0), "0.6667");
        assert_eq!(format_metric(-0.5), "-0.5");
        assert_eq!(format_metric(f64::NAN), "NaN");
    }
}
