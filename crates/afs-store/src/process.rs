//! Which process owns something, and whether it still runs: the one liveness check of afs.
//!
//! A pid alone is not an identity (pids are reused, and `kill(pid, 0)` says yes for any
//! process that got the number since), so an owner is recorded as its pid plus an
//! identity: the boot it runs in, its start time (clock ticks since boot, from
//! `/proc/PID/stat`) and the host's name. Where `/proc` is unavailable the identity is empty
//! and the owner is assumed alive: a stuck lock is safer than two owners.
//!
//! An owner recorded on another host cannot be checked here: [`Liveness::Elsewhere`]. What
//! to do then is the caller's choice (a run store keeps the run running; several hosts on
//! one database need a lease that expires, which this module does not give).

/// A process's state from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its process group.
    pub pgrp: i32,
    /// Its start time, in clock ticks since boot.
    pub start: u64,
    /// Whether it has exited and waits to be reaped.
    pub zombie: bool,
}

/// The state of process `pid`, or `None` when there is none (or no `/proc`).
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(fields.first(), Some(&"Z") | Some(&"X")),
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id (empty without `/proc`): pids and start times belong to one boot.
pub fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// This host's name (empty without `/proc`).
pub fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The identity of process `pid` on this host: `BOOT:START@HOST`, or empty when it cannot
/// be read (no such process, no `/proc`).
pub fn identity(pid: u32) -> String {
    let Some(stat) = i32::try_from(pid).ok().and_then(proc_stat) else {
        return String::new();
    };
    format!("{}:{}@{}", boot_id(), stat.start, host_name())
}

/// What can be said of a recorded owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (or its identity is unknown, so it is assumed to).
    Alive,
    /// It does not run: no such process, another process with its pid, an exited process,
    /// or a boot of this host that has ended.
    Dead,
    /// It was recorded on another host; this host cannot tell.
    Elsewhere,
}

/// Whether the process recorded as `pid` with `identity` (from [`identity`]) still runs.
/// An identity without `@HOST` (written before hosts were recorded) is taken as this host's.
pub fn liveness(pid: u32, identity: &str) -> Liveness {
    if identity.is_empty() {
        return Liveness::Alive;
    }
    let (process, host) = match identity.rsplit_once('@') {
        Some((process, host)) => (process, Some(host)),
        None => (identity, None),
    };
    if host.is_some_and(|h| h != host_name()) {
        return Liveness::Elsewhere;
    }
    let Some((boot, start)) = process.rsplit_once(':') else {
        return Liveness::Alive;
    };
    let running = boot == boot_id()
        && i32::try_from(pid)
            .ok()
            .and_then(proc_stat)
            .is_some_and(|s| !s.zombie && s.start.to_string() == start);
    if running {
        Liveness::Alive
    } else {
        Liveness::Dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_others_are_told_apart() {
        let me = std::process::id();
        let id = identity(me);
        assert!(id.contains('@'), "{id}");
        assert_eq!(liveness(me, &id), Liveness::Alive);
        // The same pid with another start time: a reused pid.
        let (process, host) = id.rsplit_once('@').unwrap();
        let (boot, _) = process.rsplit_once(':').unwrap();
        assert_eq!(liveness(me, &format!("{boot}:1@{host}")), Liveness::Dead);
        // Another boot of this host.
        assert_eq!(
            liveness(me, &format!("other-boot:1@{host}")),
            Liveness::Dead
        );
        // Another host.
        assert_eq!(
            liveness(me, &format!("{process}@not-{host}")),
            Liveness::Elsewhere
        );
        // An identity written before hosts were recorded.
        assert_eq!(liveness(me, process), Liveness::Alive);
        // No such process.
        assert_eq!(liveness(u32::MAX, &id), Liveness::Dead);
        assert_eq!(identity(u32::MAX), "");
        // Unknown identity: assumed alive.
        assert_eq!(liveness(u32::MAX, ""), Liveness::Alive);
    }

    #[test]
    fn a_child_that_exited_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = identity(child.id());
        child.wait().unwrap();
        assert_eq!(liveness(child.id(), &id), Liveness::Dead);
    }
}
