//! `afs generate`: turn the usage log into a training file.

use std::cell::Cell;
use std::io::{self, IsTerminal};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use afs_datagen::{
    generate_with, DatagenError, ExistingReport, GenerationResult, GeneratorConfig,
    HeuristicScorer, Hooks, Progress, Stage,
};
use afs_store::{StatsWindow, UsageStore};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{GenerateArgs, GlobalArgs};
use crate::config::{self, generator_key, Config};
use crate::exit::InvalidInput;
use crate::interrupt;
use crate::output::{count, print_json, print_line, rfc3339, table};
use crate::store_open::{open, Create};

/// Generates the training file described by the config file and `args`, and prints the
/// result.
pub(crate) fn run(global: &GlobalArgs, args: &GenerateArgs) -> anyhow::Result<()> {
    let config = config::load(global)?;
    let store = open(config.store_config(&global.db), Create::Never)?;
    let now = store.clock().now();
    let generator = generator_config(&config, args, now)?;
    tracing::debug!(?generator, out = %args.out.display(), "generating");

    // Ctrl-C stops the run at its next progress point (a few milliseconds), which removes
    // its temporary files; a second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    interrupt::install(
        stop.clone(),
        vec![interrupt::Step::SetFlag(
            "afs generate: stopping and removing the unfinished output (send the signal again \
             to exit at once)",
        )],
        "afs generate: exiting at once; a hidden temporary file may be left next to the output",
    )?;
    let bar = progress_bar();
    let stage = Cell::new(None);
    let on_progress = |p: Progress| show_progress(&bar, &stage, p);
    let hooks = Hooks {
        progress: Some(&on_progress),
        stop: Some(&stop),
        ..Hooks::default()
    };
    let result = generate_with(&store, &generator, &args.out, &HeuristicScorer, hooks);
    bar.finish_and_clear();
    let result = result?;
    tracing::info!(final_count = result.final_count, out = %result.output_path.display(), "generated");

    if result.total_candidates == 0 {
        eprintln!("warning: {}", no_candidates(&store, &generator)?);
    } else if result.final_count == 0 {
        eprintln!("warning: {}", no_samples(&result, &generator));
    }
    if let Some(existing) = &result.existing {
        if existing.malformed > 0 {
            eprintln!(
                "warning: {} of the existing file {} {} malformed and {} not used (see the report)",
                count(existing.malformed, "line"),
                generator
                    .existing
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                if existing.malformed == 1 { "is" } else { "are" },
                if existing.malformed == 1 {
                    "was"
                } else {
                    "were"
                },
            );
        }
    }
    if global.json {
        print_json(&result)
    } else {
        print_line(summary(&result).trim_end())
    }
}

/// Why a run found no records at all: the window or the model it was narrowed to (naming
/// the models the log has, as a misspelt `--model` is the usual cause), or an empty log.
fn no_candidates(store: &dyn UsageStore, g: &GeneratorConfig) -> anyhow::Result<String> {
    let mut narrowed = Vec::new();
    if let Some(model) = &g.model {
        let models = store.stats_by_model(&StatsWindow::default())?;
        let known: Vec<&str> = models.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        narrowed.push(format!("of model {model:?} (models in the log: {known})"));
    }
    if let Some(since) = g.since {
        narrowed.push(format!("at or after {}", rfc3339(since)));
    }
    if let Some(until) = g.until {
        narrowed.push(format!("before {}", rfc3339(until)));
    }
    Ok(if narrowed.is_empty() {
        "the log has no records; the output is empty".to_string()
    } else {
        format!("no records {}; the output is empty", narrowed.join(" and "))
    })
}

/// Why a run that found records wrote no sample: each stage that dropped some, largest
/// first. An empty file is not a dataset (`datasets.load_dataset` fails on it), so this is
/// said on stderr even though the run succeeded.
fn no_samples(r: &GenerationResult, g: &GeneratorConfig) -> String {
    let feedback = if g.format.is_preference() {
        "had no thumbs-up or thumbs-down feedback".to_string()
    } else {
        match g.min_user_feedback {
            Some(n) => format!("had no feedback of at least {n}"),
            None => "had no feedback".to_string(),
        }
    };
    let quality = format!("below the minimum quality {}", g.min_quality_score);
    // (count, what happened to them, whether it is said with "was"/"were")
    let mut stages = [
        (
            r.unpaired,
            "had no counterpart of opposite feedback for their query",
            false,
        ),
        (r.filtered_by_feedback, feedback.as_str(), false),
        (r.filtered_by_quality, quality.as_str(), true),
        (r.duplicates_removed, "duplicates", true),
        (r.near_duplicates_removed, "near-duplicates", true),
        (
            r.existing_duplicates_removed,
            "already in the existing file",
            true,
        ),
    ];
    stages.sort_by_key(|(n, _, _)| std::cmp::Reverse(*n));
    let reasons: Vec<String> = stages
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|&(n, what, with_be)| {
            let be = match (with_be, n) {
                (false, _) => "",
                (true, 1) => "was ",
                (true, _) => "were ",
            };
            format!("{} {be}{what}", count(n, "record"))
        })
        .collect();
    let what = if g.format.is_paired() {
        "no pairs"
    } else {
        "no samples"
    };
    format!(
        "{what}: of {}, {}; the output {} is empty, and loaders such as datasets' load_dataset \
         refuse an empty file",
        count(r.total_candidates, "record"),
        if reasons.is_empty() {
            "none was kept".to_string()
        } else {
            reasons.join(", ")
        },
        r.output_path.display()
    )
}

/// The generator settings: the config file's `[generator]`, overridden by the flags, and
/// validated with any error naming the flag or the config key at fault.
fn generator_config(
    config: &Config,
    args: &GenerateArgs,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<GeneratorConfig> {
    let mut g = config.generator.clone();
    if let Some(format) = args.format {
        g.format = format;
    }
    if let Some(q) = args.min_quality {
        g.min_quality_score = q;
    }
    if let Some(n) = args.min_feedback {
        g.min_user_feedback = Some(n);
    }
    if args.any_feedback {
        g.min_user_feedback = None;
    }
    if let Some(on) = switch(args.dedupe, args.no_dedupe) {
        g.deduplicate = on;
    }
    let near_on = switch(args.near_dedupe, args.no_near_dedupe)
        .or(args.threshold.map(|_| true))
        .unwrap_or(g.near_dedupe.is_some());
    g.near_dedupe = near_on.then(|| {
        let mut near = config.near_dedupe.clone();
        if let Some(threshold) = args.threshold {
            near.threshold = threshold;
        }
        near
    });
    if let Some(existing) = &args.existing {
        g.existing = Some(existing.clone());
    }
    if let Some(r) = args.rehearsal {
        g.rehearsal_ratio = r;
    }
    if let Some(n) = args.max_samples {
        g.max_samples = Some(n);
    }
    if let Some(since) = args.since {
        g.since = Some(since.resolve(now));
    }
    if let Some(until) = args.until {
        g.until = Some(until.resolve(now));
    }
    if let Some(model) = &args.model {
        g.model = Some(model.clone());
    }
    if let Some(prompt) = &args.system_prompt {
        g.system_prompt = Some(prompt.clone());
    }
    if let Some(shape) = args.shape {
        g.shape = Some(shape);
    }
    if let Some(on) = switch(args.metadata, args.no_metadata) {
        g.metadata = on;
    }
    if let Some(on) = switch(args.redact, args.no_redact) {
        g.redact = on;
    }
    if let Some(seed) = args.seed {
        g.seed = seed;
    }
    if let Some(on) = switch(args.write_back, args.no_write_back) {
        g.write_back_scores = on;
    }

    match g.validate() {
        Ok(()) => Ok(g),
        Err(DatagenError::InvalidConfig { field, reason }) => {
            let source = match flag_of(field, args) {
                Some(flag) => flag.to_string(),
                None => config.key_name(&generator_key(field)),
            };
            let hint = if field == "rehearsal_ratio" && g.existing.is_none() {
                " (give the file with --existing FILE or `existing` in [generator])"
            } else {
                ""
            };
            Err(InvalidInput(format!("invalid {source}: {reason}{hint}")).into())
        }
        Err(other) => Err(other.into()),
    }
}

/// A `--X`/`--no-X` pair: `Some(true)`, `Some(false)` or `None` when neither was given
/// (clap keeps only the last of the two).
fn switch(on: bool, off: bool) -> Option<bool> {
    if on {
        Some(true)
    } else if off {
        Some(false)
    } else {
        None
    }
}

/// The flag that set a [`GeneratorConfig`] field, if it was given.
fn flag_of(field: &str, args: &GenerateArgs) -> Option<&'static str> {
    let (flag, given) = match field {
        "min_quality_score" => ("--min-quality", args.min_quality.is_some()),
        "min_user_feedback" => ("--min-feedback", args.min_feedback.is_some()),
        "max_samples" => ("--max-samples", args.max_samples.is_some()),
        "rehearsal_ratio" => ("--rehearsal", args.rehearsal.is_some()),
        "since" => ("--since", args.since.is_some() || args.until.is_some()),
        "model" => ("--model", args.model.is_some()),
        "shape" => ("--shape", args.shape.is_some()),
        "near_dedupe.threshold" => ("--threshold", args.threshold.is_some()),
        _ => return None,
    };
    given.then_some(flag)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

/// Shows one progress event; the style changes with the stage and with whether its total
/// is known.
fn show_progress(bar: &ProgressBar, current: &Cell<Option<(Stage, bool)>>, p: Progress) {
    if bar.is_hidden() {
        return;
    }
    let key = (p.stage, p.total.is_some());
    if current.get() != Some(key) {
        current.set(Some(key));
        let label = match p.stage {
            Stage::ReadExisting => "reading the existing file",
            Stage::GroupQueries => "pairing queries",
            Stage::Scan => "scanning records",
            Stage::Write => "writing samples",
        };
        let template = if p.total.is_some() {
            format!("{{spinner}} [{{elapsed_precise}}] {label} {{wide_bar}} {{human_pos}}/{{human_len}} ({{eta}})")
        } else {
            format!("{{spinner}} [{{elapsed_precise}}] {label} {{human_pos}}")
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        match p.total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }
    bar.set_position(p.done);
}

/// The readable report: what was written, then the counts per stage and the details.
fn summary(result: &GenerationResult) -> String {
    let mut text = format!(
        "wrote {} ({}) to {}\n",
        count(result.final_count, "sample"),
        result.format,
        result.output_path.display()
    );
    let rows: Vec<Vec<String>> = [
        ("total_candidates", result.total_candidates),
        ("filtered_by_feedback", result.filtered_by_feedback),
        ("scored_records", result.scored_records),
        ("filtered_by_quality", result.filtered_by_quality),
        ("duplicates_removed", result.duplicates_removed),
        ("near_duplicates_removed", result.near_duplicates_removed),
        (
            "existing_duplicates_removed",
            result.existing_duplicates_removed,
        ),
        ("unpaired", result.unpaired),
        ("capped", result.capped),
        ("new_samples", result.new_samples),
        ("rehearsal_samples", result.rehearsal_samples),
        ("final_count", result.final_count),
    ]
    .into_iter()
    .map(|(name, n)| vec![format!("  {name}"), n.to_string()])
    .collect();
    text.push_str(&table(&rows));

    let r = &result.redactions;
    if r.total() == 0 {
        text.push_str("  redactions: none\n");
    } else {
        text.push_str(&format!(
            "  redactions: email {}, phone {}, credit_card {}, ip_address {}, secret {}\n",
            r.email, r.phone, r.credit_card, r.ip_address, r.secret
        ));
    }
    match &result.quality_stats {
        Some(q) => text.push_str(&format!(
            "  quality: mean {:.4}, min {:.4}, max {:.4}\n",
            q.mean, q.min, q.max
        )),
        None => text.push_str("  quality: -\n"),
    }
    if let Some(span) = &result.records {
        text.push_str(&format!(
            "  records: {} .. {} ({} .. {})\n",
            span.first_id, span.last_id, span.first_timestamp, span.last_timestamp
        ));
    }
    if let Some(existing) = &result.existing {
        text.push_str(&existing_summary(existing));
    }
    if !result.manifest_path.as_os_str().is_empty() {
        text.push_str(&format!("  manifest: {}\n", result.manifest_path.display()));
    }
    text.push_str(&format!("  blake3: {}\n", result.output_blake3));
    text
}

/// What the existing file held, with its malformed lines.
fn existing_summary(existing: &ExistingReport) -> String {
    let mut text = format!(
        "  existing file: {}, {} valid ({} usable for rehearsal, {} incompatible), {} blank, {} malformed\n",
        count(existing.lines, "line"),
        existing.valid,
        existing.eligible,
        existing.incompatible,
        existing.blank_lines,
        existing.malformed
    );
    for bad in &existing.malformed_lines {
        text.push_str(&format!("    line {}: {}\n", bad.line, bad.reason));
    }
    let listed = existing.malformed_lines.len() as u64;
    if existing.malformed > listed {
        text.push_str(&format!(
            "    ... and {} more\n",
            count(existing.malformed - listed, "malformed line")
        ));
    }
    text
}
