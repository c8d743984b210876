//! The generation pipeline: stream candidates from the store through the filters, dedupe,
//! redaction, merge and cap stages, write the output atomically, and record a manifest.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{self, AtomicBool};

use afs_store::{
    FeedbackFilter, FeedbackValue, Message, OutputTarget, RecordFields, RecordFilter, StatsWindow,
    UsageRecord, UsageStats, UsageStore,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Format, GeneratorConfig, NearDedupeConfig, Shape};
use crate::error::DatagenError;
use crate::existing::{self, ExistingIndex};
use crate::format::{formatter, render_text, Body, Example, FormatOptions, Formatter, Metadata};
use crate::key::{Key, KeyBuilder, KeyHasherBuilder, KeySet};
use crate::minhash::{lsh_params, NearDeduper};
use crate::output::{SpoolReader, TempFile};
use crate::redact::{RedactionCounts, Redactor};
use crate::result::{GenerationResult, Progress, QualityStats, RecordSpan, Stage};
use crate::rng::SplitMix64;
use crate::scan::{self, Bytes};
use crate::scorer::QualityScorer;

/// Progress events are sent every this many items.
const PROGRESS_EVERY: u64 = 8192;
/// Tells the caller how far a run is; an error (the caller's stop flag) ends the run.
type Report<'a> = &'a dyn Fn(Stage, u64, Option<u64>) -> Result<(), DatagenError>;
/// Scores given here are written back to the store this many at a time, in one
/// transaction each: one transaction per record cost ~0.4 ms each (2,000 scores added
/// 0.75 s to a 100k-record run that otherwise took 0.08 s).
const SCORE_BATCH: usize = 1024;

/// The manifest path of an output file: `<output>.manifest.json`.
pub fn manifest_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".manifest.json");
    output.with_file_name(name)
}

/// Turns the usage log into a training file at `output`, with a manifest next to it.
///
/// Stages, in order, each counted in the result:
/// 1. **Candidates**: records streamed from `store` oldest first, narrowed by
///    `since`/`until`/`model`.
/// 2. **Feedback filter** ([`GeneratorConfig::min_user_feedback`]); for `dpo`/`kto`,
///    records with feedback -1 or 1 pass.
/// 3. **Scoring**: a record without a quality score is scored by `scorer`, and the score
///    written back to the store when `write_back_scores` is set (in batches of 1,024, one
///    transaction each, the last when the log has been read: a run that fails may have
///    written back some scores; the others are given again by the next run).
/// 4. **Quality filter** (`min_quality_score`; in `dpo`/`kto`, thumbs-down records skip it).
/// 5. **Exact dedupe**: BLAKE3 of the normalised query and response; the first wins.
/// 6. **Near-dedupe** (optional, not for `dpo`): see [`NearDedupeConfig`].
/// 7. **Redaction** (on by default): see [`Redactor`]. A record whose redacted text
///    duplicates an earlier one is an exact duplicate too. The store is not modified.
/// 8. **Merge**: records duplicating a sample of the existing file are dropped; for
///    `dpo`, records are then paired per normalised query (before redaction): the oldest
///    waiting thumbs-up response with the oldest waiting thumbs-down one, each response
///    used once; the prompt written is the thumbs-up record's (redacted) query.
/// 9. **Cap** (`max_samples`): the new samples of highest quality are kept (ties: the
///    earlier record), leaving room for the rehearsal share, and written in log order.
/// 10. **Rehearsal**: existing samples are chosen with the seeded generator and spread
///     evenly among the new ones (see [`GeneratorConfig::rehearsal_ratio`]).
///
/// The store applies the feedback condition itself, and the quality condition too when
/// every record of the window has a score, so records that cannot pass are never read;
/// how many it skipped comes from its rollups, so the counts are the same either way.
///
/// Threads: the window is read in time slices by one worker thread per core (at most
/// four), which also do each record's own work (the filters on stored values, dedupe
/// keys, redaction, formatting); the calling thread takes the records in log order and
/// does the rest (scoring, the dedupe and pairing decisions, the cap, writing), so the
/// result is the same as one thread's.
///
/// Memory: the exact-dedupe key set (32 bytes per distinct sample), the near-dedupe
/// tables when on, the kept samples when `max_samples` is set, per worker the page of a
/// slice being read (a slice of ~512 records in one read, at most 2,048 plus the records
/// of its last microsecond) and up to ~800 prepared records waiting, and for `dpo` the set
/// of queries with both thumbs-up and thumbs-down records (found by a first pass) plus the
/// records of those queries still waiting for a partner; nothing else grows with the log. The output and manifest
/// are written under temporary names and renamed at the end: on error neither exists at
/// its path (or the previous files are untouched). The same log, config and scores give
/// a byte-identical output and manifest.
pub fn generate(
    store: &dyn UsageStore,
    config: &GeneratorConfig,
    output: &Path,
    scorer: &dyn QualityScorer,
    progress: Option<&dyn Fn(Progress)>,
) -> Result<GenerationResult, DatagenError> {
    let hooks = Hooks {
        progress,
        ..Hooks::default()
    };
    generate_with(store, config, output, scorer, hooks)
}

/// What a caller of [`generate_with`] watches a run with and stops it with.
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    /// Called as the run advances (every 8,192 records or lines, and at the end of each
    /// stage).
    pub progress: Option<&'a dyn Fn(Progress)>,
    /// Checked at the start and at every progress point: once it is `true`, the run stops
    /// with [`DatagenError::Interrupted`], removing its temporary files, and nothing is
    /// written at the output path. Scores already written back stay (they are what the
    /// next run would give anyway). A signal handler may set it.
    pub stop: Option<&'a AtomicBool>,
    /// Writes the output lines instead of the configured format's formatter: a format of
    /// the caller's own. It must write the kind of example the configured format makes
    /// ([`Format::example_kind`]: e.g. `chatml` for supervised examples, `dpo` for pairs),
    /// which decides what generation selects; the result reports its name. A run that
    /// rehearses an existing file cannot use one (the file is read back in a built-in
    /// format).
    pub formatter: Option<&'a dyn Formatter>,
}

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("progress", &self.progress.map(|_| "Fn(Progress)"))
            .field("stop", &self.stop)
            .field("formatter", &self.formatter.map(|f| f.name().to_string()))
            .finish()
    }
}

/// Refuses a plug-in formatter that does not fit the run: another kind of example than
/// the configured format makes, or a rehearsal file to read back.
fn check_plugged(plugged: &dyn Formatter, config: &GeneratorConfig) -> Result<(), DatagenError> {
    let wanted = config.format.example_kind();
    if plugged.kind() != wanted {
        return Err(DatagenError::InvalidConfig {
            field: "format",
            reason: format!(
                "formatter {} writes {} examples, but format {} makes {} examples; set the \
                 format to one of that kind",
                plugged.name(),
                plugged.kind().as_str(),
                config.format,
                wanted.as_str()
            ),
        });
    }
    if config.existing.is_some() {
        return Err(DatagenError::InvalidConfig {
            field: "existing",
            reason: format!(
                "rehearsal reads the existing file back in a built-in format; formatter {} \
                 cannot rehearse it",
                plugged.name()
            ),
        });
    }
    Ok(())
}

/// [`generate`], with a flag that stops the run (see [`Hooks`]).
pub fn generate_with(
    store: &dyn UsageStore,
    config: &GeneratorConfig,
    output: &Path,
    scorer: &dyn QualityScorer,
    hooks: Hooks<'_>,
) -> Result<GenerationResult, DatagenError> {
    let stopped = || {
        hooks
            .stop
            .is_some_and(|s| s.load(atomic::Ordering::Relaxed))
    };
    if stopped() {
        return Err(DatagenError::Interrupted);
    }
    config.validate()?;
    let built_in;
    let formatter: &dyn Formatter = match hooks.formatter {
        Some(plugged) => {
            check_plugged(plugged, config)?;
            plugged
        }
        None => {
            built_in = formatter(
                config.format,
                FormatOptions {
                    shape: config.shape,
                    metadata: config.metadata,
                },
            );
            built_in.as_ref()
        }
    };
    let (target, manifest_target) = resolve_targets(store, output)?;
    let report = |stage: Stage, done: u64, total: Option<u64>| {
        if let Some(p) = hooks.progress {
            p(Progress { stage, done, total });
        }
        if stopped() {
            return Err(DatagenError::Interrupted);
        }
        Ok(())
    };

    let existing = read_existing(config, &report)?;
    let eligible = existing.as_ref().map_or(0, |e| e.report.eligible);
    let rehearsal = config.rehearsal_ratio > 0.0 && eligible > 0;
    let new_budget = new_budget(config, eligible, rehearsal);

    let mut sink = TempFile::create_for(&target, "create temporary output file")?;
    let mut run = Run::new(config, existing.as_ref(), new_budget, formatter);
    stream(&mut run, store, scorer, &mut sink, &report)?;

    let rehearsal_samples = rehearse(
        &mut run, &mut sink, &target, output, eligible, rehearsal, &report,
    )?;
    let mut result = finish_output(
        &run,
        hooks.formatter.map(|f| f.name().to_string()),
        rehearsal_samples,
        &mut sink,
        output,
        manifest_target.as_ref(),
    )?;
    result.existing = existing.map(|e| e.report);
    commit(config, sink, manifest_target.as_ref(), &result)?;
    tracing::info!(
        output = %output.display(),
        candidates = result.total_candidates,
        written = result.final_count,
        "training data generated"
    );
    Ok(result)
}

/// Where the output and its manifest go, checked before anything is read: a path must
/// not be the database, another user's file, a directory... (see
/// `afs_store::resolve_output`). A FIFO or device has no directory to put a manifest in,
/// so a stream gets none.
fn resolve_targets(
    store: &dyn UsageStore,
    output: &Path,
) -> Result<(OutputTarget, Option<OutputTarget>), DatagenError> {
    let target = afs_store::resolve_output(output, "out", &store.files())?;
    let manifest_target = match &target {
        OutputTarget::File(path) => Some(afs_store::resolve_output(
            &manifest_path(path),
            "out",
            &store.files(),
        )?),
        OutputTarget::Stream(_) => None,
    };
    Ok((target, manifest_target))
}

/// The index of the existing file ([`GeneratorConfig::existing`]), if there is one.
fn read_existing(
    config: &GeneratorConfig,
    report: Report<'_>,
) -> Result<Option<ExistingIndex>, DatagenError> {
    match &config.existing {
        Some(path) => Ok(Some(existing::index(
            path,
            config.format,
            config.system_prompt.as_deref(),
            config.deduplicate,
            |n| report(Stage::ReadExisting, n, None),
        )?)),
        None => Ok(None),
    }
}

/// How many new samples the cap leaves room for, after reserving the rehearsal share of
/// the `eligible` existing samples (when `rehearsal`); at least one. `None` without a cap.
fn new_budget(config: &GeneratorConfig, eligible: u64, rehearsal: bool) -> Option<u64> {
    config.max_samples.map(|cap| {
        let reserve = if rehearsal {
            eligible.min((cap as f64 * config.rehearsal_ratio).round() as u64)
        } else {
            0
        };
        cap - reserve.min(cap - 1)
    })
}

/// How many of the `eligible` existing samples to mix in among `new_samples` new ones:
/// the rehearsal share, within the cap's room.
fn rehearsal_take(config: &GeneratorConfig, eligible: u64, new_samples: u64) -> u64 {
    let wanted = (new_samples as f64 * config.rehearsal_ratio / (1.0 - config.rehearsal_ratio))
        .round() as u64;
    let room = config
        .max_samples
        .map_or(u64::MAX, |cap| cap.saturating_sub(new_samples));
    eligible.min(wanted).min(room)
}

/// The streaming stages: the `dpo` first pass, then the window's records through `run`
/// in log order (the store applying the conditions it can, see [`pushdown`]), the
/// scores written back, and the cap's survivors written to `sink`.
fn stream(
    run: &mut Run<'_>,
    store: &dyn UsageStore,
    scorer: &dyn QualityScorer,
    sink: &mut TempFile,
    report: Report<'_>,
) -> Result<(), DatagenError> {
    let config = run.config;
    let workers = scan::workers();
    if config.format.is_paired() {
        run.pairable = pairable_queries(store, config, workers, report)?;
    }
    let window = StatsWindow {
        since: config.since,
        until: config.until,
        model: config.model.clone(),
    };
    let plan = pushdown(config, &store.stats(&window)?);
    // Records the store leaves out for their feedback are candidates the feedback filter
    // dropped; the rollups count them exactly without reading them.
    run.counts.total_candidates = plan.skipped_for_feedback;
    run.counts.filtered_by_feedback = plan.skipped_for_feedback;
    let filter = RecordFilter {
        since: config.since,
        until: config.until,
        model: config.model.clone(),
        feedback: plan.feedback,
        min_quality: plan.min_quality,
        keep_unscored: true,
        fields: RecordFields::Training,
        ..RecordFilter::default()
    };
    // With the quality condition in the store, how many records it skips is only known at
    // the end, so the scan has no total until then.
    let scan_total = plan.min_quality.is_none().then_some(plan.passing_feedback);
    let slices = scan::slices(store, &filter, plan.passing_feedback, workers)?;
    let preparer = Preparer {
        config,
        // Lines are written as the records stream only without a cap and outside `dpo`;
        // otherwise they are formatted when kept or paired.
        preformat: run.budget.is_none() && !config.format.is_paired(),
        formatter: run.emitter.formatter,
    };
    let mut streamed = 0u64;
    scan::scan(
        store,
        &slices,
        workers,
        &|| (KeyBuilder::default(), config.redact.then(Redactor::new)),
        &|(keys, redactor), record, bytes| preparer.prepare(keys, redactor.as_ref(), record, bytes),
        |prepared, bytes| {
            run.process(store, scorer, prepared, bytes, sink)?;
            streamed += 1;
            if streamed % PROGRESS_EVERY == 0 {
                report(Stage::Scan, streamed, scan_total)?;
            }
            Ok(())
        },
    )?;
    if plan.min_quality.is_some() {
        let skipped = plan.passing_feedback.saturating_sub(streamed);
        run.counts.total_candidates += skipped;
        run.counts.filtered_by_quality += skipped;
    }
    report(Stage::Scan, streamed, Some(streamed))?;
    run.write_back(store)?;
    run.finish_stream(sink, report)
}

/// Rehearsal (when `rehearsal`): mixes the share of the `eligible` existing samples
/// due in among the new ones, `sink` becoming the spool they are read back from and a new
/// temporary file for `target` the output. Returns how many were mixed in.
fn rehearse(
    run: &mut Run<'_>,
    sink: &mut TempFile,
    target: &OutputTarget,
    output: &Path,
    eligible: u64,
    rehearsal: bool,
    report: Report<'_>,
) -> Result<u64, DatagenError> {
    let config = run.config;
    let take = if rehearsal {
        rehearsal_take(config, eligible, run.emitter.new_samples)
    } else {
        0
    };
    // Existing samples to take mean an existing file.
    let Some(path) = config.existing.as_deref().filter(|_| take > 0) else {
        return Ok(take);
    };
    let spool = std::mem::replace(
        sink,
        TempFile::create_for(target, "create temporary output file")?,
    );
    let plan = Rehearsal {
        path,
        eligible,
        take,
    };
    merge(run, spool.into_lines()?, sink, output, &plan, report)?;
    Ok(take)
}

/// Finishes the output file and gathers the run's result, but for the existing file's
/// report (`existing` is `None`: the caller moves the report in once `run` is done).
fn finish_output(
    run: &Run<'_>,
    formatter: Option<String>,
    rehearsal_samples: u64,
    sink: &mut TempFile,
    output: &Path,
    manifest_target: Option<&OutputTarget>,
) -> Result<GenerationResult, DatagenError> {
    let (output_blake3, output_bytes) = sink.finish()?;
    let counts = &run.counts;
    let emitter = &run.emitter;
    Ok(GenerationResult {
        format: run.config.format,
        formatter,
        total_candidates: counts.total_candidates,
        filtered_by_feedback: counts.filtered_by_feedback,
        scored_records: counts.scored_records,
        filtered_by_quality: counts.filtered_by_quality,
        duplicates_removed: counts.duplicates_removed,
        near_duplicates_removed: counts.near_duplicates_removed,
        existing_duplicates_removed: counts.existing_duplicates_removed,
        unpaired: counts.unpaired,
        capped: counts.capped,
        new_samples: emitter.new_samples,
        rehearsal_samples,
        final_count: sink.lines(),
        redactions: emitter.redactions,
        quality_stats: emitter.quality.stats(),
        records: emitter.span.to_span(),
        existing: None,
        output_path: output.to_path_buf(),
        manifest_path: manifest_target
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default(),
        output_blake3,
        output_bytes,
    })
}

/// Writes the manifest (when there is a place for one) and renames the output and the
/// manifest to their paths.
fn commit(
    config: &GeneratorConfig,
    sink: TempFile,
    manifest_target: Option<&OutputTarget>,
    result: &GenerationResult,
) -> Result<(), DatagenError> {
    let mut files = vec![sink];
    if let Some(manifest_target) = manifest_target {
        let mut manifest = TempFile::create_for(manifest_target, "create temporary manifest file")?;
        manifest.write_line(&manifest_bytes(config, result))?;
        manifest.finish()?;
        files.push(manifest);
    }
    TempFile::commit_all(files)
}

/// The conditions the store applies itself, so records that cannot pass are never read,
/// with the counts (from the store's rollups) that keep the stage counts exact.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pushdown {
    /// `dpo`/`kto` need feedback present (the -1/0/1 split is still checked per record);
    /// the other formats `>= min_user_feedback`.
    feedback: FeedbackFilter,
    /// Records of the window the feedback condition excludes.
    skipped_for_feedback: u64,
    /// Records of the window that pass the feedback condition.
    passing_feedback: u64,
    /// The quality condition, pushed down unless the format has a thumbs-down exemption:
    /// the store skips records whose stored score is below it and still returns unscored
    /// ones (they are scored here); the records it skips are those passing feedback but not
    /// streamed.
    min_quality: Option<f64>,
}

fn pushdown(config: &GeneratorConfig, stats: &UsageStats) -> Pushdown {
    let preference = config.format.is_preference();
    let (feedback, passing) = if preference {
        (FeedbackFilter::Present, stats.with_feedback)
    } else {
        match config.min_user_feedback {
            None => (FeedbackFilter::Any, stats.total),
            Some(n) => {
                let passing = match n {
                    1 => stats.positive_feedback,
                    0 => stats.positive_feedback + stats.neutral_feedback,
                    _ => stats.with_feedback,
                };
                (FeedbackFilter::AtLeast(n), passing)
            }
        }
    };
    let passing = passing.min(stats.total);
    let min_quality =
        (!preference && config.min_quality_score > 0.0).then_some(config.min_quality_score);
    Pushdown {
        feedback,
        skipped_for_feedback: stats.total - passing,
        passing_feedback: passing,
        min_quality,
    }
}

/// `dpo` first pass: the normalised queries that have records with feedback 1 and with
/// feedback -1. Only records of these queries can pair, so only they are kept waiting
/// for a partner in the second pass; memory is about 40 bytes per distinct query with
/// feedback (its 32-byte key and which feedback it has).
fn pairable_queries(
    store: &dyn UsageStore,
    config: &GeneratorConfig,
    workers: usize,
    report: Report<'_>,
) -> Result<KeySet, DatagenError> {
    const POSITIVE: u8 = 1;
    const NEGATIVE: u8 = 2;
    let filter = RecordFilter {
        since: config.since,
        until: config.until,
        model: config.model.clone(),
        feedback: FeedbackFilter::Present,
        ..RecordFilter::default()
    };
    let window = StatsWindow {
        since: config.since,
        until: config.until,
        model: config.model.clone(),
    };
    let expected = store.stats(&window)?.with_feedback;
    let slices = scan::slices(store, &filter, expected, workers)?;
    let mut polarity: HashMap<Key, u8, KeyHasherBuilder> = HashMap::default();
    let mut read = 0u64;
    scan::scan(
        store,
        &slices,
        workers,
        &KeyBuilder::default,
        &|keys, record, _| {
            let bit = match record.feedback {
                Some(FeedbackValue::Positive) => POSITIVE,
                Some(FeedbackValue::Negative) => NEGATIVE,
                _ => 0,
            };
            (bit != 0).then(|| (keys.prompt(&record.query, prompt_turns_of(&record)), bit))
        },
        |entry, _| {
            if let Some((key, bit)) = *entry {
                *polarity.entry(key).or_default() |= bit;
            }
            read += 1;
            if read % PROGRESS_EVERY == 0 {
                report(Stage::GroupQueries, read, None)?;
            }
            Ok(())
        },
    )?;
    report(Stage::GroupQueries, read, Some(read))?;
    Ok(polarity
        .into_iter()
        .filter(|&(_, bits)| bits == POSITIVE | NEGATIVE)
        .map(|(key, _)| key)
        .collect())
}

/// A streamed record after the work that depends on it alone, done on a scan worker.
enum Prepared {
    /// Dropped by the feedback filter.
    FilteredByFeedback,
    /// Dropped by the quality filter (it had a score).
    FilteredByQuality,
    /// Passed the filters it could be checked against.
    Candidate(Box<Candidate>),
}

/// A record that may become a sample, with everything computed ahead that the stages in
/// log order may need. The order-dependent decisions (duplicates, pairing, the cap) and
/// scoring are left to the consuming thread.
struct Candidate {
    record: UsageRecord,
    /// Exact-dedupe key of the raw texts (when deduplicating).
    raw_key: Option<Key>,
    /// The texts after redaction, where it changed them.
    redacted_query: Option<String>,
    redacted_response: Option<String>,
    /// A conversation's turns before the response after redaction, where it changed them.
    redacted_turns: Option<Vec<Message>>,
    query_redactions: RedactionCounts,
    response_redactions: RedactionCounts,
    /// Exact-dedupe key of the redacted texts, when redaction changed them.
    redacted_key: Option<Key>,
    /// `dpo`: key of the normalised raw query.
    query_key: Option<Key>,
    /// The output line, when it could be formatted ahead (see [`Preparer::preformat`]).
    line: Option<Bytes>,
}

impl Candidate {
    /// The texts to write: the query, the response and a conversation's turns before the
    /// response, redacted where redaction changed them.
    fn texts(&self) -> (&str, &str, Option<&[Message]>) {
        let record = &self.record;
        let query = self.redacted_query.as_deref().unwrap_or(&record.query);
        let response = self
            .redacted_response
            .as_deref()
            .unwrap_or(&record.response);
        let turns = self.redacted_turns.as_deref().or(prompt_turns_of(record));
        (query, response, turns)
    }

    /// The exact-dedupe key of the texts written (see [`Candidate::texts`]), when
    /// deduplicating.
    fn dedupe_key(&self) -> Option<Key> {
        match (self.raw_key, self.redacted_key) {
            (Some(_), Some(key)) => Some(key),
            (raw, _) => raw,
        }
    }
}

/// The per-record work of the streaming stages that needs no state shared between
/// records: the filters on stored values, dedupe keys, redaction and formatting.
struct Preparer<'c> {
    config: &'c GeneratorConfig,
    /// Format the line ahead when the record's score is known: it is written as soon as
    /// the record passes dedupe.
    preformat: bool,
    formatter: &'c dyn Formatter,
}

impl Preparer<'_> {
    /// A streamed record's own work: the filters on stored values, then for a candidate
    /// its dedupe keys, redaction and (see [`Preparer::preformat`]) its line, appended to
    /// `bytes`.
    fn prepare(
        &self,
        keys: &mut KeyBuilder,
        redactor: Option<&Redactor>,
        record: UsageRecord,
        bytes: &mut Vec<u8>,
    ) -> Prepared {
        if let Some(filtered) = self.filtered(&record) {
            return filtered;
        }
        let config = self.config;
        // The store keeps the pair's key with every record it logged; rows written before
        // it did (or by the Python module) are hashed here, with the same function.
        let raw_key = config.deduplicate.then(|| {
            record
                .pair_key
                .unwrap_or_else(|| keys.pair(&record.query, &record.response))
        });
        let mut query_redactions = RedactionCounts::default();
        let mut response_redactions = RedactionCounts::default();
        let (redacted_query, redacted_response) = match redactor {
            Some(r) => (
                owned(r.redact(&record.query, &mut query_redactions)),
                owned(r.redact(&record.response, &mut response_redactions)),
            ),
            None => (None, None),
        };
        // A conversation's earlier turns are redacted like the query, and counted with it.
        let redacted_turns = match (redactor, prompt_turns_of(&record)) {
            (Some(r), Some(turns)) => redact_turns(r, turns, &mut query_redactions),
            _ => None,
        };
        let query = redacted_query.as_deref().unwrap_or(&record.query);
        let response = redacted_response.as_deref().unwrap_or(&record.response);
        let turns = redacted_turns.as_deref().or(prompt_turns_of(&record));
        let changed =
            redacted_query.is_some() || redacted_response.is_some() || redacted_turns.is_some();
        let redacted_key =
            (raw_key.is_some() && changed).then(|| keys.record(query, response, turns));
        let query_key = config
            .format
            .is_paired()
            .then(|| keys.prompt(&record.query, prompt_turns_of(&record)));
        let line = match record.quality_score {
            Some(quality) if self.preformat => {
                let side = SideRef::of(
                    &record,
                    quality,
                    (query, response, turns),
                    (query_redactions, response_redactions),
                );
                self.format_ahead(side, bytes)
            }
            _ => None,
        };
        Prepared::Candidate(Box::new(Candidate {
            record,
            raw_key,
            redacted_query,
            redacted_response,
            redacted_turns,
            query_redactions,
            response_redactions,
            redacted_key,
            query_key,
            line,
        }))
    }

    /// The filters on stored values: the feedback filter, then the quality filter for a
    /// record with a score (thumbs-down records skip it in `dpo`/`kto`). The outcome of a
    /// record one of them drops, `None` for one that passes.
    fn filtered(&self, record: &UsageRecord) -> Option<Prepared> {
        let config = self.config;
        let preference = config.format.is_preference();
        let passes_feedback = if preference {
            matches!(
                record.feedback,
                Some(FeedbackValue::Positive | FeedbackValue::Negative)
            )
        } else {
            match config.min_user_feedback {
                None => true,
                Some(n) => record.feedback.is_some_and(|f| f.as_i64() >= n),
            }
        };
        if !passes_feedback {
            return Some(Prepared::FilteredByFeedback);
        }
        let negative = record.feedback == Some(FeedbackValue::Negative);
        if let Some(q) = record.quality_score {
            if !(preference && negative) && q < config.min_quality_score {
                return Some(Prepared::FilteredByQuality);
            }
        }
        None
    }

    /// Appends the output line of `side` to `bytes` and returns where it is. A formatter
    /// that refuses the example appends nothing (`None`); the consumer then formats it
    /// again and reports the error in order.
    fn format_ahead(&self, side: SideRef<'_>, bytes: &mut Vec<u8>) -> Option<Bytes> {
        let config = self.config;
        let start = bytes.len();
        let example = example_of(
            Unit::One(side),
            config.format,
            config.system_prompt.as_deref(),
        );
        self.formatter
            .write_line(&example, bytes)
            .is_ok()
            .then_some(start..bytes.len())
    }
}

/// A conversation's `turns` after redaction by `r`, if it changed any; what it replaced is
/// added to `counts`.
fn redact_turns(
    r: &Redactor,
    turns: &[Message],
    counts: &mut RedactionCounts,
) -> Option<Vec<Message>> {
    let mut changed = false;
    let redacted: Vec<Message> = turns
        .iter()
        .map(|m| {
            let content = r.redact(&m.content, counts);
            changed |= matches!(content, Cow::Owned(_));
            Message::new(m.role, content.into_owned())
        })
        .collect();
    changed.then_some(redacted)
}

/// A conversation's turns before its response (every turn but the final assistant turn),
/// for a record with `messages`.
fn prompt_turns_of(record: &UsageRecord) -> Option<&[Message]> {
    record
        .messages
        .as_deref()
        .map(|m| &m[..m.len().saturating_sub(1)])
}

/// The new text of a redaction, if it changed anything.
fn owned(text: Cow<'_, str>) -> Option<String> {
    match text {
        Cow::Owned(s) => Some(s),
        Cow::Borrowed(_) => None,
    }
}

/// Counts of the streaming stages.
#[derive(Debug, Default)]
struct Counts {
    total_candidates: u64,
    filtered_by_feedback: u64,
    scored_records: u64,
    filtered_by_quality: u64,
    duplicates_removed: u64,
    near_duplicates_removed: u64,
    existing_duplicates_removed: u64,
    unpaired: u64,
    capped: u64,
}

/// One record that survived the filters, owned (kept for the cap or waiting for a pair).
#[derive(Debug)]
struct Side {
    quality: f64,
    id: String,
    model: String,
    timestamp: DateTime<Utc>,
    feedback: Option<FeedbackValue>,
    query: String,
    response: String,
    turns: Option<Vec<Message>>,
    query_redactions: RedactionCounts,
    response_redactions: RedactionCounts,
}

/// A record that survived the filters, borrowed.
#[derive(Debug, Clone, Copy)]
struct SideRef<'a> {
    quality: f64,
    id: &'a str,
    model: &'a str,
    timestamp: DateTime<Utc>,
    feedback: Option<FeedbackValue>,
    query: &'a str,
    response: &'a str,
    /// A conversation's turns before the response (see [`Example::turns`]).
    turns: Option<&'a [Message]>,
    query_redactions: RedactionCounts,
    response_redactions: RedactionCounts,
}

impl<'a> SideRef<'a> {
    /// `record` with its `quality`, the texts to write (redacted or not) and what redaction
    /// replaced in each.
    fn of(
        record: &'a UsageRecord,
        quality: f64,
        (query, response, turns): (&'a str, &'a str, Option<&'a [Message]>),
        (query_redactions, response_redactions): (RedactionCounts, RedactionCounts),
    ) -> Self {
        SideRef {
            quality,
            id: &record.id,
            model: &record.model,
            timestamp: record.timestamp,
            feedback: record.feedback,
            query,
            response,
            turns,
            query_redactions,
            response_redactions,
        }
    }
}

impl Side {
    fn borrow(&self) -> SideRef<'_> {
        SideRef {
            quality: self.quality,
            id: &self.id,
            model: &self.model,
            timestamp: self.timestamp,
            feedback: self.feedback,
            query: &self.query,
            response: &self.response,
            turns: self.turns.as_deref(),
            query_redactions: self.query_redactions,
            response_redactions: self.response_redactions,
        }
    }
}

impl SideRef<'_> {
    fn to_side(self) -> Side {
        Side {
            quality: self.quality,
            id: self.id.to_string(),
            model: self.model.to_string(),
            timestamp: self.timestamp,
            feedback: self.feedback,
            query: self.query.to_string(),
            response: self.response.to_string(),
            turns: self.turns.map(<[Message]>::to_vec),
            query_redactions: self.query_redactions,
            response_redactions: self.response_redactions,
        }
    }
}

/// One output sample before formatting.
#[derive(Debug, Clone, Copy)]
enum Unit<'a> {
    One(SideRef<'a>),
    Pair {
        chosen: SideRef<'a>,
        rejected: SideRef<'a>,
    },
}

/// An owned [`Unit`] waiting in the cap's heap, ordered so the heap's top is the one to
/// drop first: lowest quality, then the latest record.
#[derive(Debug)]
struct Pending {
    seq: u64,
    quality: f64,
    one: Side,
    rejected: Option<Side>,
}

impl Pending {
    fn unit(&self) -> Unit<'_> {
        match &self.rejected {
            None => Unit::One(self.one.borrow()),
            Some(rejected) => Unit::Pair {
                chosen: self.one.borrow(),
                rejected: rejected.borrow(),
            },
        }
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Greater = worse: lower quality, then later in the log.
        other
            .quality
            .total_cmp(&self.quality)
            .then(self.seq.cmp(&other.seq))
    }
}

/// Running quality statistics.
#[derive(Debug, Default)]
struct QualityAcc {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl QualityAcc {
    fn add(&mut self, q: f64) {
        if self.n == 0 {
            self.min = q;
            self.max = q;
        } else {
            self.min = self.min.min(q);
            self.max = self.max.max(q);
        }
        self.n += 1;
        self.sum += q;
    }

    fn stats(&self) -> Option<QualityStats> {
        (self.n > 0).then(|| QualityStats {
            mean: self.sum / self.n as f64,
            min: self.min,
            max: self.max,
        })
    }
}

/// Running id and time range, kept in reusable buffers.
#[derive(Debug, Default)]
struct SpanAcc {
    any: bool,
    first_id: String,
    last_id: String,
    first_ts: Option<DateTime<Utc>>,
    last_ts: Option<DateTime<Utc>>,
}

impl SpanAcc {
    fn add(&mut self, id: &str, ts: DateTime<Utc>) {
        if !self.any || id < self.first_id.as_str() {
            self.first_id.clear();
            self.first_id.push_str(id);
        }
        if !self.any || id > self.last_id.as_str() {
            self.last_id.clear();
            self.last_id.push_str(id);
        }
        self.first_ts = Some(self.first_ts.map_or(ts, |t| t.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |t| t.max(ts)));
        self.any = true;
    }

    fn to_span(&self) -> Option<RecordSpan> {
        let (first, last) = (self.first_ts?, self.last_ts?);
        Some(RecordSpan {
            first_id: self.first_id.clone(),
            last_id: self.last_id.clone(),
            first_timestamp: first.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            last_timestamp: last.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        })
    }
}

/// Formats units and writes them, keeping the statistics of what was written.
struct Emitter<'c> {
    formatter: &'c dyn Formatter,
    format: Format,
    system: Option<&'c str>,
    line: Vec<u8>,
    new_samples: u64,
    redactions: RedactionCounts,
    quality: QualityAcc,
    span: SpanAcc,
}

impl Emitter<'_> {
    fn emit(&mut self, unit: Unit<'_>, sink: &mut TempFile) -> Result<(), DatagenError> {
        let example = example_of(unit, self.format, self.system);
        self.line.clear();
        self.formatter.write_line(&example, &mut self.line)?;
        sink.write_line(&self.line)?;
        self.count(unit);
        Ok(())
    }

    /// Writes `line`, formatted ahead from `unit` by [`Preparer`].
    fn emit_line(
        &mut self,
        unit: Unit<'_>,
        line: &[u8],
        sink: &mut TempFile,
    ) -> Result<(), DatagenError> {
        sink.write_line(line)?;
        self.count(unit);
        Ok(())
    }

    fn count(&mut self, unit: Unit<'_>) {
        self.new_samples += 1;
        match unit {
            Unit::One(side) => {
                self.quality.add(side.quality);
                self.span.add(side.id, side.timestamp);
                self.redactions.add(&side.query_redactions);
                self.redactions.add(&side.response_redactions);
            }
            Unit::Pair { chosen, rejected } => {
                self.quality.add(chosen.quality);
                self.span.add(chosen.id, chosen.timestamp);
                self.span.add(rejected.id, rejected.timestamp);
                self.redactions.add(&chosen.query_redactions);
                self.redactions.add(&chosen.response_redactions);
                self.redactions.add(&rejected.response_redactions);
            }
        }
    }
}

/// The example a unit becomes in `format`.
fn example_of<'a>(unit: Unit<'a>, format: Format, system: Option<&'a str>) -> Example<'a> {
    match unit {
        Unit::One(side) => Example {
            system,
            prompt: side.query,
            turns: side.turns,
            body: if format == Format::Kto {
                Body::Labeled {
                    completion: side.response,
                    label: side.feedback == Some(FeedbackValue::Positive),
                }
            } else {
                Body::Response(side.response)
            },
            metadata: metadata_of(&side),
        },
        Unit::Pair { chosen, rejected } => Example {
            system,
            prompt: chosen.query,
            turns: chosen.turns,
            body: Body::Preference {
                chosen: chosen.response,
                rejected: rejected.response,
            },
            metadata: metadata_of(&chosen),
        },
    }
}

fn metadata_of<'a>(side: &SideRef<'a>) -> Metadata<'a> {
    Metadata {
        id: Some(side.id),
        model: Some(side.model),
        timestamp: Some(side.timestamp),
        quality_score: Some(side.quality),
        user_feedback: side.feedback.map(FeedbackValue::as_i64),
        existing_line: None,
    }
}

/// `dpo` records waiting for a partner of the opposite feedback, per normalised query.
#[derive(Debug, Default)]
struct Waiting {
    positive: bool,
    sides: VecDeque<Side>,
}

/// The state of one run's streaming stages.
struct Run<'c> {
    config: &'c GeneratorConfig,
    existing: Option<&'c ExistingIndex>,
    counts: Counts,
    keys: KeyBuilder,
    seen: KeySet,
    near: Option<NearDeduper>,
    redactor: Option<Redactor>,
    budget: Option<u64>,
    heap: BinaryHeap<Pending>,
    waiting: HashMap<Key, Waiting, KeyHasherBuilder>,
    /// `dpo`: the normalised queries that have both thumbs-up and thumbs-down records.
    pairable: KeySet,
    /// Scores given by the scorer, not yet written back to the store.
    scores: Vec<(String, f64)>,
    emitter: Emitter<'c>,
}

impl<'c> Run<'c> {
    fn new(
        config: &'c GeneratorConfig,
        existing: Option<&'c ExistingIndex>,
        budget: Option<u64>,
        formatter: &'c dyn Formatter,
    ) -> Self {
        let near = match (&config.near_dedupe, config.format) {
            (Some(near), format) if !format.is_paired() => {
                let (bands, rows) = lsh_params(near.threshold, near.num_permutations);
                tracing::debug!(
                    bands,
                    rows,
                    threshold = near.threshold,
                    "near-dedupe banding"
                );
                Some(NearDeduper::new(near))
            }
            _ => None,
        };
        Run {
            config,
            existing,
            counts: Counts::default(),
            keys: KeyBuilder::default(),
            seen: KeySet::default(),
            near,
            redactor: config.redact.then(Redactor::new),
            budget,
            heap: BinaryHeap::new(),
            waiting: HashMap::default(),
            pairable: KeySet::default(),
            scores: Vec::new(),
            emitter: Emitter {
                formatter,
                format: config.format,
                system: config.system_prompt.as_deref(),
                line: Vec::with_capacity(4096),
                new_samples: 0,
                redactions: RedactionCounts::default(),
                quality: QualityAcc::default(),
                span: SpanAcc::default(),
            },
        }
    }

    /// The stages in log order for one prepared record: scoring, the quality filter for
    /// records scored here, dedupe, near-dedupe, the merge check, then pairing or the cap.
    fn process(
        &mut self,
        store: &dyn UsageStore,
        scorer: &dyn QualityScorer,
        prepared: &Prepared,
        bytes: &[u8],
        sink: &mut TempFile,
    ) -> Result<(), DatagenError> {
        let seq = self.counts.total_candidates;
        self.counts.total_candidates += 1;
        let candidate = match prepared {
            Prepared::FilteredByFeedback => {
                self.counts.filtered_by_feedback += 1;
                return Ok(());
            }
            Prepared::FilteredByQuality => {
                self.counts.filtered_by_quality += 1;
                return Ok(());
            }
            Prepared::Candidate(candidate) => candidate,
        };
        let record = &candidate.record;
        let Some(quality) = self.quality_of(store, scorer, record)? else {
            return Ok(());
        };

        if let Some(raw) = candidate.raw_key {
            if !self.seen.insert(raw) {
                self.counts.duplicates_removed += 1;
                return Ok(());
            }
        }
        if self.is_near_duplicate(record) {
            self.counts.near_duplicates_removed += 1;
            return Ok(());
        }
        let (query, response, turns) = candidate.texts();
        if self.is_redacted_duplicate(candidate) {
            self.counts.duplicates_removed += 1;
            return Ok(());
        }
        if self.is_in_existing(candidate.dedupe_key(), (query, response, turns)) {
            self.counts.existing_duplicates_removed += 1;
            return Ok(());
        }

        let side = SideRef::of(
            record,
            quality,
            (query, response, turns),
            (candidate.query_redactions, candidate.response_redactions),
        );
        if self.config.format.is_paired() {
            let query_key = candidate
                .query_key
                .unwrap_or_else(|| self.keys.prompt(&record.query, prompt_turns_of(record)));
            return self.pair_up(seq, query_key, side, sink);
        }
        let line = candidate.line.clone().map(|range| &bytes[range]);
        self.accept(seq, Unit::One(side), line, sink)
    }

    /// The record's quality: its stored score, or the one `scorer` gives it (counted, kept
    /// for writing back when [`GeneratorConfig::write_back_scores`] is set, and written
    /// back once a batch is full). `None` when the quality filter drops a record scored
    /// here (counted).
    fn quality_of(
        &mut self,
        store: &dyn UsageStore,
        scorer: &dyn QualityScorer,
        record: &UsageRecord,
    ) -> Result<Option<f64>, DatagenError> {
        if let Some(q) = record.quality_score {
            return Ok(Some(q));
        }
        let config = self.config;
        let q = scorer
            .score(&record.query, &record.response)
            .map_err(|source| DatagenError::Scorer {
                id: record.id.clone(),
                source,
            })?;
        if !q.is_finite() || !(0.0..=1.0).contains(&q) {
            return Err(DatagenError::InvalidScore {
                id: record.id.clone(),
                value: q,
            });
        }
        self.counts.scored_records += 1;
        if config.write_back_scores {
            self.scores.push((record.id.clone(), q));
            if self.scores.len() >= SCORE_BATCH {
                self.write_back(store)?;
            }
        }
        let negative = record.feedback == Some(FeedbackValue::Negative);
        if !(config.format.is_preference() && negative) && q < config.min_quality_score {
            self.counts.filtered_by_quality += 1;
            return Ok(None);
        }
        Ok(Some(q))
    }

    /// Near-dedupe (when on): whether the record is close to an earlier one; if not, it is
    /// remembered. A conversation is compared whole: every turn before the response, then
    /// it.
    fn is_near_duplicate(&mut self, record: &UsageRecord) -> bool {
        let Some(near) = &mut self.near else {
            return false;
        };
        let prompt = match prompt_turns_of(record) {
            Some(turns) => Cow::Owned(
                turns
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            None => Cow::Borrowed(record.query.as_str()),
        };
        near.check_and_insert(&prompt, &record.response)
    }

    /// Exact dedupe after redaction: whether the redacted texts, where redaction changed
    /// them, duplicate an earlier sample; if not, their key is remembered.
    fn is_redacted_duplicate(&mut self, candidate: &Candidate) -> bool {
        match (candidate.raw_key, candidate.redacted_key) {
            (Some(raw), Some(key)) => key != raw && !self.seen.insert(key),
            _ => false,
        }
    }

    /// The merge check: whether the sample with dedupe `key` and these texts (query,
    /// response, turns) duplicates a sample of the existing file, by key or (when the file
    /// has `text` lines) by its text. Never without an existing file or a key.
    fn is_in_existing(
        &mut self,
        key: Option<Key>,
        (query, response, turns): (&str, &str, Option<&[Message]>),
    ) -> bool {
        let (Some(existing), Some(key)) = (self.existing, key) else {
            return false;
        };
        let example = Example {
            system: self.config.system_prompt.as_deref(),
            prompt: query,
            turns,
            body: Body::Response(response),
            metadata: Metadata::default(),
        };
        let in_text = existing.has_text
            && existing
                .keys
                .contains(&self.keys.text(&render_text(&example, response)));
        in_text || existing.keys.contains(&key)
    }

    /// `dpo`: pairs the record with the oldest waiting record of opposite feedback for the
    /// same normalised query, or makes it wait; a record whose query never got the
    /// opposite feedback (per the first pass) is unpaired at once and not kept.
    fn pair_up(
        &mut self,
        seq: u64,
        query_key: Key,
        side: SideRef<'_>,
        sink: &mut TempFile,
    ) -> Result<(), DatagenError> {
        if !self.pairable.contains(&query_key) {
            self.counts.unpaired += 1;
            return Ok(());
        }
        let positive = side.feedback == Some(FeedbackValue::Positive);
        let waiting = self.waiting.entry(query_key).or_default();
        if waiting.sides.is_empty() || waiting.positive == positive {
            waiting.positive = positive;
            waiting.sides.push_back(side.to_side());
            return Ok(());
        }
        let partner = waiting.sides.pop_front().expect("checked non-empty");
        if waiting.sides.is_empty() {
            self.waiting.remove(&query_key);
        }
        let unit = if positive {
            Unit::Pair {
                chosen: side,
                rejected: partner.borrow(),
            }
        } else {
            Unit::Pair {
                chosen: partner.borrow(),
                rejected: side,
            }
        };
        self.accept(seq, unit, None, sink)
    }

    /// Writes the unit now (as `line` when it was formatted ahead), or keeps it in the
    /// cap's heap.
    fn accept(
        &mut self,
        seq: u64,
        unit: Unit<'_>,
        line: Option<&[u8]>,
        sink: &mut TempFile,
    ) -> Result<(), DatagenError> {
        let Some(budget) = self.budget else {
            return match line {
                Some(line) => self.emitter.emit_line(unit, line, sink),
                None => self.emitter.emit(unit, sink),
            };
        };
        let (quality, one, rejected) = match unit {
            Unit::One(side) => (side.quality, side.to_side(), None),
            Unit::Pair { chosen, rejected } => {
                (chosen.quality, chosen.to_side(), Some(rejected.to_side()))
            }
        };
        let pending = Pending {
            seq,
            quality,
            one,
            rejected,
        };
        if (self.heap.len() as u64) < budget {
            self.heap.push(pending);
        } else if self.heap.peek().is_some_and(|worst| pending < *worst) {
            self.heap.pop();
            self.heap.push(pending);
            self.counts.capped += 1;
        } else {
            self.counts.capped += 1;
        }
        Ok(())
    }

    /// Writes the scores given since the last call back to the store.
    fn write_back(&mut self, store: &dyn UsageStore) -> Result<(), DatagenError> {
        store.update_qualities(&self.scores)?;
        self.scores.clear();
        Ok(())
    }

    /// Ends the stream: counts unpaired records and writes the cap's survivors in log order.
    fn finish_stream(
        &mut self,
        sink: &mut TempFile,
        report: Report<'_>,
    ) -> Result<(), DatagenError> {
        self.counts.unpaired += self
            .waiting
            .values()
            .map(|w| w.sides.len() as u64)
            .sum::<u64>();
        self.waiting.clear();
        if self.heap.is_empty() {
            return Ok(());
        }
        let mut kept = std::mem::take(&mut self.heap).into_vec();
        kept.sort_unstable_by_key(|p| p.seq);
        let total = kept.len() as u64;
        for (i, pending) in kept.iter().enumerate() {
            self.emitter.emit(pending.unit(), sink)?;
            if (i as u64 + 1) % PROGRESS_EVERY == 0 {
                report(Stage::Write, i as u64 + 1, Some(total))?;
            }
        }
        report(Stage::Write, total, Some(total))?;
        Ok(())
    }
}

/// Which existing samples to mix in: `take` of the `eligible` lines of the file at `path`.
struct Rehearsal<'a> {
    path: &'a Path,
    eligible: u64,
    take: u64,
}

/// Writes the spooled new samples with `take` chosen existing samples spread evenly among
/// them: the `j`-th existing sample (from 0) follows the first `⌊(j+1)·n/(take+1)⌋` new ones.
fn merge(
    run: &mut Run<'_>,
    mut spool: SpoolReader,
    out: &mut TempFile,
    output: &Path,
    plan: &Rehearsal<'_>,
    report: Report<'_>,
) -> Result<(), DatagenError> {
    let take = plan.take;
    let n = run.emitter.new_samples;
    let total = n + take;
    let mut rng = SplitMix64::new(run.config.seed);
    let mut copied = 0u64;
    let mut chosen = 0u64;
    let mut line = Vec::with_capacity(4096);
    let formatter = run.emitter.formatter;
    let redactor = run.redactor.as_ref();
    let mut redactions = RedactionCounts::default();
    let mut copy_until =
        |target: u64, out: &mut TempFile, copied: &mut u64| -> Result<(), DatagenError> {
            while *copied < target {
                let Some(bytes) = spool.next_line()? else {
                    break;
                };
                out.write_line(bytes)?;
                *copied += 1;
                if out.lines() % PROGRESS_EVERY == 0 {
                    report(Stage::Write, out.lines(), Some(total))?;
                }
            }
            Ok(())
        };
    existing::choose(
        plan.path,
        run.config.format,
        run.config.system_prompt.as_deref(),
        plan.eligible,
        take,
        &mut rng,
        |number, mut sample| {
            let target = ((chosen + 1) as u128 * n as u128 / (take + 1) as u128) as u64;
            copy_until(target, out, &mut copied)?;
            if let Some(r) = redactor {
                sample.map_texts(|text| {
                    if let Cow::Owned(clean) = r.redact(text, &mut redactions) {
                        *text = clean;
                    }
                });
            }
            line.clear();
            formatter.write_line(&sample.example(number), &mut line)?;
            out.write_line(&line)?;
            chosen += 1;
            Ok(())
        },
    )?;
    copy_until(u64::MAX, out, &mut copied)?;
    if copied != n {
        return Err(DatagenError::Io {
            context: "read back spooled samples",
            path: output.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{copied} of {n} lines"),
            ),
        });
    }
    run.emitter.redactions.add(&redactions);
    report(Stage::Write, out.lines(), Some(total))?;
    Ok(())
}

/// The manifest: the config used, the result, the output's hash and the afs version.
/// Nothing in it depends on the wall clock or on where the file was written, so the same
/// log and config give the same bytes.
fn manifest_bytes(config: &GeneratorConfig, result: &GenerationResult) -> Vec<u8> {
    #[derive(Serialize)]
    struct NearConfig {
        threshold: f64,
        num_permutations: usize,
        word_shingle: usize,
        char_shingle: usize,
        min_words: usize,
        bands: usize,
        rows: usize,
    }
    #[derive(Serialize)]
    struct ConfigOut<'a> {
        format: Format,
        min_quality_score: f64,
        min_user_feedback: Option<i64>,
        deduplicate: bool,
        near_dedupe: Option<NearConfig>,
        max_samples: Option<u64>,
        redact: bool,
        existing: Option<String>,
        rehearsal_ratio: f64,
        seed: u64,
        since: Option<String>,
        until: Option<String>,
        model: Option<&'a str>,
        system_prompt: Option<&'a str>,
        shape: Shape,
        metadata: bool,
        write_back_scores: bool,
    }
    #[derive(Serialize)]
    struct Manifest<'a> {
        afs_version: &'static str,
        output: &'a str,
        blake3: &'a str,
        bytes: u64,
        lines: u64,
        config: ConfigOut<'a>,
        result: &'a GenerationResult,
    }
    let near = |n: &NearDedupeConfig| {
        let (bands, rows) = lsh_params(n.threshold, n.num_permutations);
        NearConfig {
            threshold: n.threshold,
            num_permutations: n.num_permutations,
            word_shingle: n.word_shingle,
            char_shingle: n.char_shingle,
            min_words: n.min_words,
            bands,
            rows,
        }
    };
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // Paths differ between machines and runs; the manifest names files by their names.
    let mut portable = result.clone();
    portable.output_path = PathBuf::from(file_name(&result.output_path));
    portable.manifest_path = PathBuf::from(file_name(&result.manifest_path));
    let output_name = file_name(&result.output_path);
    let manifest = Manifest {
        afs_version: env!("CARGO_PKG_VERSION"),
        output: &output_name,
        blake3: &result.output_blake3,
        bytes: result.output_bytes,
        lines: result.final_count,
        config: ConfigOut {
            format: config.format,
            min_quality_score: config.min_quality_score,
            min_user_feedback: config.min_user_feedback,
            deduplicate: config.deduplicate,
            near_dedupe: config.near_dedupe.as_ref().map(near),
            max_samples: config.max_samples,
            redact: config.redact,
            existing: config
                .existing
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            rehearsal_ratio: config.rehearsal_ratio,
            seed: config.seed,
            since: time(config.since),
            until: time(config.until),
            model: config.model.as_deref(),
            system_prompt: config.system_prompt.as_deref(),
            shape: config.effective_shape(),
            metadata: config.metadata,
            write_back_scores: config.write_back_scores,
        },
        result: &portable,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushdown_follows_the_config_and_the_rollups() {
        let stats = UsageStats {
            total: 100,
            with_feedback: 60,
            positive_feedback: 40,
            negative_feedback: 15,
            neutral_feedback: 5,
            n_quality: 100,
            ..UsageStats::default()
        };
        let check = |config: GeneratorConfig,
                     stats: &UsageStats,
                     expected: (FeedbackFilter, u64, u64, Option<f64>)| {
            let p = pushdown(&config, stats);
            assert_eq!(
                (
                    p.feedback,
                    p.skipped_for_feedback,
                    p.passing_feedback,
                    p.min_quality
                ),
                expected
            );
        };
        let d = GeneratorConfig::default();
        check(
            d.clone(),
            &stats,
            (FeedbackFilter::AtLeast(1), 60, 40, Some(0.7)),
        );
        let with = |n| GeneratorConfig {
            min_user_feedback: n,
            ..d.clone()
        };
        check(
            with(Some(0)),
            &stats,
            (FeedbackFilter::AtLeast(0), 55, 45, Some(0.7)),
        );
        check(
            with(Some(-1)),
            &stats,
            (FeedbackFilter::AtLeast(-1), 40, 60, Some(0.7)),
        );
        check(with(None), &stats, (FeedbackFilter::Any, 0, 100, Some(0.7)));
        let kto = GeneratorConfig {
            format: Format::Kto,
            ..d.clone()
        };
        check(kto, &stats, (FeedbackFilter::Present, 40, 60, None));
        let unscored = UsageStats {
            n_quality: 99,
            ..stats
        };
        // Unscored records no longer stop the pushdown: the store returns them to be scored.
        check(
            d.clone(),
            &unscored,
            (FeedbackFilter::AtLeast(1), 60, 40, Some(0.7)),
        );
        check(
            GeneratorConfig {
                min_quality_score: 0.0,
                ..d
            },
            &stats,
            (FeedbackFilter::AtLeast(1), 60, 40, None),
        );
    }

    #[test]
    fn manifest_sits_next_to_the_output() {
        assert_eq!(
            manifest_path(Path::new("out/train.jsonl")),
            Path::new("out/train.jsonl.manifest.json")
        );
        assert_eq!(
            manifest_path(Path::new("train")),
            Path::new("train.manifest.json")
        );
    }

    fn pending(seq: u64, quality: f64) -> Pending {
        let side = Side {
            quality,
            id: seq.to_string(),
            model: String::new(),
            timestamp: DateTime::UNIX_EPOCH,
            feedback: None,
            query: String::new(),
            response: String::new(),
            turns: None,
            query_redactions: RedactionCounts::default(),
            response_redactions: RedactionCounts::default(),
        };
        Pending {
            seq,
            quality,
            one: side,
            rejected: None,
        }
    }

    #[test]
    fn heap_top_is_the_one_to_drop() {
        let mut heap = BinaryHeap::new();
        for (seq, q) in [(0, 0.9), (1, 0.5), (2, 0.5), (3, 0.95)] {
            heap.push(pending(seq, q));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.seq)).collect();
        assert_eq!(order, [2, 1, 0, 3]);
    }

    #[test]
    fn span_and_quality_accumulate() {
        let mut span = SpanAcc::default();
        assert_eq!(span.to_span(), None);
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        span.add("B", t(20));
        span.add("A", t(30));
        span.add("C", t(10));
        let s = span.to_span().unwrap();
        assert_eq!((s.first_id.as_str(), s.last_id.as_str()), ("A", "C"));
        assert_eq!(s.first_timestamp, "1970-01-01T00:00:10Z");
        let mut q = QualityAcc::default();
        assert_eq!(q.stats(), None);
        for v in [0.8, 1.0, 0.9] {
            q.add(v);
        }
        let stats = q.stats().unwrap();
        assert!((stats.mean - 0.9).abs() < 1e-12 && stats.min == 0.8 && stats.max == 1.0);
    }
}
