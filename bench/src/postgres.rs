//! The `postgres` group: the usage store's speed on PostgreSQL (`afs_store_postgres::PgStore`),
//! beside the SQLite figures, against the PostgreSQL issue's targets: logging one record per
//! call from 4 threads, `afs import`, windowed per-model statistics and the first row of a
//! filtered query on a 1M-record log, and `afs generate` on the 100k bench log. Beside each
//! figure: the CPU the server spent on it (see `postgres_server`).
//!
//! Every measurement runs in a database of its own, created empty on the server
//! (`afs_store_postgres::testing::TestDatabase`) and dropped afterwards. The logs are the
//! SQLite group's workloads: the 100k log of the generation figure is the SQLite small log
//! (same seed, same timestamps), the 1M log the SQLite big log, and the import file holds
//! the records of the SQLite import file. After a log is built the database is vacuumed and
//! analysed and a checkpoint is taken (what autovacuum and the checkpointer do within
//! minutes of a load), so the reads are not timed against that background work.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use afs_store::{NewUsage, RecordFilter, StatsWindow, SystemClock, UsageStore};
use afs_store_postgres::testing::TestDatabase;
use afs_store_postgres::{PgConfig, PgStore};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::postgres_server::Server;
use crate::timing::{repeat, Samples};
use crate::workload::Workload;
use crate::{Measured, Sizes};

/// Records per `log_batch` call while a log is built.
pub(crate) const BATCH: usize = 10_000;
/// The model of the filtered query (30% of the workload's records).
pub(crate) const QUERY_MODEL: &str = "nayru-v2";
/// The quality floor of the filtered query.
pub(crate) const QUERY_MIN_QUALITY: f64 = 0.7;

/// How much work each figure does.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PgSizes {
    /// Records logged one call at a time from one thread, after the warm-up.
    pub(crate) log_one: u64,
    /// Records logged one call at a time from four threads, after the warm-up.
    pub(crate) log_four: u64,
    /// Records logged before timing starts.
    pub(crate) log_warmup: u64,
    /// Records in the import file.
    pub(crate) import: u64,
    /// Records in the log `afs generate` reads.
    pub(crate) small: u64,
    /// Records in the log of the statistics and the query.
    pub(crate) big: u64,
    /// Timed statistics calls.
    pub(crate) stats_reps: usize,
    /// Timed first-row measurements.
    pub(crate) first_row_reps: usize,
    /// Timed `afs generate` runs (after one untimed).
    pub(crate) generate_reps: usize,
    /// Mean gap between the timestamps of the logs and the import file, microseconds (the
    /// SQLite group's).
    pub(crate) mean_gap_us: i64,
}

impl PgSizes {
    pub(crate) fn new(sizes: &Sizes) -> Self {
        // A quick run has a ten times smaller big log.
        let scale = if sizes.big < 1_000_000 { 10 } else { 1 };
        PgSizes {
            log_one: 5_000 / scale,
            log_four: sizes.log_calls,
            log_warmup: sizes.log_warmup,
            import: sizes.import,
            small: sizes.small,
            big: sizes.big,
            stats_reps: sizes.stats_reps,
            first_row_reps: sizes.first_row_reps,
            generate_reps: 3,
            mean_gap_us: sizes.mean_gap().num_microseconds().unwrap_or(1_000_000),
        }
    }
}

/// The group's outcome.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PgResults {
    /// Not measured, and why (no PostgreSQL here): not a failure.
    Skipped(String),
    /// The server could not be started or reached.
    Error(String),
    /// Measured.
    Ran(Box<PgRun>),
}

/// Everything measured on one server.
#[derive(Debug, Serialize)]
pub(crate) struct PgRun {
    pub(crate) sizes: PgSizes,
    /// Where the server came from and its settings.
    pub(crate) server: String,
    /// `server_version` and the durability settings, as the server reports them.
    pub(crate) settings: String,
    /// `fsync=..., synchronous_commit=...` as the server reports them: what a commit waits
    /// for.
    pub(crate) durability: String,
    /// Whether the server's CPU is measured (a private cluster only).
    pub(crate) cpu_measured: bool,
    pub(crate) logging: Measured<LogRates>,
    pub(crate) import: Measured<Import>,
    pub(crate) generate: Measured<Generate>,
    pub(crate) big: Measured<BigLog>,
}

/// Records per second of one timed logging run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogRun {
    pub(crate) threads: usize,
    pub(crate) n_records: u64,
    pub(crate) secs: f64,
    /// Server CPU seconds over the timed part.
    pub(crate) server_cpu_secs: Option<f64>,
    /// Records missing from the log afterwards (should be none).
    pub(crate) lost: u64,
}

impl LogRun {
    pub(crate) fn rate(&self) -> f64 {
        self.n_records as f64 / self.secs
    }
}

/// Logging one record per call from one thread and from four.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogRates {
    pub(crate) one: LogRun,
    pub(crate) four: LogRun,
}

/// `afs import` as a whole process.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Import {
    pub(crate) n_records: u64,
    pub(crate) file_bytes: u64,
    /// The median of `runs`.
    pub(crate) secs: f64,
    /// Seconds of each import, each into a fresh database.
    pub(crate) runs: Vec<f64>,
    /// Server CPU of the median run.
    pub(crate) server_cpu_secs: Option<f64>,
}

/// A log built with `log_batch`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Build {
    pub(crate) n_records: u64,
    /// Seconds inside `log_batch`.
    pub(crate) secs: f64,
    pub(crate) server_cpu_secs: Option<f64>,
    /// Seconds of `VACUUM (ANALYZE)` and `CHECKPOINT` afterwards (not in `secs`).
    pub(crate) settle_secs: f64,
    /// Server CPU seconds of those.
    pub(crate) settle_cpu_secs: Option<f64>,
}

/// `afs generate` as a whole process on the small log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Generate {
    pub(crate) build: Build,
    /// Wall times of the timed runs, seconds (after one untimed run).
    pub(crate) runs: Vec<f64>,
    pub(crate) median_secs: f64,
    /// Samples each run wrote.
    pub(crate) final_count: u64,
    /// Server CPU seconds per timed run, on average.
    pub(crate) server_cpu_secs: Option<f64>,
}

/// The 1M log and what was measured on it.
#[derive(Debug, Serialize)]
pub(crate) struct BigLog {
    pub(crate) build: Build,
    pub(crate) stats: Measured<Stats>,
    pub(crate) query: Measured<Query>,
}

/// `stats_by_model` over a 24-hour window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stats {
    pub(crate) times: Samples,
    /// Records in the window, all models together.
    pub(crate) window_total: u64,
    pub(crate) models: usize,
    pub(crate) server_cpu: Option<CpuPerCall>,
}

/// The first row of a query by model and quality floor.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Query {
    pub(crate) first_row: Samples,
    pub(crate) server_cpu: Option<CpuPerCall>,
}

/// Server CPU per call of a short read, from calls made for it alone (after the timed ones):
/// `/proc` counts CPU in clock ticks (10 ms), so it takes many calls.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CpuPerCall {
    pub(crate) calls: usize,
    /// Server CPU seconds of all the calls.
    pub(crate) total_secs: f64,
    /// One clock tick, seconds: the resolution of `total_secs`.
    pub(crate) tick_secs: f64,
}

impl CpuPerCall {
    /// `0.412 ms/call (200 calls)`, or an upper bound when the calls cost less than a tick.
    pub(crate) fn text(&self) -> String {
        let per_call_ms = |secs: f64| secs * 1000.0 / self.calls as f64;
        if self.total_secs < self.tick_secs / 2.0 {
            format!(
                "< {:.3} ms/call ({} calls under one tick)",
                per_call_ms(self.tick_secs),
                self.calls
            )
        } else {
            format!(
                "{:.3} ms/call ({} calls)",
                per_call_ms(self.total_secs),
                self.calls
            )
        }
    }
}

/// Calls `op` until at least [`CPU_CALLS`] calls and half a second have passed (at most
/// [`CPU_CALLS`] x 10 calls), and returns the server CPU per call.
fn cpu_per_call(server: &Server, mut op: impl FnMut() -> Result<()>) -> Result<Option<CpuPerCall>> {
    let Some(tick_secs) = server.cpu_tick_secs() else {
        return Ok(None);
    };
    let start = Instant::now();
    let (calls, cpu) = with_cpu(server, || {
        let mut calls = 0;
        while calls < CPU_CALLS * 10 && (calls < CPU_CALLS || start.elapsed().as_secs_f64() < 0.5) {
            op()?;
            calls += 1;
        }
        Ok(calls)
    })?;
    Ok(cpu.map(|total_secs| CpuPerCall {
        calls,
        total_secs,
        tick_secs,
    }))
}

/// Fewest calls of a short read whose server CPU is measured.
const CPU_CALLS: usize = 200;

/// Runs the group: finds or starts the server, measures every figure, stops the server.
pub(crate) fn measure(dir: &Path, sizes: &Sizes) -> PgResults {
    let server = match crate::postgres_server::find() {
        Ok(Ok(server)) => server,
        Ok(Err(reason)) => {
            eprintln!("[postgres] skipped: {reason}");
            return PgResults::Skipped(reason);
        }
        Err(err) => {
            eprintln!("[postgres] no server: {err:#}");
            return PgResults::Error(format!("{err:#}"));
        }
    };
    let (settings, durability) = match server_settings(server.url()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("[postgres] cannot reach the server: {err:#}");
            return PgResults::Error(format!("{err:#}"));
        }
    };
    eprintln!("[postgres] {}; {settings}", server.origin());
    let sizes = PgSizes::new(sizes);
    let logging = Measured::of(measure_logging(&server, &sizes), "postgres logging");
    let import = Measured::of(measure_import(&server, dir, &sizes), "postgres import");
    let generate = Measured::of(measure_generate(&server, dir, &sizes), "postgres generate");
    let big = Measured::of(measure_big(&server, &sizes), "postgres 1M log");
    PgResults::Ran(Box::new(PgRun {
        sizes,
        server: server.origin(),
        settings,
        durability,
        cpu_measured: server.cpu_secs().is_some(),
        logging,
        import,
        generate,
        big,
    }))
}

/// `server_version` and the durability settings, as the server reports them; then `fsync`
/// and `synchronous_commit` alone.
fn server_settings(url: &str) -> Result<(String, String)> {
    let mut client = connect(url)?;
    let mut shown = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "shared_buffers",
    ] {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .with_context(|| format!("SHOW {name} failed"))?;
        let value: String = row.get(0);
        shown.push(format!("{name}={value}"));
    }
    Ok((shown.join(", "), shown[1..3].join(", ")))
}

fn connect(url: &str) -> Result<postgres::Client> {
    postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| format!("cannot connect to {}", afs_store_postgres::redact_url(url)))
}

/// A new empty database on the server (dropped when the value is).
fn new_database(server: &Server) -> Result<TestDatabase> {
    let url = server.url();
    std::panic::catch_unwind(|| TestDatabase::create(url)).map_err(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow!("cannot create a database: {text}")
    })
}

fn open(db: &TestDatabase) -> Result<PgStore> {
    PgStore::open(PgConfig::new(&db.url), Arc::new(SystemClock))
        .with_context(|| format!("cannot open {}", afs_store_postgres::redact_url(&db.url)))
}

/// Runs `f` and returns its result with the server CPU seconds it cost.
fn with_cpu<T>(server: &Server, f: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
    let before = server.cpu_secs();
    let value = f()?;
    let after = server.cpu_secs();
    Ok((value, before.zip(after).map(|(b, a)| (a - b).max(0.0))))
}

/// Figure 1: `log` one record per call, 1 thread then 4, each in a fresh database.
fn measure_logging(server: &Server, sizes: &PgSizes) -> Result<LogRates> {
    let mut runs = Vec::new();
    for (threads, n) in [(1, sizes.log_one), (4, sizes.log_four)] {
        eprintln!("[postgres] log {n} records, one call each, {threads} thread(s)");
        let run = log_run(server, threads, n, sizes.log_warmup)?;
        eprintln!(
            "  {:.0} rec/s, server CPU {}",
            run.rate(),
            cpu_text(run.server_cpu_secs)
        );
        runs.push(run);
    }
    let four = runs.pop().context("no 4-thread run")?;
    let one = runs.pop().context("no 1-thread run")?;
    Ok(LogRates { one, four })
}

fn log_run(server: &Server, threads: usize, n_records: u64, warmup: u64) -> Result<LogRun> {
    let db = new_database(server)?;
    let store = open(&db)?;
    let mut workload = Workload::new(0x10c + threads as u64, Duration::seconds(1));
    for _ in 0..warmup {
        store
            .log(workload.next_live())
            .context("log failed during warm-up")?;
    }
    // Every record is made before the clock starts, so only the store is timed.
    let per_thread = n_records / threads as u64;
    let shares: Vec<Vec<NewUsage>> = (0..threads)
        .map(|_| (0..per_thread).map(|_| workload.next_live()).collect())
        .collect();
    let store_ref = &store;
    let (secs, cpu) = with_cpu(server, || {
        let start = Instant::now();
        thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    scope.spawn(move || -> Result<()> {
                        for record in share {
                            store_ref.log(record).context("log failed")?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle
                    .join()
                    .map_err(|_| anyhow!("a logging thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let logged = per_thread * threads as u64;
    let total = store.stats(&StatsWindow::default())?.total;
    Ok(LogRun {
        threads,
        n_records: logged,
        secs,
        server_cpu_secs: cpu,
        lost: (warmup + logged).saturating_sub(total),
    })
}

/// The `afs` binary with `--db url --json`, run in `dir` with no `AFS_*` variable set (no
/// configuration may change what it does).
fn afs(dir: &Path, url: &str) -> Result<Command> {
    let bin = crate::import::afs_bin()?;
    if !bin.is_file() {
        bail!(
            "no afs binary at {} (run `cargo build --release -p afs-cli` or set AFS_BIN)",
            bin.display()
        );
    }
    let mut command = Command::new(&bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AFS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(dir)
        .arg("--db")
        .arg(url)
        .arg("--json")
        .stdin(Stdio::null());
    Ok(command)
}

/// Runs `command` to its end; returns its wall time and its JSON report on stdout.
fn run_json(mut command: Command, what: &str) -> Result<(f64, serde_json::Value)> {
    let start = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{what} failed ({}): {last}", output.status);
    }
    let report = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{what} printed no JSON report"))?;
    Ok((secs, report))
}

/// Figure 2: `afs --db URL import FILE` of the SQLite import figure's file, whole process:
/// the median of [`IMPORT_REPS`] imports, each into a fresh database on a settled server.
fn measure_import(server: &Server, dir: &Path, sizes: &PgSizes) -> Result<Import> {
    let n = sizes.import;
    let file = dir.join("pg-import.jsonl");
    eprintln!("[postgres] writing {n} records to {}", file.display());
    let mean_gap = Duration::microseconds(sizes.mean_gap_us);
    let file_bytes = crate::import::write_jsonl(&file, n, mean_gap)?;
    let result = (|| {
        let mut runs: Vec<(f64, Option<f64>)> = Vec::new();
        for i in 0..=IMPORT_REPS {
            let db = new_database(server)?;
            settle(server)?;
            let mut command = afs(dir, &db.url)?;
            command.arg("import").arg(&file);
            eprintln!(
                "[postgres] afs --db {} --json import {}",
                afs_store_postgres::redact_url(&db.url),
                file.display()
            );
            let ((secs, report), cpu) = with_cpu(server, || run_json(command, "afs import"))?;
            let imported = report.get("imported").and_then(serde_json::Value::as_u64);
            if imported != Some(n) {
                bail!("afs import reported imported = {imported:?}, expected {n}: {report}");
            }
            eprintln!(
                "  {}{:.0} rec/s, server CPU {}",
                if i == 0 { "(untimed) " } else { "" },
                n as f64 / secs,
                cpu_text(cpu)
            );
            if i > 0 {
                runs.push((secs, cpu));
            }
        }
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, server_cpu_secs) = sorted[(sorted.len() - 1) / 2];
        Ok(Import {
            n_records: n,
            file_bytes,
            secs,
            runs: runs.iter().map(|r| r.0).collect(),
            server_cpu_secs,
        })
    })();
    crate::remove_file(&file);
    result
}

/// Imports timed for figure 2, after one untimed import. A new cluster's first import is
/// the slowest of its runs every time (2.34-3.09 s against 1.96-2.28 s for the next two,
/// six benches): it also creates and zero-fills the WAL segment files it writes (in a fresh
/// cluster's `pg_wal`: 1 file before the first import, 13 after it, 14 after each of the
/// next three), which later imports, like any server that has been running, reuse.
const IMPORT_REPS: usize = 3;

/// Lets the server finish what earlier figures left it (dirty buffers, autovacuum of the
/// databases they wrote) before a write is timed: a checkpoint, then up to 10 s for
/// autovacuum workers to finish. Each needs rights a server at a URL may not grant; then
/// the figure is measured without it.
fn settle(server: &Server) -> Result<()> {
    let mut client = connect(server.url())?;
    if let Err(err) = client.batch_execute("CHECKPOINT") {
        eprintln!("  CHECKPOINT refused ({err}); measuring without it");
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while Instant::now() < deadline {
        let busy: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
                &[],
            )
            .map(|row| row.get(0))
            .unwrap_or(0);
        if busy == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Writes `n` records of the SQLite logs' workload (seed `SEED_LOG`, the big log's mean gap)
/// to `store` with `log_batch` of [`BATCH`], then vacuums, analyses and checkpoints the
/// database. Returns the build and the newest record's time.
fn build(
    server: &Server,
    db: &TestDatabase,
    store: &PgStore,
    sizes: &PgSizes,
    n: u64,
) -> Result<(Build, DateTime<Utc>)> {
    let mut workload = Workload::new(crate::SEED_LOG, Duration::microseconds(sizes.mean_gap_us));
    let mut secs = 0.0;
    let mut cpu = Some(0.0);
    let mut written = 0u64;
    let mut next_report = 0u64;
    while written < n {
        let size = BATCH.min((n - written) as usize);
        let records = workload.batch(size);
        let ((), batch_cpu) = with_cpu(server, || {
            let start = Instant::now();
            store.log_batch(records).context("log_batch failed")?;
            secs += start.elapsed().as_secs_f64();
            Ok(())
        })?;
        cpu = cpu.zip(batch_cpu).map(|(a, b)| a + b);
        written += size as u64;
        if written >= next_report || written == n {
            eprintln!(
                "  {written:>9} / {n} records ({:.0} rec/s in log_batch)",
                written as f64 / secs.max(1e-9)
            );
            next_report += (n / 5).max(BATCH as u64);
        }
    }
    let (settle_secs, settle_cpu_secs) = with_cpu(server, || {
        let start = Instant::now();
        let mut client = connect(&db.url)?;
        client
            .batch_execute("VACUUM (ANALYZE)")
            .context("VACUUM (ANALYZE) failed")?;
        // Needs a superuser (or pg_checkpoint); a server at a URL may not allow it.
        if let Err(err) = client.batch_execute("CHECKPOINT") {
            eprintln!("  CHECKPOINT refused ({err}); measuring without it");
        }
        Ok(start.elapsed().as_secs_f64())
    })?;
    eprintln!(
        "  VACUUM (ANALYZE) and CHECKPOINT: {settle_secs:.1} s, server CPU {}",
        cpu_text(settle_cpu_secs)
    );
    Ok((
        Build {
            n_records: n,
            secs,
            server_cpu_secs: cpu,
            settle_secs,
            settle_cpu_secs,
        },
        workload.last_timestamp(),
    ))
}

/// Figure 4: `afs --db URL generate --no-write-back --out FILE` on the 100k log, whole
/// process: one untimed run, then the median of the timed ones.
fn measure_generate(server: &Server, dir: &Path, sizes: &PgSizes) -> Result<Generate> {
    let db = new_database(server)?;
    let n = sizes.small;
    eprintln!("[postgres] build {n} log with log_batch of {BATCH}");
    let (build, _) = {
        let store = open(&db)?;
        build(server, &db, &store, sizes, n)?
    };
    let out = dir.join("pg-train.jsonl");
    let mut runs = Vec::new();
    let mut counts = Vec::new();
    let mut cpu_total = Some(0.0);
    for i in 0..=sizes.generate_reps {
        let mut command = afs(dir, &db.url)?;
        command
            .arg("generate")
            .arg("--no-write-back")
            .arg("--out")
            .arg(&out);
        let ((secs, report), cpu) = with_cpu(server, || run_json(command, "afs generate"))?;
        crate::remove_file(&out);
        crate::remove_file(&afs_datagen::manifest_path(&out));
        let count = report["final_count"]
            .as_u64()
            .context("afs generate printed no final_count")?;
        eprintln!(
            "  afs generate {}: {secs:.3} s, {count} samples, server CPU {}",
            if i == 0 { "(untimed)" } else { "" },
            cpu_text(cpu)
        );
        counts.push(count);
        if i > 0 {
            runs.push(secs);
            cpu_total = cpu_total.zip(cpu).map(|(a, b)| a + b);
        }
    }
    if counts.iter().any(|&c| c != counts[0]) || counts[0] == 0 {
        bail!("afs generate wrote different or no samples in its runs: {counts:?}");
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median_secs = sorted[(sorted.len() - 1) / 2];
    Ok(Generate {
        build,
        median_secs,
        final_count: counts[0],
        server_cpu_secs: cpu_total.map(|c| c / runs.len() as f64),
        runs,
    })
}

/// Figures 3 and 5 on one 1M log.
fn measure_big(server: &Server, sizes: &PgSizes) -> Result<BigLog> {
    let db = new_database(server)?;
    let store = open(&db)?;
    let n = sizes.big;
    eprintln!("[postgres] build {n} log with log_batch of {BATCH}");
    let (build, end) = build(server, &db, &store, sizes, n)?;
    eprintln!("[postgres] stats_by_model, 24 h window, {n} log");
    let stats = Measured::of(
        measure_stats(server, &store, end, sizes.stats_reps),
        "postgres stats",
    );
    eprintln!("[postgres] query first row, {n} log");
    let query = Measured::of(
        measure_query(server, &store, sizes.first_row_reps),
        "postgres query",
    );
    drop(store);
    drop(db);
    Ok(BigLog {
        build,
        stats,
        query,
    })
}

/// Figure 3: `stats_by_model` over the last 24 hours, both edges inside a minute.
fn measure_stats(
    server: &Server,
    store: &PgStore,
    end: DateTime<Utc>,
    reps: usize,
) -> Result<Stats> {
    let now = end + Duration::seconds(30);
    let window = StatsWindow {
        since: Some(now - Duration::hours(24) + Duration::minutes(17)),
        until: Some(now - Duration::minutes(3)),
        model: None,
    };
    let by_model = store.stats_by_model(&window)?;
    let window_total = by_model.values().map(|s| s.total).sum();
    if window_total == 0 {
        bail!("the 24-hour window holds no records");
    }
    let call = || -> Result<()> {
        std::hint::black_box(store.stats_by_model(&window)?);
        Ok(())
    };
    let times = repeat(5, reps, &call)?;
    let server_cpu = cpu_per_call(server, &call)?;
    eprintln!(
        "  median {:.3} ms, p95 {:.3} ms ({window_total} records in the window); server CPU {}",
        times.median_ms,
        times.p95_ms,
        server_cpu
            .as_ref()
            .map_or("not measured".into(), CpuPerCall::text)
    );
    Ok(Stats {
        times,
        window_total,
        models: by_model.len(),
        server_cpu,
    })
}

/// Figure 5: the first record of a query by model and quality floor, fresh stream each time.
fn measure_query(server: &Server, store: &PgStore, reps: usize) -> Result<Query> {
    let filter = RecordFilter {
        model: Some(QUERY_MODEL.to_string()),
        min_quality: Some(QUERY_MIN_QUALITY),
        ..RecordFilter::default()
    };
    let call = || -> Result<()> {
        let mut rows = store.query(&filter)?;
        let first = rows
            .next()
            .context("the filtered query returned no rows")??;
        if first.model != QUERY_MODEL || first.quality_score.is_none_or(|q| q < QUERY_MIN_QUALITY) {
            bail!("the filtered query returned a record that does not match the filter");
        }
        std::hint::black_box(first);
        Ok(())
    };
    let first_row = repeat(2, reps, &call)?;
    let server_cpu = cpu_per_call(server, &call)?;
    eprintln!(
        "  first row: median {:.3} ms, p95 {:.3} ms; server CPU {}",
        first_row.median_ms,
        first_row.p95_ms,
        server_cpu
            .as_ref()
            .map_or("not measured".into(), CpuPerCall::text)
    );
    Ok(Query {
        first_row,
        server_cpu,
    })
}

fn cpu_text(secs: Option<f64>) -> String {
    secs.map_or("not measured".into(), |s| format!("{s:.2} s"))
}
