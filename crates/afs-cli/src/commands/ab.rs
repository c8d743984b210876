//! `afs ab`: champion/challenger experiments: status, deploy, set-champion, route, compare,
//! check, set-weight, promote, rollback and history.

use std::sync::Arc;

use crate::any_store::AnyStore;
use afs_abtest::{
    AbTest, AbTestConfig, AbTestError, Aggregation, Analysis, Comparison, HashRouter, Metric,
    MetricResult, MetricRole, Router, RoutingTable,
};
use afs_store::{
    Decision, EventFilter, EventKind, Experiment, ExperimentStatus, ExperimentStore,
    NewModelVersion, UsageStore,
};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{
    AbArgs, AbCommand, AbDeployArgs, AbHistoryArgs, AbPromoteArgs, AbRollbackArgs, AbRouteArgs,
    AbSetChampionArgs, AbSetWeightArgs, GlobalArgs,
};
use crate::config;
use crate::domain_json;
use crate::exit::InvalidInput;
use crate::output::{left_table, print_json, print_line, rfc3339};
use crate::store_open::{open, Create};

/// Runs the `afs ab` subcommand named by `args`.
pub(crate) fn run(global: &GlobalArgs, args: &AbArgs) -> anyhow::Result<()> {
    match &args.command {
        AbCommand::Status => status(global),
        AbCommand::Deploy(a) => deploy(global, a),
        AbCommand::SetChampion(a) => set_champion(global, a),
        AbCommand::Route(a) => route(global, a),
        AbCommand::Compare => compare(global),
        AbCommand::Check => check(global),
        AbCommand::SetWeight(a) => set_weight(global, a),
        AbCommand::Promote(a) => promote(global, a),
        AbCommand::Rollback(a) => rollback(global, a),
        AbCommand::History(a) => history(global, a),
    }
}

/// The experiments of the database at `--db`, with the `[abtest]` settings of the config
/// file (read first, so that a bad file is reported before anything is opened).
fn open_ab(global: &GlobalArgs, create: Create) -> anyhow::Result<AbTest<AnyStore>> {
    let config = config::load(global)?;
    let store = open(config.store_config(&global.db), create)?;
    Ok(AbTest::new(Arc::new(store), config.abtest)?)
}

fn now(ab: &AbTest<AnyStore>) -> DateTime<Utc> {
    ab.store().clock().now()
}

/// The reason given with `--reason`, or `default`; an empty reason is refused.
fn reason(given: Option<&str>, default: &str) -> anyhow::Result<String> {
    match given {
        Some(text) if text.trim().is_empty() => {
            Err(InvalidInput("invalid --reason: must not be empty".into()).into())
        }
        Some(text) => Ok(text.to_string()),
        None => Ok(default.to_string()),
    }
}

/// Checks a challenger weight given on the command line: strictly between 0 and 1, since a
/// challenger without traffic cannot be judged and one with all of it has no champion to be
/// compared with (promote or roll back instead).
fn check_weight(weight: f64) -> anyhow::Result<()> {
    if weight.is_finite() && weight > 0.0 && weight < 1.0 {
        return Ok(());
    }
    Err(InvalidInput(format!(
        "invalid weight: {weight} is not within (0, 1) (to give the challenger all traffic, \
         promote it; to give it none, roll it back)"
    ))
    .into())
}

/// The version to register from a name, a path and the optional provenance.
fn new_version(
    name: &str,
    path: &str,
    dataset: Option<&String>,
    run_id: Option<&String>,
) -> NewModelVersion {
    NewModelVersion {
        dataset: dataset.cloned(),
        run_id: run_id.cloned(),
        ..NewModelVersion::new(name, path)
    }
}

fn status(global: &GlobalArgs) -> anyhow::Result<()> {
    let ab = open_ab(global, Create::Never)?;
    let status = ab.status()?;
    let now = now(&ab);
    let last = match &status.experiment {
        Some(_) => None,
        None => ab.store().experiments()?.pop(),
    };
    if global.json {
        return print_json(&json!({
            "champion": status.champion.as_ref().map(domain_json::version),
            "challenger": status.challenger.as_ref().map(domain_json::version),
            "experiment": status.experiment.as_ref().map(|e| domain_json::experiment(e, now)),
            "last_experiment": last.as_ref().map(|e| domain_json::experiment(e, now)),
        }));
    }
    let mut text = String::new();
    match &status.champion {
        Some(v) => text.push_str(&format!(
            "champion:    {} (version {}, {}; since {})\n",
            v.name,
            v.id,
            v.model_path,
            rfc3339(v.promoted_at.unwrap_or(v.created_at))
        )),
        None => text.push_str(
            "champion:    none (register one with `afs ab set-champion NAME --path P`)\n",
        ),
    }
    match (&status.challenger, &status.experiment) {
        (Some(v), Some(e)) => {
            text.push_str(&format!(
                "challenger:  {} (version {}, {}; deployed {})\n",
                v.name,
                v.id,
                v.model_path,
                rfc3339(v.created_at)
            ));
            text.push_str(&format!(
                "weight:      {} of traffic to the challenger, {} to the champion\n",
                percent(e.challenger_weight),
                percent(1.0 - e.challenger_weight)
            ));
            text.push_str(&format!(
                "experiment:  {}, running since {} ({}), routing seed {}\n",
                e.id,
                rfc3339(e.started_at),
                hours(domain_json::elapsed_hours(e.started_at, now)),
                e.seed
            ));
            text.push_str("periods:\n");
            text.push_str(&indent(&left_table(&period_rows(e)), "  "));
        }
        _ => {
            if status.champion.is_some() {
                text.push_str(
                    "challenger:  none (deploy one with `afs ab deploy NAME --path P`)\n",
                );
            }
            if let Some(e) = &last {
                text.push_str(&format!(
                    "last experiment: {}, {} vs {}, {} at {}\n",
                    e.id,
                    e.champion,
                    e.challenger,
                    ended_word(e.status),
                    e.ended_at.map_or("-".to_string(), rfc3339)
                ));
            }
        }
    }
    print_line(text.trim_end())
}

fn deploy(global: &GlobalArgs, args: &AbDeployArgs) -> anyhow::Result<()> {
    if let Some(weight) = args.weight {
        check_weight(weight)?;
    }
    let reason = reason(args.reason.as_deref(), "manual deploy by operator")?;
    let ab = open_ab(global, Create::Never)?;
    let version = new_version(
        &args.name,
        &args.path,
        args.dataset.as_ref(),
        args.run_id.as_ref(),
    );
    let experiment = match args.seed {
        Some(seed) => ab.deploy_challenger_with_seed(&version, args.weight, seed, &reason)?,
        None => ab.deploy_challenger(&version, args.weight, &reason)?,
    };
    let challenger = ab.store().model_version(&experiment.challenger)?;
    tracing::info!(experiment = experiment.id, challenger = %challenger.name, "deployed challenger");
    if global.json {
        return print_json(&json!({
            "experiment": domain_json::experiment(&experiment, now(&ab)),
            "challenger": domain_json::version(&challenger),
        }));
    }
    print_line(&format!(
        "deployed {} as challenger to {} with {} of traffic (experiment {}, routing seed {})",
        experiment.challenger,
        experiment.champion,
        percent(experiment.challenger_weight),
        experiment.id,
        experiment.seed
    ))
}

fn set_champion(global: &GlobalArgs, args: &AbSetChampionArgs) -> anyhow::Result<()> {
    let reason = reason(args.reason.as_deref(), "manual set-champion by operator")?;
    // Registering the first model is a natural first step, before anything is logged.
    let ab = open_ab(global, Create::IfMissing)?;
    let previous = ab.store().champion()?;
    let version = new_version(
        &args.name,
        &args.path,
        args.dataset.as_ref(),
        args.run_id.as_ref(),
    );
    let champion = ab.set_champion(&version, &reason)?;
    tracing::info!(champion = %champion.name, "champion set");
    if global.json {
        return print_json(&json!({
            "champion": domain_json::version(&champion),
            "retired": previous.as_ref().map(|v| v.name.as_str()),
        }));
    }
    let retired = previous.map_or(String::new(), |v| format!("; {} retired", v.name));
    print_line(&format!(
        "{} is the champion (version {}, {}){retired}",
        champion.name, champion.id, champion.model_path
    ))
}

fn route(global: &GlobalArgs, args: &AbRouteArgs) -> anyhow::Result<()> {
    let ab = open_ab(global, Create::Never)?;
    // One snapshot of the routing state, so that the arm, the model and the experiment
    // reported belong together.
    let experiment = ab.store().running_experiment()?;
    let table = match &experiment {
        Some(e) => RoutingTable::from_experiment(e),
        None => ab.routing_table()?,
    };
    let arm = HashRouter::new().route(&table, args.unit.as_deref());
    let model = table.model(arm);
    let version = ab.store().model_version(model)?;
    if global.json {
        return print_json(&json!({
            "model": model,
            "arm": arm.as_str(),
            "version_id": version.id,
            "model_path": version.model_path,
            "unit": args.unit,
            "experiment_id": experiment.as_ref().map(|e| e.id),
            "challenger_weight": table.challenger_weight(),
        }));
    }
    print_line(&format!("{model} ({})", arm.as_str()))
}

fn compare(global: &GlobalArgs) -> anyhow::Result<()> {
    let ab = open_ab(global, Create::Never)?;
    let Some(experiment) = ab.store().running_experiment()? else {
        return Err(AbTestError::NoRunningExperiment.into());
    };
    let comparison = ab.compare()?.ok_or(AbTestError::NoRunningExperiment)?;
    if global.json {
        return print_json(&comparison.to_json());
    }
    print_line(report(&comparison, &experiment, ab.config()).trim_end())
}

fn check(global: &GlobalArgs) -> anyhow::Result<()> {
    let ab = open_ab(global, Create::Never)?;
    let experiment = ab.store().running_experiment()?;
    let outcome = ab.check()?;
    let (Some(experiment), Some(comparison)) = (experiment, outcome.comparison.as_ref()) else {
        if global.json {
            return print_json(&json!({
                "experiment_id": null,
                "decision": null,
                "reason": "no experiment is running",
                "applied": null,
                "new_weight": null,
                "comparison": null,
            }));
        }
        return print_line("no experiment is running; nothing to check");
    };
    if global.json {
        return print_json(&json!({
            "experiment_id": comparison.experiment_id,
            "decision": comparison.decision.as_str(),
            "reason": comparison.reason,
            "applied": outcome.applied.map(|d| d.as_str()),
            "new_weight": outcome.new_weight,
            "comparison": comparison.to_json(),
        }));
    }
    let mut text = report(comparison, &experiment, ab.config());
    let action = match (outcome.applied, comparison.decision) {
        (Some(Decision::Promote), _) => format!(
            "promoted {} to champion; {} retired",
            comparison.challenger, comparison.champion
        ),
        (Some(Decision::Rollback), _) => format!(
            "rolled back {}; {} keeps all traffic",
            comparison.challenger, comparison.champion
        ),
        (None, Decision::Promote) => {
            "none: automatic promotion is disabled (abtest.enable_auto_promotion)".to_string()
        }
        (None, Decision::Rollback) => {
            "none: automatic rollback is disabled (abtest.enable_auto_rollback)".to_string()
        }
        _ => "none".to_string(),
    };
    text.push_str(&format!("action:   {action}\n"));
    if let Some(weight) = outcome.new_weight {
        text.push_str(&format!(
            "bandit:   challenger weight set to {}\n",
            percent(weight)
        ));
    }
    print_line(text.trim_end())
}

fn set_weight(global: &GlobalArgs, args: &AbSetWeightArgs) -> anyhow::Result<()> {
    check_weight(args.weight)?;
    let reason = reason(args.reason.as_deref(), "manual weight change by operator")?;
    let ab = open_ab(global, Create::Never)?;
    let experiment = ab.set_weight(args.weight, &reason)?;
    let previous = experiment
        .periods
        .iter()
        .rev()
        .nth(1)
        .map(|p| p.challenger_weight);
    if global.json {
        return print_json(&json!({
            "experiment": domain_json::experiment(&experiment, now(&ab)),
            "previous_weight": previous,
        }));
    }
    let was = previous.map_or(String::new(), |w| format!(" (was {})", percent(w)));
    print_line(&format!(
        "challenger {} now gets {} of traffic{was}; experiment {}, period {} from {}",
        experiment.challenger,
        percent(experiment.challenger_weight),
        experiment.id,
        experiment.periods.len() - 1,
        rfc3339(experiment.weight_updated_at())
    ))
}

fn promote(global: &GlobalArgs, args: &AbPromoteArgs) -> anyhow::Result<()> {
    let reason = reason(args.reason.as_deref(), "manual promote by operator")?;
    let ab = open_ab(global, Create::Never)?;
    let experiment = ab.promote(&reason)?;
    tracing::info!(experiment = experiment.id, "promoted");
    if global.json {
        return print_json(&json!({
            "experiment": domain_json::experiment(&experiment, now(&ab)),
            "champion": experiment.challenger,
            "retired": experiment.champion,
        }));
    }
    print_line(&format!(
        "promoted {} to champion; {} retired (experiment {})",
        experiment.challenger, experiment.champion, experiment.id
    ))
}

fn rollback(global: &GlobalArgs, args: &AbRollbackArgs) -> anyhow::Result<()> {
    let reason = reason(args.reason.as_deref(), "manual rollback by operator")?;
    let ab = open_ab(global, Create::Never)?;
    let experiment = ab.rollback(&reason)?;
    tracing::info!(experiment = experiment.id, "rolled back");
    if global.json {
        return print_json(&json!({
            "experiment": domain_json::experiment(&experiment, now(&ab)),
            "champion": experiment.champion,
            "retired": experiment.challenger,
        }));
    }
    print_line(&format!(
        "rolled back {}; {} keeps all traffic (experiment {})",
        experiment.challenger, experiment.champion, experiment.id
    ))
}

fn history(global: &GlobalArgs, args: &AbHistoryArgs) -> anyhow::Result<()> {
    let ab = open_ab(global, Create::Never)?;
    if let Some(id) = args.experiment {
        // An unknown id is an error (exit 4), not an empty history.
        ab.store().experiment(id)?;
    }
    let kinds = args
        .kind
        .iter()
        .filter_map(|k| EventKind::parse(k))
        .collect();
    let events = ab.store().events(&EventFilter {
        experiment_id: args.experiment,
        kinds,
        limit: Some(args.limit),
        newest_first: true,
    })?;
    if global.json {
        for event in &events {
            print_json(&domain_json::event(event, true))?;
        }
        return Ok(());
    }
    if events.is_empty() {
        return print_line("no events");
    }
    let mut rows = vec![[
        "at",
        "experiment",
        "event",
        "model",
        "decision",
        "weight",
        "reason",
    ]
    .map(str::to_string)
    .to_vec()];
    for e in &events {
        rows.push(vec![
            rfc3339(e.at),
            e.experiment_id.map_or("-".to_string(), |id| id.to_string()),
            e.kind.as_str().to_string(),
            e.model.clone().unwrap_or_else(|| "-".to_string()),
            e.decision.map_or("-", |d| d.as_str()).to_string(),
            e.weight.map_or("-".to_string(), percent),
            e.reason.clone(),
        ]);
    }
    print_line(left_table(&rows).trim_end())
}

// ---------------------------------------------------------------------------------------
// JSON shapes.

// ---------------------------------------------------------------------------------------
// The text report of `afs ab compare` and `afs ab check`.

/// The judge's report for a terminal: a header with each arm's units and requests, a block
/// per metric, the decision and its reason, the sample-ratio check and the seed's view.
fn report(c: &Comparison, experiment: &Experiment, config: &AbTestConfig) -> String {
    let mut text = format!(
        "experiment {}: champion {} vs challenger {}, running {} (looked at {})\n",
        c.experiment_id,
        c.champion,
        c.challenger,
        hours(c.elapsed_hours),
        rfc3339(c.evaluated_at)
    );
    let analysed = match c.analysis {
        Analysis::Units => "analysed by unit (user or session id)",
        Analysis::NoUnitIds => "analysed per request: no record carries a unit id",
        Analysis::Requests => "analysed per request: no unit statistics",
    };
    text.push_str(&format!(
        "traffic: {} to the challenger; {analysed}\n",
        percent(experiment.challenger_weight)
    ));
    let arm = |role: &str, name: &str, units: u64, requests: u64, feedback: u64| {
        let units = if c.analysis == Analysis::Units {
            format!("{}, ", plural(units, "unit"))
        } else {
            String::new()
        };
        format!(
            "  {role} {name}: {units}{}, {}\n",
            plural(requests, "request"),
            plural(feedback, "feedback event")
        )
    };
    text.push_str(&arm(
        "champion",
        &c.champion,
        c.champion_units,
        c.champion_requests,
        c.champion_feedback,
    ));
    text.push_str(&arm(
        "challenger",
        &c.challenger,
        c.challenger_units,
        c.challenger_requests,
        c.challenger_feedback,
    ));
    let level = format!("{}%", trim_number((1.0 - config.alpha) * 100.0));
    for m in &c.metrics {
        text.push('\n');
        text.push_str(&metric_block(m, c.analysis, &level, config.alpha));
    }
    text.push('\n');
    text.push_str(&format!("decision: {}\n", c.decision.as_str()));
    text.push_str(&format!("reason:   {}\n", c.reason));
    text.push_str(&format!("sample ratio: {}\n", srm_text(c)));

    let seed = &c.seed;
    let score = seed
        .weighted_improvement
        .map_or("n/a".to_string(), signed_percent);
    let winner = seed.winner.map_or("none", |arm| arm.as_str());
    let fixed_p = seed.fixed_p.map_or("n/a".to_string(), p_value);
    text.push_str(&format!(
        "seed's rule, for contrast only: weighted improvement {score} (winner: {winner}); \
         fixed-sample p {fixed_p}; would promote: {}\n",
        if seed.fixed_rule_promotes {
            "yes"
        } else {
            "no"
        }
    ));
    text
}

/// The sample-ratio line: what was counted (the units first assigned to each arm, or
/// requests when requests are the units), which test (the sequential test on assigned units,
/// or chi-square on request counts), the shares and the verdict.
fn srm_text(c: &Comparison) -> String {
    let srm = &c.srm;
    let counted = if c.analysis == Analysis::Units {
        "units"
    } else {
        "requests"
    };
    let (champion, challenger) = srm
        .champion_units
        .zip(srm.challenger_units)
        .unwrap_or((srm.champion_requests, srm.challenger_requests));
    let (Some(expected), Some(observed)) =
        (srm.expected_challenger_share, srm.observed_challenger_share)
    else {
        return format!("no {counted} yet");
    };
    let shares = format!(
        "{counted}: expected {} to the challenger, observed {}",
        percent_precise(expected),
        percent_precise(observed)
    );
    let Some(p) = srm.p_value else {
        return format!("{shares} (too few {counted} to test)");
    };
    let test = match srm.chi_square {
        Some(chi2) => format!("chi-square {chi2:.2}, p {}", p_value(p)),
        None => format!("sequential test, always-valid p {}", p_value(p)),
    };
    let verdict = if srm.mismatch {
        "MISMATCH: routing or logging is broken; holding"
    } else {
        "ok"
    };
    format!(
        "{shares} ({} vs {}; {test}): {verdict}",
        thousands(champion),
        thousands(challenger)
    )
}

/// One metric's block: its role, both arms (value, units, observations), how the units were
/// combined, the difference, the interval, the p-values and the verdict.
fn metric_block(m: &MetricResult, analysis: Analysis, level: &str, alpha: f64) -> String {
    let metric = m.metric;
    let direction = if metric.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    let (role, p_labels) = role_of(m);
    let mut text = format!("{} ({role}; {direction})\n", metric.key());
    let by_unit = analysis == Analysis::Units;
    text.push_str(&arm_rows(m, by_unit));
    for (name, detail) in [
        ("aggregation", aggregation_text(m, by_unit)),
        ("difference", difference_text(m)),
        ("interval", interval_text(m, level)),
        ("p-values", p_values_text(m, p_labels, alpha)),
        ("verdict", m.verdict.as_str().to_string()),
    ] {
        text.push_str(&format!("{}{detail}\n", row_label(name)));
    }
    text
}

/// A metric's role as shown in its block's heading, and the labels of its two p-values
/// (improvement, harm).
fn role_of(m: &MetricResult) -> (String, (&'static str, &'static str)) {
    match m.role {
        MetricRole::Primary => ("primary metric".to_string(), ("better", "worse")),
        MetricRole::Guardrail { margin } => {
            let limit = m.null_difference.map_or(String::new(), |d| {
                format!(" = {}", format_difference(m.metric, d))
            });
            (
                format!(
                    "guardrail, at most {}% worse{limit}",
                    trim_number(margin * 100.0)
                ),
                ("within margin", "beyond margin"),
            )
        }
    }
}

/// A row label of a metric's block, padded to one width so that the arms' columns and the
/// details line up.
fn row_label(name: &str) -> String {
    format!("  {name:<12}  ")
}

/// The rows of both arms' value, units (when analysed by unit) and observations, under a
/// heading row, in right-aligned columns.
fn arm_rows(m: &MetricResult, by_unit: bool) -> String {
    let value = |v: Option<f64>| v.map_or("-".to_string(), |v| format_value(m.metric, v));
    let mut arms = vec![
        ("", "champion".to_string(), "challenger".to_string()),
        ("value", value(m.champion_value), value(m.challenger_value)),
    ];
    if by_unit {
        arms.push((
            "units",
            thousands(m.champion_units),
            thousands(m.challenger_units),
        ));
    }
    arms.push((
        "observations",
        thousands(m.champion_n),
        thousands(m.challenger_n),
    ));
    let width_a = arms.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let width_b = arms.iter().map(|r| r.2.chars().count()).max().unwrap_or(0);
    let mut text = String::new();
    for (name, a, b) in arms {
        text.push_str(&format!(
            "{}{a:>width_a$}  {b:>width_b$}\n",
            row_label(name)
        ));
    }
    text
}

/// How the metric's units were combined, with CUPED's variance reduction when applied.
fn aggregation_text(m: &MetricResult, by_unit: bool) -> String {
    let aggregation = match (m.aggregation, by_unit) {
        (Some(Aggregation::UnitMean), true) => "per-unit mean (every unit weighs the same)",
        (Some(Aggregation::Ratio), true) => "ratio (every request weighs the same)",
        _ => "per request",
    };
    match m.cuped_reduction {
        Some(r) => format!(
            "{aggregation}; CUPED variance reduction {}",
            percent_precise(r)
        ),
        None => aggregation.to_string(),
    }
}

/// The difference challenger − champion, with the relative lift when there is one.
fn difference_text(m: &MetricResult) -> String {
    match (m.difference, m.relative_lift) {
        (Some(d), Some(lift)) => format!(
            "{} ({} relative)",
            format_difference(m.metric, d),
            signed_percent(lift)
        ),
        (Some(d), None) => format_difference(m.metric, d),
        _ => "-".to_string(),
    }
}

/// The confidence sequence of the difference at `level`, or why there is none yet.
fn interval_text(m: &MetricResult, level: &str) -> String {
    m.interval.map_or_else(
        || "- (the test starts when both arms have enough observations)".to_string(),
        |(lo, hi)| {
            format!(
                "[{}, {}] ({level} confidence sequence)",
                format_bound(m.metric, lo),
                format_bound(m.metric, hi)
            )
        },
    )
}

/// Both always-valid p-values under their `labels`, and the `alpha` they decide below.
fn p_values_text(m: &MetricResult, labels: (&str, &str), alpha: f64) -> String {
    match (m.p_better, m.p_worse) {
        (Some(better), Some(worse)) => format!(
            "{} {}, {} {} (always valid; decides below {})",
            labels.0,
            p_value(better),
            labels.1,
            p_value(worse),
            trim_number(alpha)
        ),
        _ => "-".to_string(),
    }
}

/// The rows of the periods table of `afs ab status`.
fn period_rows(e: &Experiment) -> Vec<Vec<String>> {
    e.periods
        .iter()
        .map(|p| {
            vec![
                p.index.to_string(),
                rfc3339(p.started_at),
                "to".to_string(),
                p.ended_at.map_or("now".to_string(), rfc3339),
                percent(p.challenger_weight),
                p.source.as_str().to_string(),
            ]
        })
        .collect()
}

fn ended_word(status: ExperimentStatus) -> &'static str {
    match status {
        ExperimentStatus::Running => "running",
        ExperimentStatus::Promoted => "challenger promoted",
        ExperimentStatus::RolledBack => "challenger rolled back",
    }
}

/// Each line of `text` prefixed with `prefix`.
fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// Hours, short: `0.5 h`, `60.0 h`.
fn hours(h: f64) -> String {
    format!("{h:.1} h")
}

/// A share as a percentage without needless digits: `10%`, `12.5%`.
fn percent(share: f64) -> String {
    format!("{}%", trim_number(share * 100.0))
}

/// A share as a percentage with one decimal: `10.0%`.
fn percent_precise(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A relative change with its sign: `+12.3%`.
fn signed_percent(share: f64) -> String {
    format!("{:+.1}%", share * 100.0)
}

/// A number with at most four decimals and no trailing zeros: `0.05`, `95`, `12.5`.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A count with thousands separators: `1,801`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count with thousands separators and a noun, plural unless it is 1: `1,801 units`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", thousands(n))
    }
}

/// A p-value: four decimals, scientific below 0.0001, `1` for 1.
fn p_value(p: f64) -> String {
    if p >= 1.0 {
        "1".to_string()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A metric's value: quality plain, rates as percentages, latency in ms.
fn format_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Quality => format!("{value:.3}"),
        Metric::PositiveRate | Metric::NegativeRate => format!("{:.1}%", value * 100.0),
        Metric::Latency => format!("{value:.1} ms"),
    }
}

/// A difference of a metric with its sign: `+0.012`, `-1.5 pp`, `+12.0 ms`.
fn format_difference(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Quality => format!("{value:+.3}"),
        Metric::PositiveRate | Metric::NegativeRate => format!("{:+.1} pp", value * 100.0),
        Metric::Latency => format!("{value:+.1} ms"),
    }
}

/// An end of an interval: a difference, or `-inf`/`+inf` when that side is still open.
fn format_bound(metric: Metric, value: f64) -> String {
    if value.is_finite() {
        format_difference(metric, value)
    } else if value > 0.0 {
        "+inf".to_string()
    } else {
        "-inf".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent_precise(0.1), "10.0%");
        assert_eq!(signed_percent(-0.0312), "-3.1%");
        assert_eq!(trim_number(95.0), "95");
        assert_eq!(trim_number(0.05), "0.05");
        assert_eq!(p_value(1.0), "1");
        assert_eq!(p_value(0.04321), "0.0432");
        assert_eq!(p_value(0.00001234), "1.2e-5");
        assert_eq!(format_value(Metric::NegativeRate, 0.25), "25.0%");
        assert_eq!(format_difference(Metric::Latency, -12.0), "-12.0 ms");
        assert_eq!(format_difference(Metric::Quality, 0.0123), "+0.012");
        assert_eq!(format_bound(Metric::Quality, f64::INFINITY), "+inf");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1801), "1,801");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(plural(1, "unit"), "1 unit");
        assert_eq!(plural(6102, "request"), "6,102 requests");
    }

    #[test]
    fn weights_must_be_strictly_between_0_and_1() {
        for ok in [0.01, 0.5, 0.99] {
            assert!(check_weight(ok).is_ok(), "{ok}");
        }
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = check_weight(bad).unwrap_err();
            assert!(err.to_string().contains("invalid weight"), "{bad}: {err}");
        }
    }

    #[test]
    fn reasons_default_and_refuse_empty() {
        assert_eq!(reason(None, "d").unwrap(), "d");
        assert_eq!(reason(Some("why"), "d").unwrap(), "why");
        assert!(reason(Some("  "), "d").is_err());
    }
}
