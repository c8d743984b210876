//! The PostgreSQL server of the `postgres` group: a server named by `AFS_BENCH_PG_URL` (or
//! `AFS_TEST_PG_URL`), or else a private throwaway cluster started by the code that starts
//! the tests' (`xtask::pg`: `initdb` into a temp dir, run as the `postgres` user when we are
//! root, a free loopback port, `pg_ctl start`/`stop`), but with durable settings
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
use std::process::Command;

use anyhow::Result;
use xtask::pg;

/// The variable naming a server for the bench (it must allow `CREATE DATABASE`).
pub(crate) const URL_ENV: &str = "AFS_BENCH_PG_URL";
/// The tests' variable, used when [`URL_ENV`] is not set.
pub(crate) const TEST_URL_ENV: &str = "AFS_TEST_PG_URL";

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
    let bindir = pg::find_bindir()
        .filter(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    let Some(bindir) = bindir else {
        return Ok(Err(format!(
            "PostgreSQL is not installed (no initdb and pg_ctl on PATH, in {} or under \
             /usr/lib/postgresql) and neither {URL_ENV} nor {TEST_URL_ENV} names a server",
            pg::BINDIR_ENV
        )));
    };
    eprintln!("[postgres] starting a private cluster ({SETTINGS_SHOWN})");
    let mut cluster = pg::Cluster::start(&bindir, "bench", SETTINGS)?;
    if crate::KEEP_FILES.load(std::sync::atomic::Ordering::Relaxed) {
        cluster.keep_files();
    }
    Ok(Ok(Server::Private(Cluster {
        cluster,
        ticks: clock_ticks(),
    })))
}

impl Server {
    /// The URL of the server's maintenance database (new databases are made from it).
    pub(crate) fn url(&self) -> &str {
        match self {
            Server::Private(cluster) => &cluster.cluster.url,
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
                cluster.cluster.dir().display()
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

/// A private cluster and the clock ticks per second of `/proc/*/stat` times.
pub(crate) struct Cluster {
    cluster: pg::Cluster,
    ticks: f64,
}

impl Cluster {
    /// CPU seconds of the postmaster, every process below it, and the children it reaped.
    fn cpu_secs(&self) -> Option<f64> {
        let root = self.cluster.postmaster_pid()?;
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
