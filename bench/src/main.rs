//! `afs-bench`: measures afs against the targets of its issues (the usage store, training
//! data generation, retraining triggers, champion/challenger experiments, the HTTP service)
//! and prints each
//! figure with its target, PASS/MISS and the Python seed's figure; writes
//! bench-out/bench.json (every figure) and bench-out/store.json (the usage store's figures,
//! as before).
//!
//! Run it through `cargo xtask bench [--quick] [--only GROUP,...]`, which builds the release
//! `afs` binary first (the import and serve figures run it as child processes).

mod abtest;
mod burst;
mod clock;
mod datagen;
mod import;
mod load;
mod logging;
mod logs;
mod postgres;
mod postgres_server;
mod query;
mod report;
mod serve;
mod size;
mod stats;
mod timing;
mod trigger;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use chrono::{Duration, SecondsFormat, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Seed of the workload of the usage logs.
const SEED_LOG: u64 = 42;
/// Seed of the import file: the same records as the logs, so the two write paths compare.
const SEED_IMPORT: u64 = SEED_LOG;
/// First seed of the simulated experiments (run `i` uses `SEED_AB + i`).
const SEED_AB: u64 = SEED_LOG;
/// The big log's timestamps span this many days, and the small log has the same rate, so it
/// spans a tenth of that. At 75 days the small log covers a little more than the 7-day
/// statistics window, so on both logs the window is full of records and both of its partial
/// edge hours hold records: the two timings then differ only in the size of the log.
const SPAN_DAYS: i64 = 75;

/// Benchmark harness of the afs usage store.
#[derive(Debug, Parser)]
#[command(name = "afs-bench")]
struct Args {
    /// Ten times smaller sizes (10k and 100k logs) and 3-second load runs for a fast smoke run
    #[arg(long)]
    quick: bool,

    /// Measure only these groups of figures (repeat the flag or separate with commas)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP")]
    only: Vec<Group>,

    /// Directory for store.json and the temporary databases [default: <workspace>/bench-out]
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,

    /// Keep the temporary databases and files instead of deleting them
    #[arg(long)]
    keep: bool,

    #[command(subcommand)]
    child: Option<Child>,
}

/// Work the bench runs in a child process of its own, to measure it alone.
#[derive(Debug, Subcommand)]
enum Child {
    /// One `generate` run on an existing log; prints its time and peak RSS as JSON
    #[command(hide = true)]
    DatagenChild {
        /// The usage database
        #[arg(long)]
        db: PathBuf,
        /// The training file to write (deleted afterwards)
        #[arg(long)]
        out: PathBuf,
        /// The generation settings
        #[arg(long, value_enum, default_value = "seed")]
        variant: datagen::Variant,
    },
    /// Generate load against a running `afs serve` and print throughput and latency as JSON
    /// (the serve group's second process)
    #[command(hide = true)]
    ServeLoad(load::LoadArgs),
}

/// The groups of figures: the usage store's in its issue's numbering, then one per issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Group {
    /// 1: logging one record per call
    Log,
    /// 2: `afs import`
    Import,
    /// 3: windowed statistics and trigger checks
    Stats,
    /// 4: filtered query streaming
    Query,
    /// 5: bytes per record on disk
    Size,
    /// Issue 3: training-data generation, time and peak memory
    Datagen,
    /// Issue 4: one retraining-trigger check with every policy
    Trigger,
    /// Issue 5: simulated experiments (false promotions, power, harm) and sticky routing
    Abtest,
    /// Issue 7: `afs serve` under load from `afs-bench serve-load` in a second process
    Serve,
    /// Issue 15: checks after records arrive in bursts, and while logging runs
    Burst,
    /// The usage store on PostgreSQL (a private cluster, or AFS_BENCH_PG_URL), with the
    /// server's CPU
    Postgres,
}

/// How much work each figure does.
#[derive(Debug, Clone, Serialize)]
struct Sizes {
    /// Records in the small log (statistics, size).
    small: u64,
    /// Records in the big log (statistics, query).
    big: u64,
    /// Records logged one call at a time, after the warm-up.
    log_calls: u64,
    /// Records logged before timing starts.
    log_warmup: u64,
    /// Records in the import file.
    import: u64,
    /// Timed repetitions of each statistics call.
    stats_reps: usize,
    /// Timed repetitions of the first-row measurement.
    first_row_reps: usize,
    /// Timed in-process generation runs on logs of at most 100k records.
    datagen_reps: usize,
    /// Timed trigger checks.
    trigger_reps: usize,
    /// Simulated experiments.
    ab: abtest::AbSizes,
    /// Measured seconds of each `afs-bench serve-load` run.
    serve_secs: f64,
    /// Warm-up seconds before each of them, not counted.
    serve_warmup_secs: f64,
    /// Records arriving inside the current minute, one log per entry.
    bursts: Vec<u64>,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        let scale = if quick { 10 } else { 1 };
        Sizes {
            small: 100_000 / scale,
            big: 1_000_000 / scale,
            log_calls: 20_000 / scale,
            log_warmup: 1_000 / scale,
            import: 100_000 / scale,
            stats_reps: 50,
            first_row_reps: 20,
            datagen_reps: 7,
            trigger_reps: 50,
            ab: if quick {
                abtest::AbSizes {
                    runs: 200,
                    secondary_runs: 60,
                    routing_units: 1_000_000,
                    sqlite_runs: 1,
                    cost_records: 100_000,
                    cost_units: 10_000,
                }
            } else {
                abtest::AbSizes {
                    runs: 1000,
                    secondary_runs: 300,
                    routing_units: 1_000_000,
                    sqlite_runs: 4,
                    cost_records: 1_000_000,
                    cost_units: 100_000,
                }
            },
            serve_secs: if quick { 3.0 } else { 10.0 },
            serve_warmup_secs: 1.0,
            bursts: if quick {
                vec![10_000, 100_000]
            } else {
                vec![100_000, 1_000_000]
            },
        }
    }

    /// Average time between records: the big log spans [`SPAN_DAYS`] days.
    fn mean_gap(&self) -> Duration {
        Duration::microseconds(SPAN_DAYS * 86_400 * 1_000_000 / self.big as i64)
    }
}

/// Outcome of the import figure: the child's failure is a result to report, not an error.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum ImportResult {
    Ok(import::Outcome),
    Error(String),
}

/// A measurement, or why it could not be made: a failing crate is a result to report, and
/// the other groups still run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Measured<T> {
    Ok(T),
    Error(String),
}

impl<T> Measured<T> {
    fn of(result: Result<T>, what: &str) -> Self {
        match result {
            Ok(value) => Measured::Ok(value),
            Err(err) => {
                eprintln!("  {what} failed: {err:#}");
                Measured::Error(format!("{err:#}"))
            }
        }
    }
}

/// What was measured on one usage log.
#[derive(Debug, Serialize)]
struct LogResults {
    n_records: u64,
    /// Seconds spent in `log_batch` building it.
    build_secs: f64,
    /// Bytes of query and response text in it.
    text_bytes: u64,
    stats: Option<stats::StatsTimes>,
    stream: Option<query::StreamTimes>,
    /// Database plus WAL after a checkpoint.
    disk: Option<size::DiskUse>,
    datagen: Option<Measured<datagen::DatagenTimes>>,
    trigger: Option<Measured<trigger::TriggerTimes>>,
}

/// Everything measured in one run; also the raw part of store.json.
#[derive(Debug, Serialize)]
struct Results {
    mode: &'static str,
    /// `/proc/loadavg` before and after the run: other work on the machine skews timings.
    load_before: Option<String>,
    load_after: Option<String>,
    sizes: Sizes,
    logging: Option<logging::Rates>,
    import: Option<ImportResult>,
    small: Option<LogResults>,
    big: Option<LogResults>,
    abtest: Option<Measured<abtest::AbResults>>,
    burst: Option<Measured<burst::BurstTimes>>,
    serve: Option<Measured<serve::ServeResults>>,
    postgres: Option<postgres::PgResults>,
}

/// A directory deleted (with every database in it) when the run ends, even on error.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept temporary files in {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(parent) = self.path.parent() {
            // Only succeeds when no other run is using it.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// `path` with `suffix` appended to its file name (`usage.db` → `usage.db-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Set by `--keep`: leave the databases and files a run writes for inspection.
static KEEP_FILES: AtomicBool = AtomicBool::new(false);

/// Deletes a file the run wrote once it is no longer needed, unless `--keep` was given.
fn remove_file(path: &Path) {
    if !KEEP_FILES.load(Ordering::Relaxed) {
        let _ = std::fs::remove_file(path);
    }
}

/// Deletes a database and its WAL and shared-memory files, unless `--keep` was given.
fn remove_db(path: &Path) {
    for file in [
        path.to_path_buf(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        remove_file(&file);
    }
}

/// Builds a log of `n_records` under `dir`, measures the wanted figures on it, deletes it.
fn measure_log(dir: &Path, n_records: u64, sizes: &Sizes, wanted: &[Group]) -> Result<LogResults> {
    let name = report::short_count(n_records);
    let path = dir.join(format!("usage-{name}.db"));
    eprintln!("[build] {name} log with log_batch at {}", path.display());
    let built = logs::build(&path, n_records, SEED_LOG, sizes.mean_gap())?;
    let result = (|| {
        let stats = if wanted.contains(&Group::Stats) {
            eprintln!("[stats] {name} log");
            Some(stats::measure(&built.store, built.end, sizes.stats_reps)?)
        } else {
            None
        };
        let stream = if wanted.contains(&Group::Query) {
            eprintln!("[query] {name} log");
            Some(query::measure(&built.store, sizes.first_row_reps)?)
        } else {
            None
        };
        Ok::<_, anyhow::Error>((stats, stream))
    })();
    let logs::Built {
        store,
        end,
        secs,
        text_bytes,
        ..
    } = built;
    // Closing the store checkpoints the WAL; the size is measured on the closed file.
    drop(store);
    let store_groups = [Group::Stats, Group::Query, Group::Size]
        .iter()
        .any(|g| wanted.contains(g));
    let measured = result.and_then(|(stats, stream)| {
        let disk = if store_groups {
            let disk = size::measure(&path)?;
            eprintln!(
                "[size] {name} log: {} bytes, {:.0} B/record",
                disk.bytes,
                disk.bytes as f64 / n_records as f64
            );
            Some(disk)
        } else {
            None
        };
        // Generation and trigger checks run on the log reopened after its size was measured
        // (the trigger saves its state in the store).
        let (mut datagen, mut trigger) = (None, None);
        if wanted.contains(&Group::Datagen) || wanted.contains(&Group::Trigger) {
            let (store, clock) = logs::open(&path)?;
            if wanted.contains(&Group::Datagen) {
                let reps = if n_records <= 100_000 {
                    sizes.datagen_reps
                } else {
                    0
                };
                let children: &[datagen::Variant] = if n_records == sizes.big {
                    &[
                        datagen::Variant::Seed,
                        datagen::Variant::Dpo,
                        datagen::Variant::NearDedupe,
                    ]
                } else {
                    &[]
                };
                eprintln!("[datagen] {name} log");
                datagen = Some(Measured::of(
                    datagen::measure(&store, &path, dir, reps, children),
                    "generation",
                ));
            }
            if wanted.contains(&Group::Trigger) {
                eprintln!("[trigger] {name} log");
                trigger = Some(Measured::of(
                    trigger::measure(&store, &clock, end, sizes.trigger_reps),
                    "trigger check",
                ));
            }
        }
        Ok(LogResults {
            n_records,
            build_secs: secs,
            text_bytes,
            stats,
            stream,
            disk,
            datagen,
            trigger,
        })
    });
    remove_db(&path);
    measured
}

/// The 1, 5 and 15-minute load averages, where the system tells them.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn run(args: Args) -> Result<()> {
    KEEP_FILES.store(args.keep, Ordering::Relaxed);
    if let Some(Child::DatagenChild { db, out, variant }) = &args.child {
        return datagen::child_main(db, out, *variant);
    }
    if let Some(Child::ServeLoad(load_args)) = &args.child {
        return load::run(load_args);
    }
    let sizes = Sizes::new(args.quick);
    let wanted: Vec<Group> = if args.only.is_empty() {
        Group::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    let out_dir = args.out_dir.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("bench-out")
    });
    let tmp = TempDir {
        path: out_dir
            .join("tmp")
            .join(format!("run-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&tmp.path)
        .with_context(|| format!("cannot create {}", tmp.path.display()))?;
    eprintln!(
        "afs-bench ({} mode): logs of {} and {} records, temporary files in {}",
        if args.quick { "quick" } else { "full" },
        sizes.small,
        sizes.big,
        tmp.path.display()
    );

    let mut results = Results {
        mode: if args.quick { "quick" } else { "full" },
        load_before: load_average(),
        load_after: None,
        sizes: sizes.clone(),
        logging: None,
        import: None,
        small: None,
        big: None,
        abtest: None,
        serve: None,
        burst: None,
        postgres: None,
    };
    if wanted.contains(&Group::Log) {
        results.logging = Some(logging::measure(
            &tmp.path,
            sizes.log_calls,
            sizes.log_warmup,
        )?);
    }
    if wanted.contains(&Group::Import) {
        results.import = Some(
            match import::measure(&tmp.path, sizes.import, sizes.mean_gap()) {
                Ok(outcome) => ImportResult::Ok(outcome),
                Err(err) => {
                    eprintln!("  import failed: {err:#}");
                    ImportResult::Error(format!("{err:#}"))
                }
            },
        );
    }
    // The service before the CPU-heavy simulations and the logs, with the machine quiet.
    if wanted.contains(&Group::Serve) {
        results.serve = Some(Measured::of(
            serve::measure(&tmp.path, sizes.serve_secs, sizes.serve_warmup_secs),
            "serve",
        ));
    }
    // The simulations first: they need no log, and the logs' page cache is then not evicted
    // between building a log and measuring on it.
    if wanted.contains(&Group::Abtest) {
        eprintln!("[abtest] simulated experiments");
        results.abtest = Some(Measured::of(
            abtest::measure(sizes.ab, SEED_AB, &tmp.path),
            "simulation",
        ));
    }
    if wanted.contains(&Group::Burst) {
        eprintln!("[burst] checks after records arrive in bursts");
        results.burst = Some(Measured::of(
            burst::measure(&tmp.path, &sizes.bursts),
            "burst",
        ));
    }
    if wanted.contains(&Group::Postgres) {
        results.postgres = Some(postgres::measure(&tmp.path, &sizes));
    }
    if [
        Group::Stats,
        Group::Query,
        Group::Size,
        Group::Datagen,
        Group::Trigger,
    ]
    .iter()
    .any(|g| wanted.contains(g))
    {
        results.small = Some(measure_log(&tmp.path, sizes.small, &sizes, &wanted)?);
    }
    if [Group::Stats, Group::Query, Group::Datagen, Group::Trigger]
        .iter()
        .any(|g| wanted.contains(g))
    {
        results.big = Some(measure_log(&tmp.path, sizes.big, &sizes, &wanted)?);
    }
    drop(tmp);
    results.load_after = load_average();

    let figures = report::figures(&results);
    println!();
    print!("{}", report::table(&figures));
    println!(
        "load average before {}, after {} ({} CPUs)",
        results.load_before.as_deref().unwrap_or("?"),
        results.load_after.as_deref().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let generated_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let afs_bin = import::afs_bin().ok().map(|p| p.display().to_string());
    let summary = serde_json::json!({
        "bench": "afs",
        "generated_at": generated_at,
        "afs_bin": afs_bin,
        "groups": wanted,
        "figures": figures,
        "raw": results,
    });
    write_json(&out_dir.join("bench.json"), &summary)?;
    // store.json keeps its former content (the usage store's figures) for whoever reads it;
    // it is only rewritten by a run that measured some of them.
    let store_figures: Vec<&report::Figure> = figures.iter().filter(|f| f.is_store()).collect();
    if store_figures.iter().any(|f| !f.is_background()) {
        let store_summary = serde_json::json!({
            "bench": "store",
            "generated_at": generated_at,
            "afs_bin": afs_bin,
            "figures": store_figures,
            "raw": results,
        });
        write_json(&out_dir.join("store.json"), &store_summary)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("summary written to {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("afs-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
