//! Figure 2: `afs import` of a JSON Lines file, run as a child process of the real binary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use afs_store::NewUsage;
use anyhow::{bail, Context, Result};
use chrono::{Duration, SecondsFormat};
use serde::Serialize;

use crate::workload::Workload;

/// One line of the import file, in `afs import`'s vocabulary.
#[derive(Serialize)]
struct Line<'a> {
    query: &'a str,
    response: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expert: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feedback: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_count: Option<i64>,
}

impl<'a> From<&'a NewUsage> for Line<'a> {
    fn from(r: &'a NewUsage) -> Self {
        Line {
            query: &r.query,
            response: &r.response,
            model: &r.model,
            expert: r.expert.as_deref(),
            latency_ms: r.latency_ms,
            quality_score: r.quality_score,
            feedback: r.feedback.as_ref().map(|f| f.value.as_i64()),
            unit: r.unit_id.as_deref(),
            timestamp: r
                .timestamp
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            token_count: r.token_count,
        }
    }
}

/// A successful import run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    /// Records in the file (and imported).
    pub(crate) n_records: u64,
    /// Size of the file, bytes.
    pub(crate) file_bytes: u64,
    /// Wall time of the child process, seconds.
    pub(crate) secs: f64,
}

/// The `afs` binary: `AFS_BIN`, else `afs` next to this executable (both live in
/// `target/release`).
pub(crate) fn afs_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("AFS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no directory")?;
    Ok(dir.join(format!("afs{}", std::env::consts::EXE_SUFFIX)))
}

/// Writes `n_records` records to a JSONL file under `dir` and times `afs import` of it into
/// a new database.
pub(crate) fn measure(dir: &Path, n_records: u64, mean_gap: Duration) -> Result<Outcome> {
    let bin = afs_bin()?;
    if !bin.is_file() {
        bail!(
            "no afs binary at {} (run `cargo build --release -p afs-cli` or set AFS_BIN)",
            bin.display()
        );
    }
    let file = dir.join("import.jsonl");
    let db = dir.join("import.db");
    eprintln!("[import] writing {n_records} records to {}", file.display());
    let file_bytes = write_jsonl(&file, n_records, mean_gap)?;
    eprintln!(
        "[import] {} --db {} --json import {}",
        bin.display(),
        db.display(),
        file.display()
    );
    let result = run_import(&bin, &db, &file, n_records);
    crate::remove_file(&file);
    crate::remove_db(&db);
    let secs = result?;
    eprintln!("  {:.0} rec/s", n_records as f64 / secs);
    Ok(Outcome {
        n_records,
        file_bytes,
        secs,
    })
}

/// Writes the import file and syncs it, so the import timed next does not share the disk and
/// the CPU with the kernel's writeback of the file (~140 MB at 100k records).
pub(crate) fn write_jsonl(path: &Path, n_records: u64, mean_gap: Duration) -> Result<u64> {
    let io = || format!("cannot write {}", path.display());
    let mut out = BufWriter::new(File::create(path).with_context(io)?);
    let mut workload = Workload::new(crate::SEED_IMPORT, mean_gap);
    for _ in 0..n_records {
        let record = workload.next_record();
        serde_json::to_writer(&mut out, &Line::from(&record)).with_context(io)?;
        out.write_all(b"\n").with_context(io)?;
    }
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(io)?;
    file.sync_all().with_context(io)?;
    Ok(file.metadata().with_context(io)?.len())
}

/// Runs the import and returns its wall time in seconds, after checking its report.
fn run_import(bin: &Path, db: &Path, file: &Path, n_records: u64) -> Result<f64> {
    let start = Instant::now();
    let output = Command::new(bin)
        .arg("--db")
        .arg(db)
        .arg("--json")
        .arg("import")
        .arg(file)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("afs import failed ({}): {last}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("afs import printed no JSON report: {:.200}", stdout.trim()))?;
    let imported = report.get("imported").and_then(serde_json::Value::as_u64);
    if imported != Some(n_records) {
        bail!("afs import reported imported = {imported:?}, expected {n_records}: {report}");
    }
    Ok(secs)
}
