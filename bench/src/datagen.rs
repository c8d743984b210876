//! Issue 3: training-data generation (`afs_datagen::generate`) on the usage logs: wall time
//! in process, wall time plus peak memory in a child process (`afs-bench datagen-child`)
//! whose only work is one generation run, and the wall time of a whole `afs generate`
//! command.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use afs_datagen::{
    generate, Format, GenerationResult, GeneratorConfig, HeuristicScorer, NearDedupeConfig,
};
use afs_store_sqlite::SqliteStore;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::{logs, remove_file, KEEP_FILES};

/// The generation settings measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Variant {
    /// The seed's defaults: quality >= 0.7, thumbs-up required, exact dedupe, chatml,
    /// redaction on.
    Seed,
    /// The same with `format = dpo` (pairs of thumbs-up and thumbs-down responses).
    Dpo,
    /// The seed's defaults plus near-duplicate removal (MinHash, Jaccard 0.8).
    NearDedupe,
    /// The seed's defaults without redaction: shows what redaction costs.
    NoRedact,
}

impl Variant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Seed => "seed",
            Variant::Dpo => "dpo",
            Variant::NearDedupe => "near-dedupe",
            Variant::NoRedact => "no-redact",
        }
    }

    /// The config of this variant. Scores are not written back, so every run sees the same
    /// log.
    fn config(self) -> GeneratorConfig {
        let seed = GeneratorConfig {
            write_back_scores: false,
            ..GeneratorConfig::default()
        };
        match self {
            Variant::Seed => seed,
            Variant::Dpo => GeneratorConfig {
                format: Format::Dpo,
                ..seed
            },
            Variant::NearDedupe => GeneratorConfig {
                near_dedupe: Some(NearDedupeConfig::default()),
                ..seed
            },
            Variant::NoRedact => GeneratorConfig {
                redact: false,
                ..seed
            },
        }
    }
}

/// One generation run: its wall time and counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    /// Wall time of `generate`, seconds.
    pub(crate) secs: f64,
    pub(crate) total_candidates: u64,
    pub(crate) filtered_by_feedback: u64,
    pub(crate) scored_records: u64,
    pub(crate) filtered_by_quality: u64,
    pub(crate) duplicates_removed: u64,
    pub(crate) near_duplicates_removed: u64,
    pub(crate) unpaired: u64,
    pub(crate) final_count: u64,
    pub(crate) redactions: u64,
    pub(crate) output_bytes: u64,
}

impl Run {
    fn new(secs: f64, r: &GenerationResult) -> Self {
        Run {
            secs,
            total_candidates: r.total_candidates,
            filtered_by_feedback: r.filtered_by_feedback,
            scored_records: r.scored_records,
            filtered_by_quality: r.filtered_by_quality,
            duplicates_removed: r.duplicates_removed,
            near_duplicates_removed: r.near_duplicates_removed,
            unpaired: r.unpaired,
            final_count: r.final_count,
            redactions: r.redactions.total(),
            output_bytes: r.output_bytes,
        }
    }
}

/// What a child process reports on its last stdout line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildReport {
    pub(crate) variant: Variant,
    pub(crate) run: Run,
    /// Seconds to open the store (before `generate`).
    pub(crate) open_secs: f64,
    /// Resident memory after opening the store, before `generate`, kB.
    pub(crate) rss_before_kb: u64,
    /// Peak resident memory of the whole process (`VmHWM`), kB.
    pub(crate) peak_rss_kb: u64,
}

/// A child run, or why it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChildOutcome {
    Ok(ChildReport),
    Error(String),
}

/// Everything measured on one log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DatagenTimes {
    /// In-process runs with the seed's settings (empty when none were made).
    pub(crate) runs: Vec<Run>,
    /// Median wall time of `runs`, seconds.
    pub(crate) median_secs: Option<f64>,
    /// Median wall time of as many in-process runs without redaction, seconds.
    pub(crate) no_redact_median_secs: Option<f64>,
    /// Child-process runs, one per variant.
    pub(crate) children: Vec<(Variant, ChildOutcome)>,
    /// Wall times of whole `afs generate` processes with the seed's settings, seconds
    /// (empty when not measured), or why they could not be measured.
    pub(crate) cli: Result<Vec<f64>, String>,
    /// `generate` with its defaults, which write back the scores it gives, on copies of the
    /// log, `None` when not measured, or why it could not be.
    pub(crate) write_back: Result<Option<WriteBack>, String>,
}

/// Generation writing back the scores it gives (issue 15: a score set from NULL should cost
/// about what a log costs), each on a fresh copy of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WriteBack {
    /// How many scores were written back.
    pub(crate) scored: u64,
    /// Wall time of one in-process `generate` with write-back, seconds: on a store opened
    /// before, as `afs serve` or the loop runs it. Set against the median without
    /// write-back, it gives the cost per score.
    pub(crate) in_process_secs: f64,
    /// Seconds per record of logging as many records on the same store afterwards, one
    /// `log` call at a time, and in one `log_batch`: what the issue compares a score to.
    pub(crate) log_call_secs: f64,
    /// See `log_call_secs`.
    pub(crate) log_batch_secs: f64,
    /// Wall time of one whole `afs generate` command, seconds: it also pays the
    /// checkpoint of the scattered pages the scores changed when it closes the database.
    pub(crate) whole_secs: f64,
}

impl DatagenTimes {
    /// The median run (by wall time) of the in-process runs.
    pub(crate) fn median_run(&self) -> Option<&Run> {
        let mut runs: Vec<&Run> = self.runs.iter().collect();
        runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }
}

/// Runs `generate` with `variant`'s settings from `store` into `out`, then deletes the output
/// and its manifest.
fn run_once(store: &SqliteStore, variant: Variant, out: &Path) -> Result<Run> {
    let config = variant.config();
    let start = Instant::now();
    let result = generate(store, &config, out, &HeuristicScorer, None)
        .with_context(|| format!("generate ({}) failed", variant.name()))?;
    let secs = start.elapsed().as_secs_f64();
    remove_file(out);
    remove_file(&afs_datagen::manifest_path(out));
    Ok(Run::new(secs, &result))
}

/// `in_process` timed runs of the seed's settings on the open `store`, then one child
/// process per entry of `children` on the database at `db`.
pub(crate) fn measure(
    store: &SqliteStore,
    db: &Path,
    dir: &Path,
    in_process: usize,
    children: &[Variant],
) -> Result<DatagenTimes> {
    // The log was just written and checkpointed: wait until the kernel has written it to
    // disk, or the runs would time that write-back (each run's own sync of its output
    // queues behind it). A log that training data is made from was written long before.
    std::fs::File::open(db)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", db.display()))?;
    let out = dir.join("train.jsonl");
    let mut runs = Vec::with_capacity(in_process);
    for i in 0..in_process {
        let run = run_once(store, Variant::Seed, &out)?;
        eprintln!(
            "  generate (seed settings) run {}/{in_process}: {:.3} s, {} samples of {} candidates",
            i + 1,
            run.secs,
            run.final_count,
            run.total_candidates
        );
        runs.push(run);
    }
    let mut no_redact = Vec::with_capacity(in_process);
    for _ in 0..in_process {
        no_redact.push(run_once(store, Variant::NoRedact, &out)?.secs);
    }
    let median_secs = median(runs.iter().map(|r| r.secs).collect());
    let no_redact_median_secs = median(no_redact);
    if let Some(secs) = no_redact_median_secs {
        eprintln!("  generate without redaction: median {secs:.3} s");
    }

    let mut child_runs = Vec::with_capacity(children.len());
    for &variant in children {
        let outcome = match run_child(
            db,
            &dir.join(format!("train-{}.jsonl", variant.name())),
            variant,
        ) {
            Ok(report) => {
                eprintln!(
                    "  generate ({}) in a child process: {:.3} s, peak RSS {:.1} MB, {} samples",
                    variant.name(),
                    report.run.secs,
                    report.peak_rss_kb as f64 / 1024.0,
                    report.run.final_count
                );
                ChildOutcome::Ok(report)
            }
            Err(err) => {
                eprintln!(
                    "  generate ({}) in a child process failed: {err:#}",
                    variant.name()
                );
                ChildOutcome::Error(format!("{err:#}"))
            }
        };
        child_runs.push((variant, outcome));
    }
    let (cli, write_back) = if in_process > 0 {
        let expected = runs.first().map(|r| r.final_count);
        (
            cli_runs(db, dir, in_process, expected).map_err(|e| format!("{e:#}")),
            write_back_run(db, dir, expected)
                .map(Some)
                .map_err(|e| format!("{e:#}")),
        )
    } else {
        (Ok(Vec::new()), Ok(None))
    };
    Ok(DatagenTimes {
        runs,
        median_secs,
        no_redact_median_secs,
        children: child_runs,
        cli,
        write_back,
    })
}

/// Times `n` runs of the `afs generate` command with the seed's settings (its defaults,
/// scores not written back) on `db`: process start, opening the store, generation and
/// exit, as a user running it sees. Each run must write `expected` samples.
fn cli_runs(db: &Path, dir: &Path, n: usize, expected: Option<u64>) -> Result<Vec<f64>> {
    let mut secs = Vec::with_capacity(n);
    for _ in 0..n {
        let (elapsed, _) = afs_generate(db, dir, &["--no-write-back"], expected)?;
        secs.push(elapsed);
    }
    eprintln!(
        "  afs generate (whole command): {}",
        secs.iter()
            .map(|s| format!("{s:.3} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(secs)
}

/// Times `generate` with its defaults, so the scores it gives the log's unscored records are
/// written back: once in process, once as a whole `afs generate`, each on its own copy of
/// `db` (the other figures need the log as it is).
fn write_back_run(db: &Path, dir: &Path, expected: Option<u64>) -> Result<WriteBack> {
    let (in_process_secs, scored, log_call_secs, log_batch_secs) = {
        let copy = dir.join("usage-write-back-in-process.db");
        std::fs::copy(db, &copy)
            .with_context(|| format!("cannot copy {} to {}", db.display(), copy.display()))?;
        let outcome = (|| -> Result<(f64, u64, f64, f64)> {
            // On disk before the timing starts, as the command's copy below.
            std::fs::File::open(&copy)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", copy.display()))?;
            let store = SqliteStore::open(
                afs_store_sqlite::SqliteConfig::new(&copy),
                std::sync::Arc::new(afs_store::SystemClock),
            )?;
            // A warm-up run without write-back opens the pooled connections, as the
            // median's runs had.
            run_once(&store, Variant::Seed, &dir.join("warm.jsonl"))?;
            let out = dir.join("train-write-back.jsonl");
            let start = Instant::now();
            let result = generate(
                &store,
                &GeneratorConfig::default(),
                &out,
                &HeuristicScorer,
                None,
            )
            .context("generate with write-back failed")?;
            let secs = start.elapsed().as_secs_f64();
            remove_file(&out);
            remove_file(&afs_datagen::manifest_path(&out));
            let n = result.scored_records.max(1);
            let record = |i: u64| {
                afs_store::NewUsage::new(format!("bench query {i}"), "a response", "bench-model")
            };
            let start = Instant::now();
            for i in 0..n {
                afs_store::UsageStore::log(&store, record(i))?;
            }
            let log_call = start.elapsed().as_secs_f64() / n as f64;
            let batch: Vec<_> = (n..2 * n).map(record).collect();
            let start = Instant::now();
            afs_store::UsageStore::log_batch(&store, batch)?;
            let log_batch = start.elapsed().as_secs_f64() / n as f64;
            Ok((secs, result.scored_records, log_call, log_batch))
        })();
        crate::remove_db(&copy);
        outcome?
    };
    eprintln!(
        "  generate writing back {scored} scores, in process: {in_process_secs:.3} s; \
         then logging as many records: {:.1} us per call, {:.1} us each in a batch",
        log_call_secs * 1e6,
        log_batch_secs * 1e6
    );
    let copy = dir.join("usage-write-back.db");
    // The log was checkpointed when built: its file holds every record.
    std::fs::copy(db, &copy)
        .with_context(|| format!("cannot copy {} to {}", db.display(), copy.display()))?;
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", copy.display()))?;
    let outcome = afs_generate(&copy, dir, &[], expected);
    crate::remove_db(&copy);
    let (secs, result) = outcome?;
    let whole_scored = result["scored_records"]
        .as_u64()
        .context("afs generate printed no scored_records")?;
    eprintln!("  afs generate writing back {whole_scored} scores: {secs:.3} s");
    if whole_scored != scored {
        bail!("generate wrote back {scored} scores in process but {whole_scored} as a command");
    }
    Ok(WriteBack {
        scored,
        in_process_secs,
        log_call_secs,
        log_batch_secs,
        whole_secs: secs,
    })
}

/// Runs `afs generate` with the seed's settings (its defaults) plus `args` on `db`, timed
/// from process start to exit, as a user running it sees; checks that it wrote `expected`
/// samples and returns its JSON result.
fn afs_generate(
    db: &Path,
    dir: &Path,
    args: &[&str],
    expected: Option<u64>,
) -> Result<(f64, serde_json::Value)> {
    let bin = crate::import::afs_bin()?;
    let out = dir.join("train-cli.jsonl");
    let mut command = Command::new(&bin);
    // No config file or AFS_* variable may change the settings: run where no afs.toml
    // is, with none of them set.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AFS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(dir)
        .arg("--db")
        .arg(db)
        .arg("--json")
        .arg("generate")
        .args(args)
        .arg("--out")
        .arg(&out)
        // Captured, so no progress bar is drawn even when the bench runs on a terminal.
        .stdin(Stdio::null());
    let start = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let secs = start.elapsed().as_secs_f64();
    remove_file(&out);
    remove_file(&afs_datagen::manifest_path(&out));
    if !output.status.success() {
        bail!(
            "afs generate failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("afs generate printed no JSON result")?;
    let written = result["final_count"].as_u64();
    if written != expected {
        bail!("afs generate wrote {written:?} samples, the in-process runs {expected:?}");
    }
    Ok((secs, result))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Runs `afs-bench datagen-child` on `db` and reads its report.
fn run_child(db: &Path, out: &Path, variant: Variant) -> Result<ChildReport> {
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let mut command = Command::new(&exe);
    if KEEP_FILES.load(Ordering::Relaxed) {
        command.arg("--keep");
    }
    let output = command
        .arg("datagen-child")
        .arg("--db")
        .arg(db)
        .arg("--out")
        .arg(out)
        .arg("--variant")
        .arg(variant.name())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !output.status.success() {
        bail!("the child process failed: {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the child process printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("cannot parse the child's report {line:?}"))
}

/// A field of `/proc/self/status` in kB (`VmHWM`, `VmRSS`), where the system has one.
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The child process: one generation run on `db`, then its report as one JSON line on stdout.
pub(crate) fn child_main(db: &Path, out: &Path, variant: Variant) -> Result<()> {
    let start = Instant::now();
    let (store, _clock) = logs::open(db)?;
    let open_secs = start.elapsed().as_secs_f64();
    let rss_before_kb = proc_status_kb("VmRSS").unwrap_or(0);
    let run = run_once(&store, variant, out)?;
    drop(store);
    let peak_rss_kb = proc_status_kb("VmHWM").context("no VmHWM in /proc/self/status")?;
    let report = ChildReport {
        variant,
        run,
        open_secs,
        rss_before_kb,
        peak_rss_kb,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
