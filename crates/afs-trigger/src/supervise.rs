//! The supervisor of external commands (the trainer command and the evaluation command):
//! one place starts them, watches them, stops them and reads their logs.
//!
//! A command runs as `sh -c SCRIPT` in a process group of its own, with its stdout and
//! stderr in log files that are created new (never replacing a file), its stdin on
//! `/dev/null`, and an environment without afs's secrets ([`is_secret_env`]).
//!
//! **It never outlives afs.** The group's first process is a small `sh` wrapper that starts
//! a watchdog in the same group and then runs the command (in its own `sh`, which neither
//! sees the watchdog nor inherits the watchdog's pipe). The watchdog reads a pipe whose only
//! write end afs holds; when that pipe ends — afs finished with the command, or afs died,
//! even by SIGKILL, since the kernel then closes its files — it sends SIGTERM to the whole
//! group, and SIGKILL after [`WATCHDOG_GRACE_SECS`]. A timeout or a stop request kills the
//! group at once. A command that leaves its process group (`setsid`) escapes all this.
//!
//! For the case where the watchdog itself was killed, the group is recorded in a small file
//! (the trainer's is `trainer.pid.json` in the run directory: the group id, the leader's
//! start time, and afs's own pid and start time) so that the next afs can stop leftovers
//! before it records the run as failed ([`crate::recover_stale_runs`]).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use afs_store::process::{boot_id, proc_stat};
use serde::{Deserialize, Serialize};

use crate::template::Placeholder;

/// Seconds the watchdog waits between SIGTERM and SIGKILL when afs is gone.
pub const WATCHDOG_GRACE_SECS: u32 = 5;

/// The `sh -c` wrapper. `$1` is the command's script. fd 0 is the pipe from afs: it moves to
/// fd 3 for the watchdog alone, and everything else gets /dev/null as stdin.
const WRAPPER: &str = "exec 3<&0 </dev/null
(
  trap '' HUP INT TERM
  while read -r _ <&3; do :; done
  kill -s TERM 0
  sleep GRACE
  kill -s KILL 0
) >/dev/null 2>&1 &
exec 3<&-
sh -c \"$1\"
";

/// Environment variables of afs that hold secrets (or say where they are) and are removed
/// from every command's environment: any `AFS_*` variable whose name contains one of
/// these words (compared in upper case), e.g. `AFS_TOKENS`, `AFS_SERVE__TOKENS`,
/// `AFS_SERVE__TOKEN_FILE`.
pub const SECRET_ENV_WORDS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
];

/// Whether the environment variable `name` is one of afs's secrets, which commands do not
/// inherit (see [`SECRET_ENV_WORDS`]).
pub fn is_secret_env(name: &std::ffi::OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    upper.starts_with("AFS_") && SECRET_ENV_WORDS.iter().any(|w| upper.contains(w))
}

/// One command to run under supervision.
#[derive(Debug)]
pub struct ShellCommand<'a> {
    /// The shell text (a [`crate::CommandTemplate`]'s script).
    pub script: &'a str,
    /// Variables to set in its environment (the placeholders' values and the like).
    pub env: Vec<(&'static str, OsString)>,
    /// Its working directory (`None`: afs's).
    pub working_dir: Option<&'a Path>,
    /// Its stdout; created, and refused if it already exists.
    pub stdout_log: &'a Path,
    /// Its stderr; created, and refused if it already exists.
    pub stderr_log: &'a Path,
    /// Where to record its process group for a later afs (see the module); created, and
    /// refused if it already exists.
    pub group_file: Option<&'a Path>,
    /// How long it may run.
    pub timeout: Duration,
    /// Stops it when set.
    pub stop: Option<&'a AtomicBool>,
}

/// How a supervised command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It ran past its timeout; its group was killed.
    TimedOut,
    /// The stop flag was set; its group was killed (or it was not started).
    Interrupted,
}

impl Ended {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Ended::Exited(Some(0))
    }

    /// "exit code N" or "a signal".
    pub fn describe(self) -> String {
        match self {
            Ended::Exited(Some(code)) => format!("exit code {code}"),
            Ended::Exited(None) => "a signal".into(),
            Ended::TimedOut => "a timeout".into(),
            Ended::Interrupted => "an interruption".into(),
        }
    }
}

/// A command could not be started or its files could not be handled.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct SuperviseError {
    /// What was being done, naming the path.
    pub context: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SuperviseError {
    let context = context.into();
    move |source| SuperviseError { context, source }
}

/// Creates `path` for writing, refusing to replace (or follow a link at) an existing path.
pub fn create_new(path: &Path) -> Result<File, SuperviseError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                io(format!(
                    "create {}: it already exists; afs does not replace it",
                    path.display()
                ))(e)
            } else {
                io(format!("create {}", path.display()))(e)
            }
        })
}

/// Runs `cmd` to its end (see the module). Errors only when it could not be started or its
/// files could not be created; its own failures are in [`Ended`].
pub fn run_supervised(cmd: &ShellCommand<'_>) -> Result<Ended, SuperviseError> {
    if cmd.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
        return Ok(Ended::Interrupted);
    }
    let stdout = create_new(cmd.stdout_log)?;
    let stderr = create_new(cmd.stderr_log)?;
    // Created before the command starts, so that a refusal starts nothing.
    let group_file = match cmd.group_file {
        Some(path) => Some((path, create_new(path)?)),
        None => None,
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER.replace("GRACE", &WATCHDOG_GRACE_SECS.to_string()))
        .arg("afs-supervisor")
        .arg(cmd.script);
    for (name, _) in std::env::vars_os() {
        if is_secret_env(&name) {
            command.env_remove(name);
        }
    }
    for p in Placeholder::ALL {
        command.env_remove(p.env_var());
    }
    command.env_remove("AFS_N_SAMPLES");
    for (name, value) in &cmd.env {
        command.env(name, value);
    }
    command
        // The watchdog's pipe: afs keeps the write end (close-on-exec, so no other
        // command afs starts inherits it).
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so the whole command is stopped together.
        .process_group(0);
    if let Some(dir) = cmd.working_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(io("start the command"))?;
    let lifeline = child.stdin.take();
    let pid = child.id();
    if let Some((path, file)) = group_file {
        if let Err(e) = write_group_file(path, file, pid) {
            kill_group(pid);
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    let started = Instant::now();
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ended::Exited(status.code()),
            Ok(None) => {}
            Err(e) => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(io("wait for the command")(e));
            }
        }
        let timed_out = started.elapsed() >= cmd.timeout;
        if timed_out || cmd.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            kill_group(pid);
            let _ = child.kill();
            let _ = child.wait();
            break if timed_out {
                Ended::TimedOut
            } else {
                Ended::Interrupted
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Closing the pipe tells the watchdog to stop whatever the command left running.
    drop(lifeline);
    Ok(ended)
}

/// Kills the process group `pid` leads (the command was started with `process_group(0)`,
/// so its group id is its pid), taking any children it started with it.
fn kill_group(pid: u32) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    if pgid <= 1 {
        return; // Never signal "every process" or init by accident.
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The last few non-empty lines of a log (read from its last 64 KiB), for messages.
pub fn tail(path: &Path) -> String {
    let text = read_tail(path, 64 * 1024).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(5)..].join(" | ");
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined
    }
}

/// At most the last `max` bytes of a file, as text (lossy), and whether the file was longer.
///
/// Only a regular file is read (not a link, a FIFO or a device a command put in its place).
pub(crate) fn read_tail_checked(path: &Path, max: u64) -> std::io::Result<(String, bool)> {
    if !path.symlink_metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let cut = len > max;
    if cut {
        file.seek(SeekFrom::Start(len - max))?;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), cut))
}

fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    read_tail_checked(path, max).map(|(text, _)| text)
}

// --- Process identities and the group file -------------------------------------------------

/// The live (not zombie) processes of group `pgid`, with their start times.
fn group_members(pgid: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = proc_stat(pid)?;
            (stat.pgrp == pgid && !stat.zombie).then_some((pid, stat.start))
        })
        .collect()
}

/// The record of a command's process group, for a later afs (see the module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// The boot the pids belong to.
    pub(crate) boot_id: String,
    /// The afs process that started the command.
    pub(crate) owner_pid: u32,
    /// Its start time (clock ticks since boot).
    pub(crate) owner_start: u64,
    /// The command's process group (the pid of its first process).
    pub(crate) pgid: i32,
    /// The start time of that first process.
    pub(crate) leader_start: u64,
}

fn write_group_file(path: &Path, mut file: File, pid: u32) -> Result<(), SuperviseError> {
    let me = std::process::id();
    let pgid = i32::try_from(pid).unwrap_or(0);
    let record = GroupRecord {
        boot_id: boot_id(),
        owner_pid: me,
        owner_start: proc_stat(i32::try_from(me).unwrap_or(0)).map_or(0, |s| s.start),
        pgid,
        leader_start: proc_stat(pgid).map_or(0, |s| s.start),
    };
    let text = serde_json::to_string(&record).unwrap_or_default();
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("write {}", path.display())))
}

/// Reads a group record (small; anything else is ignored).
pub(crate) fn read_group_file(path: &Path) -> Option<GroupRecord> {
    let (text, cut) = read_tail_checked(path, 4096).ok()?;
    if cut {
        return None;
    }
    serde_json::from_str(&text).ok()
}

impl GroupRecord {
    /// Whether the afs process that wrote the record is still running.
    pub(crate) fn owner_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.owner_pid) else {
            return false;
        };
        proc_stat(pid).is_some_and(|s| !s.zombie && s.start == self.owner_start)
    }

    /// The processes still running in the recorded group: none when the group id may
    /// have been reused since (another boot, or a different process now leads a group
    /// with that id); otherwise the members started no earlier than the recorded leader.
    fn survivors(&self) -> Vec<i32> {
        if self.pgid <= 1 || self.boot_id != boot_id() {
            return Vec::new();
        }
        let own_group = proc_stat(i32::try_from(std::process::id()).unwrap_or(0)).map(|s| s.pgrp);
        if own_group == Some(self.pgid) {
            return Vec::new();
        }
        // While any process of a group lives, its id is not given to a new process; so a
        // process with the group's id and another start time means the group is not ours.
        if let Some(leader) = proc_stat(self.pgid) {
            if leader.start != self.leader_start {
                return Vec::new();
            }
        }
        group_members(self.pgid)
            .into_iter()
            .filter(|&(_, start)| start >= self.leader_start)
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Stops what is left of the group: SIGTERM, up to `grace` to end, then SIGKILL.
    /// Returns how many processes were left.
    pub(crate) fn stop_survivors(&self, grace: Duration) -> usize {
        let left = self.survivors();
        if left.is_empty() {
            return 0;
        }
        let group = nix::unistd::Pid::from_raw(self.pgid);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.survivors().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.survivors().is_empty() {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !self.survivors().is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        left.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_by_name() {
        for name in [
            "AFS_TOKENS",
            "AFS_SERVE__TOKENS",
            "AFS_SERVE__TOKEN_FILE",
            "afs_serve__tokens",
            "AFS_DB_PASSWORD",
        ] {
            assert!(is_secret_env(name.as_ref()), "{name}");
        }
        for name in ["AFS_DB", "AFS_DATA_PATH", "AFS_NOW", "HOME", "GITHUB_TOKEN"] {
            assert!(!is_secret_env(name.as_ref()), "{name}");
        }
    }

    #[test]
    fn our_own_process_is_alive_and_a_made_up_one_is_not() {
        let me = std::process::id();
        let stat = proc_stat(me as i32).unwrap();
        let record = GroupRecord {
            boot_id: boot_id(),
            owner_pid: me,
            owner_start: stat.start,
            pgid: stat.pgrp,
            leader_start: 0,
        };
        assert!(record.owner_alive());
        // Our own group is never stopped.
        assert!(record.survivors().is_empty());
        let other = GroupRecord {
            owner_start: stat.start + 1,
            ..record
        };
        assert!(!other.owner_alive());
    }
}
