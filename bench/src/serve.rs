//! Issue 7: `afs serve` under load generated on loopback from a second process.
//!
//! Each scenario gets a fresh database (with a champion registered, so `GET /v1/route` has a
//! model to answer) and a fresh `afs serve --addr 127.0.0.1:0` child; `afs-bench serve-load`
//! (this binary's load generator, [`crate::load`]), a second child, sends the requests and
//! prints its throughput and latency as JSON; the server is then stopped with SIGTERM and the
//! database deleted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::Measured;

/// How long the server may take to print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a load run may take beyond its warm-up and duration before it is killed.
const LOAD_GRACE: Duration = Duration::from_secs(60);
/// How long the server may take to drain and exit after SIGTERM (its own default limit for
/// in-flight requests is 30 s) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// How often a child is polled.
const POLL: Duration = Duration::from_millis(20);

/// Environment variables of `afs` that would change what is measured (a token, another
/// config or database, verbose logging): the children run without them.
const AFS_ENV: &[&str] = &[
    "AFS_DB",
    "AFS_CONFIG",
    "AFS_ADDR",
    "AFS_TOKENS",
    "AFS_TOKEN",
    "RUST_LOG",
];

/// One load scenario: what `afs-bench serve-load` sends.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Scenario {
    /// `--scenario`: usage, batch or route.
    pub(crate) name: &'static str,
    /// `--connections`.
    pub(crate) connections: u16,
    /// `--batch-size` (the batch scenario only).
    pub(crate) batch_size: Option<usize>,
}

/// The scenarios of issue 7's speed targets, in its order.
pub(crate) const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "usage",
        connections: 64,
        batch_size: None,
    },
    Scenario {
        name: "batch",
        connections: 4,
        batch_size: Some(1000),
    },
    Scenario {
        name: "route",
        connections: 64,
        batch_size: None,
    },
];

/// Latency percentiles of the measured requests, ms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

/// The JSON report of `afs-bench serve-load` (the fields the bench uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadReport {
    /// Measured requests (after the warm-up), answered or not.
    pub(crate) requests: u64,
    /// Of them, answered 2xx.
    pub(crate) ok: u64,
    /// Of them, answered otherwise or failed on the connection.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Records written by the measured requests.
    pub(crate) records: u64,
    /// From the end of the warm-up to the last measured answer, seconds.
    pub(crate) elapsed_secs: f64,
    pub(crate) requests_per_sec: f64,
    pub(crate) records_per_sec: f64,
    pub(crate) latency_ms: Latency,
}

/// One scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct ScenarioRun {
    pub(crate) report: LoadReport,
    /// `/proc/loadavg` (1, 5, 15 min) just before the load started and just after it ended.
    pub(crate) load_before: Option<String>,
    pub(crate) load_after: Option<String>,
    /// How the server exited after SIGTERM, and how long it took.
    pub(crate) server_exit: String,
    pub(crate) shutdown_secs: f64,
}

/// A scenario and its outcome.
#[derive(Debug, Serialize)]
pub(crate) struct ScenarioOutcome {
    pub(crate) scenario: Scenario,
    pub(crate) result: Measured<ScenarioRun>,
}

/// Everything the serve group measured.
#[derive(Debug, Serialize)]
pub(crate) struct ServeResults {
    /// Measured seconds of each run (`--duration`), after `warmup_secs` not counted.
    pub(crate) secs: f64,
    pub(crate) warmup_secs: f64,
    pub(crate) scenarios: Vec<ScenarioOutcome>,
}

impl ServeResults {
    pub(crate) fn scenario(&self, name: &str) -> Option<&ScenarioOutcome> {
        self.scenarios.iter().find(|s| s.scenario.name == name)
    }
}

/// Runs every scenario for `secs` seconds (after `warmup_secs`), each on its own database
/// under `dir`.
pub(crate) fn measure(dir: &Path, secs: f64, warmup_secs: f64) -> Result<ServeResults> {
    let bin = crate::import::afs_bin()?;
    if !bin.is_file() {
        bail!(
            "no afs binary at {} (run `cargo build --release -p afs-cli` or set AFS_BIN)",
            bin.display()
        );
    }
    let mut scenarios = Vec::new();
    for scenario in SCENARIOS {
        eprintln!(
            "[serve] {}: {} connections{}, {secs} s after {warmup_secs} s of warm-up",
            scenario.name,
            scenario.connections,
            scenario
                .batch_size
                .map_or(String::new(), |n| format!(", {n} records per request"))
        );
        let result = run_scenario(&bin, dir, scenario, secs, warmup_secs);
        if let Ok(run) = &result {
            let r = &run.report;
            eprintln!(
                "  {:.0} req/s, {:.0} rec/s, p99 {:.2} ms, {} errors (load {} -> {})",
                r.requests_per_sec,
                r.records_per_sec,
                r.latency_ms.p99,
                r.errors,
                run.load_before.as_deref().unwrap_or("?"),
                run.load_after.as_deref().unwrap_or("?")
            );
        }
        scenarios.push(ScenarioOutcome {
            scenario,
            result: Measured::of(result, &format!("serve {}", scenario.name)),
        });
    }
    Ok(ServeResults {
        secs,
        warmup_secs,
        scenarios,
    })
}

/// A command for `bin` (the `afs` binary, or this one for its load generator) that runs in
/// `dir` (so no `./afs.toml` is read) without the `afs` environment variables.
fn afs_command(bin: &Path, dir: &Path) -> Command {
    let mut command = Command::new(bin);
    command.current_dir(dir).stdin(Stdio::null());
    for var in AFS_ENV {
        command.env_remove(var);
    }
    command
}

fn run_scenario(
    bin: &Path,
    dir: &Path,
    scenario: Scenario,
    secs: f64,
    warmup_secs: f64,
) -> Result<ScenarioRun> {
    let db = dir.join(format!("serve-{}.db", scenario.name));
    let logs = [
        dir.join(format!("serve-{}.out", scenario.name)),
        dir.join(format!("serve-{}.err", scenario.name)),
        dir.join(format!("load-{}.out", scenario.name)),
        dir.join(format!("load-{}.err", scenario.name)),
    ];
    let result = (|| {
        set_champion(bin, dir, &db, &logs[0], &logs[1])?;
        let mut server = Server::start(bin, dir, &db, &logs[0], &logs[1])?;
        let url = server.wait_ready()?;
        let load_before = crate::load_average();
        let report = run_load(
            dir,
            &url,
            scenario,
            (secs, warmup_secs),
            [&logs[2], &logs[3]],
        );
        let load_after = crate::load_average();
        let (status, shutdown_secs) = server.stop()?;
        let report = report?;
        Ok(ScenarioRun {
            report,
            load_before,
            load_after,
            server_exit: status.to_string(),
            shutdown_secs,
        })
    })();
    crate::remove_db(&db);
    for log in &logs {
        crate::remove_file(log);
    }
    result
}

/// `afs ab set-champion m1 --path /tmp/m1`, so that `/v1/route` has a model to return.
fn set_champion(bin: &Path, dir: &Path, db: &Path, out: &Path, err: &Path) -> Result<()> {
    let mut command = afs_command(bin, dir);
    command
        .arg("--db")
        .arg(db)
        .args(["ab", "set-champion", "m1", "--path", "/tmp/m1"]);
    let status = run_to_files(command, out, err, Duration::from_secs(60))?;
    if !status.success() {
        bail!(
            "afs ab set-champion failed ({status}): {}",
            last_line(&[out, err])
        );
    }
    Ok(())
}

/// Runs `command` with its output in files, killing it after `timeout`.
fn run_to_files(
    mut command: Command,
    out: &Path,
    err: &Path,
    timeout: Duration,
) -> Result<ExitStatus> {
    let program = Path::new(command.get_program()).display().to_string();
    let mut child = command
        .stdout(create(out)?)
        .stderr(create(err)?)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// The last non-empty line of the first of `files` that has one, for an error message.
fn last_line(files: &[&Path]) -> String {
    let mut last = String::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            last = line.trim().to_string();
        }
    }
    last
}

/// A running `afs serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    stopped: bool,
}

impl Server {
    fn start(bin: &Path, dir: &Path, db: &Path, out: &Path, err: &Path) -> Result<Server> {
        let mut command = afs_command(bin, dir);
        command
            .arg("--db")
            .arg(db)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .stdout(create(out)?)
            .stderr(create(err)?);
        eprintln!(
            "  {} --db {} serve --addr 127.0.0.1:0",
            bin.display(),
            db.display()
        );
        let child = command.spawn().context("cannot start afs serve")?;
        Ok(Server {
            child,
            out: out.to_path_buf(),
            err: err.to_path_buf(),
            stopped: false,
        })
    }

    /// Waits for the line `listening on http://HOST:PORT` on the server's stdout or stderr
    /// and returns the URL.
    fn wait_ready(&mut self) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for file in [&self.out, &self.err] {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                // Only whole lines: the last one may still be being written.
                let complete = text.rfind('\n').map_or("", |end| &text[..end]);
                for line in complete.lines() {
                    if let Some(at) = line.find("listening on http://") {
                        let url = line[at + "listening on ".len()..].trim();
                        return Ok(url.to_string());
                    }
                }
            }
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                bail!(
                    "afs serve exited ({status}) before listening: {}",
                    last_line(&[&self.out, &self.err])
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "afs serve printed no `listening on http://...` line within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM (to the server's own, positive pid) and waits for it to exit; kills it
    /// if it has not within [`STOP_TIMEOUT`]. Returns its exit status and the wait.
    fn stop(&mut self) -> Result<(ExitStatus, f64)> {
        self.stopped = true;
        let start = Instant::now();
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "afs serve had already exited ({status}): {}",
                last_line(&[&self.out, &self.err])
            );
        }
        let pid = i32::try_from(self.child.id()).context("server pid out of range")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("cannot send SIGTERM to afs serve")?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, start.elapsed().as_secs_f64()));
            }
            if start.elapsed() >= STOP_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "afs serve did not exit within {} s of SIGTERM (killed)",
                    STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(err) = self.stop() {
                eprintln!("  stopping afs serve: {err:#}");
            }
        }
    }
}

/// Runs `afs-bench serve-load` (this executable, in a process of its own) against `url` with
/// its output in `out` and `err`, and parses its report.
fn run_load(
    dir: &Path,
    url: &str,
    scenario: Scenario,
    (secs, warmup_secs): (f64, f64),
    [out, err]: [&Path; 2],
) -> Result<LoadReport> {
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let mut command = afs_command(&exe, dir);
    command
        .args(["serve-load", "--url", url, "--scenario", scenario.name])
        .arg("--connections")
        .arg(scenario.connections.to_string())
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--warmup")
        .arg(warmup_secs.to_string());
    if let Some(n) = scenario.batch_size {
        command.arg("--batch-size").arg(n.to_string());
    }
    let timeout = Duration::from_secs_f64(secs + warmup_secs) + LOAD_GRACE;
    let status = run_to_files(command, out, err, timeout)?;
    if !status.success() {
        bail!(
            "afs-bench serve-load failed ({status}): {}",
            last_line(&[out, err])
        );
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("cannot read {}", out.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| {
            format!(
                "afs-bench serve-load printed no JSON report: {:.200}",
                text.trim()
            )
        })?;
    serde_json::from_str(line)
        .with_context(|| format!("cannot read the report of afs-bench serve-load: {line:.300}"))
}
