//! The PostgreSQL server of the `postgres` group: a server named by `AFS_BENCH_PG_URL` (or
//! `AFS_TEST_PG_URL`), or else a private throwaway cluster started the way `cargo xtask`
//! starts the tests' (xtask/src/pg.rs: `initdb` into a temp dir, run as the `postgres` user
//! when we are root, a free loopback port, `pg_ctl start`/`stop`), but with durable settings
//! closer to production: `fsync=on`, `synchronous_commit=on` and `full_page_writes=on` (the
//! defaults), `shared_buffers=256MB`; every other setting is PostgreSQL's default.
//!
//! The CPU the server spends ([`Server::cpu_secs`]) is read from `/proc`: the user and system
//! time of the postmaster and of every process below it (found by the parent pid in
//! `/proc/*/stat`), plus the time of the children the postmaster has already reaped
//! (`cutime`, `cstime`: a backend whose client disconnected before the second reading).
//! Only a private cluster is measured; the processes of a server at a URL may not be ours,
//! or on this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The variable naming a server for the bench (it must allow `CREATE DATABASE`).
pub(crate) const URL_ENV: &str = "AFS_BENCH_PG_URL";
/// The tests' variable, used when [`URL_ENV`] is not set.
pub(crate) const TEST_URL_ENV: &str = "AFS_TEST_PG_URL";
/// Where PostgreSQL's server binaries are, overriding the search (as for xtask).
const BINDIR_ENV: &str = "AFS_PG_BINDIR";

/// The server settings of the private cluster, beyond the port and socket.
const SETTINGS: &str = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on \
                        -c shared_buffers=256MB";

/// The server the group measures against.
pub(crate) enum Server {
    /// A cluster this run started; stopped and deleted on drop.
    Private(Cluster),
    /// A server named by the environment.
    External {
        /// Its URL (shown only without its password).
        url: String,
        /// The variable that named it.
        from: &'static str,
    },
}

/// The server to use, or why there is none (`Ok(Err(reason))`: the group is skipped).
pub(crate) fn find() -> Result<std::result::Result<Server, String>> {
    for from in [URL_ENV, TEST_URL_ENV] {
        if let Ok(url) = std::env::var(from) {
            if !url.trim().is_empty() {
                return Ok(Ok(Server::External { url, from }));
            }
        }
    }
    let bindir =
        find_bindir().filter(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    let Some(bindir) = bindir else {
        return Ok(Err(format!(
            "PostgreSQL is not installed (no initdb and pg_ctl on PATH, in {BINDIR_ENV} or \
             under /usr/lib/postgresql) and neither {URL_ENV} nor {TEST_URL_ENV} names a server"
        )));
    };
    if is_root() && user_id("postgres").is_none() {
        return Ok(Err(
            "running as root and there is no `postgres` user to run a private cluster as \
             (set AFS_BENCH_PG_URL to use a running server)"
                .to_string(),
        ));
    }
    Ok(Ok(Server::Private(Cluster::start(&bindir)?)))
}

impl Server {
    /// The URL of the server's maintenance database (new databases are made from it).
    pub(crate) fn url(&self) -> &str {
        match self {
            Server::Private(cluster) => &cluster.url,
            Server::External { url, .. } => url,
        }
    }

    /// CPU seconds the server's processes have used so far, or `None` when not measured (a
    /// server at a URL, or `/proc` unreadable).
    pub(crate) fn cpu_secs(&self) -> Option<f64> {
        match self {
            Server::Private(cluster) => cluster.cpu_secs(),
            Server::External { .. } => None,
        }
    }

    /// The resolution of [`Server::cpu_secs`]: one clock tick, seconds.
    pub(crate) fn cpu_tick_secs(&self) -> Option<f64> {
        match self {
            Server::Private(cluster) => Some(1.0 / cluster.ticks),
            Server::External { .. } => None,
        }
    }

    /// How the server was chosen, for the report.
    pub(crate) fn origin(&self) -> String {
        match self {
            Server::Private(cluster) => format!(
                "a private cluster started for this run (initdb into {}, loopback TCP, \
                 {SETTINGS_SHOWN}, other settings default)",
                cluster.dir.display()
            ),
            Server::External { url, from } => format!(
                "the server {from} names ({}); server CPU is not measured there",
                afs_store_postgres::redact_url(url)
            ),
        }
    }
}

/// [`SETTINGS`] as the report words them.
const SETTINGS_SHOWN: &str =
    "fsync=on, synchronous_commit=on, full_page_writes=on, shared_buffers=256MB";

/// The directory holding `initdb` and `pg_ctl` (as xtask finds it): `AFS_PG_BINDIR`, else
/// `PATH`, else the newest `/usr/lib/postgresql/N/bin`.
fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A running private cluster; stopped (immediately: nothing in it is kept) and deleted on
/// drop.
pub(crate) struct Cluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    url: String,
    dir: PathBuf,
    bindir: PathBuf,
    run_as: Option<String>,
    /// Clock ticks per second of `/proc/*/stat` times.
    ticks: f64,
}

impl Cluster {
    fn start(bindir: &Path) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("afs-bench-pg-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove old {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let run_as = if is_root() {
            let uid = user_id("postgres").context("no `postgres` user")?;
            std::os::unix::fs::chown(&dir, Some(uid), None)
                .with_context(|| format!("cannot give {} to postgres", dir.display()))?;
            Some("postgres".to_string())
        } else {
            None
        };
        let mut cluster = Cluster {
            url: String::new(),
            dir,
            bindir: bindir.to_path_buf(),
            run_as,
            ticks: clock_ticks(),
        };
        eprintln!(
            "[postgres] starting a private cluster in {} ({SETTINGS_SHOWN})",
            cluster.dir.display()
        );
        let data = cluster.dir.join("data");
        let mut initdb = cluster.command("initdb");
        // --no-sync only skips initdb's own flush of the template files; the server runs
        // with fsync on.
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C"]);
        quiet(initdb).context("initdb failed")?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {SETTINGS}",
            cluster.dir.display()
        );
        let mut start = cluster.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(cluster.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        if let Err(err) = quiet(start) {
            let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
            bail!("pg_ctl start failed: {err:#}\nserver log:\n{log}");
        }
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Ok(cluster)
    }

    /// `tool` from the bindir, run as the cluster's user.
    fn command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    fn postmaster(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// CPU seconds of the postmaster, every process below it, and the children it reaped.
    fn cpu_secs(&self) -> Option<f64> {
        let root = self.postmaster()?;
        let mut procs: HashMap<u32, ProcStat> = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                procs.insert(pid, stat);
            }
        }
        procs.get(&root)?;
        let mut ticks = 0u64;
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            if let Some(stat) = procs.get(&pid) {
                ticks += stat.ticks;
            }
            todo.extend(
                procs
                    .iter()
                    .filter(|(_, s)| s.ppid == pid)
                    .map(|(child, _)| *child),
            );
        }
        Some(ticks as f64 / self.ticks)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = quiet(stop);
        if !crate::KEEP_FILES.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the CPU sum needs of `/proc/<pid>/stat`.
struct ProcStat {
    ppid: u32,
    /// utime + stime + cutime + cstime, clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it
    // start at field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|&t: &f64| t > 0.0)
        .unwrap_or(100.0)
}

/// Runs `command`, its output captured and shown only when it fails.
fn quiet(mut command: Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn user_id(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}
