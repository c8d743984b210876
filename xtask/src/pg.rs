//! A private, throwaway PostgreSQL cluster: `cargo xtask ci` starts one for the tests (points
//! `AFS_TEST_PG_URL` at it, stops and deletes it when the tests end), and the benchmark
//! harness starts one for its PostgreSQL figures. No running service is assumed: the cluster
//! lives in a temp directory, listens on a free loopback port and on a socket in that
//! directory, and trusts local connections (it holds nothing but test or bench data). The
//! caller picks the server settings: the tests turn durability off ([`TEST_SETTINGS`]: a
//! crash loses a test database, nothing else), the bench keeps it on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The variable the PostgreSQL tests read (afs_store_postgres::testing::URL_ENV).
pub const URL_ENV: &str = "AFS_TEST_PG_URL";

/// Where PostgreSQL's server binaries are (`initdb`, `pg_ctl`), overriding the search.
pub const BINDIR_ENV: &str = "AFS_PG_BINDIR";

/// The server settings of the tests' cluster: durability off, many connections.
pub const TEST_SETTINGS: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
     -c max_connections=400 -c shared_buffers=64MB";

/// A running throwaway cluster; stopped (immediately: nothing in it is kept) and, unless
/// [`Cluster::keep_files`] was called, deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    dir: PathBuf,
    bindir: PathBuf,
    run_as: Option<String>,
    keep: bool,
}

/// The directory holding `initdb` and `pg_ctl`: `AFS_PG_BINDIR`, else `PATH`, else the
/// newest Debian layout `/usr/lib/postgresql/N/bin`; `None` when PostgreSQL is not installed.
pub fn find_bindir() -> Option<PathBuf> {
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

impl Cluster {
    /// Creates and starts a cluster in a new temp directory named `afs-{purpose}-pg-PID`,
    /// with server `settings` (`-c name=value ...`). As root, the server runs as the
    /// `postgres` user (PostgreSQL refuses to run as root), which must exist.
    pub fn start(bindir: &Path, purpose: &str, settings: &str) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("afs-{purpose}-pg-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove old {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let run_as = if is_root() {
            let uid = user_id("postgres").context(
                "running as root, and there is no `postgres` user to run the test cluster as \
                 (Debian's postgresql package creates it)",
            )?;
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
            keep: false,
        };
        let data = cluster.dir.join("data");
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C"]);
        quiet(initdb).context("initdb failed")?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {settings}",
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

    /// The directory holding the cluster (its data, socket and server log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves the directory in place when the cluster stops (to read its server log).
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = quiet(stop);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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
