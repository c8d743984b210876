//! Recovery of runs whose owning process died: stop what is left of their trainer, then
//! record them as failed.

use std::path::Path;
use std::time::Duration;

use afs_store::{ErrorKind, RunOutcome, RunStatus, RunStore, StoreError};

use crate::supervise::read_group_file;

/// The file in a run directory that records the trainer's process group.
pub const TRAINER_GROUP_FILE: &str = "trainer.pid.json";

/// How long leftover trainer processes get between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Stops the trainers of running runs whose owning afs process is gone: the processes left
/// in the trainer's recorded process group ([`TRAINER_GROUP_FILE`]) get SIGTERM, then
/// SIGKILL after a few seconds, and the run is recorded as failed, saying so. A group id
/// that may have been reused (another boot, another leader) is left alone. Returns the ids
/// of the runs it failed.
pub fn stop_orphaned_trainers<S: RunStore + ?Sized>(store: &S) -> Result<Vec<String>, StoreError> {
    let mut failed = Vec::new();
    // Run history is small (one row per retrain) and running runs are the newest.
    for run in store.runs(100)? {
        if run.status != RunStatus::Running {
            continue;
        }
        let Some(record) = read_group_file(&Path::new(&run.run_dir).join(TRAINER_GROUP_FILE))
        else {
            continue;
        };
        if record.owner_pid != run.owner_pid || record.owner_alive() {
            continue;
        }
        let stopped = record.stop_survivors(LEFTOVER_GRACE);
        if stopped == 0 {
            continue; // Nothing left: the store's recovery records the run.
        }
        tracing::warn!(
            run = %run.id,
            pgid = record.pgid,
            stopped,
            "stopped the leftover trainer processes of a run whose process died"
        );
        let outcome = RunOutcome {
            status: RunStatus::Failed,
            model_path: None,
            metrics: None,
            error: Some(format!(
                "the process that ran it (pid {}) died before it finished; {stopped} leftover \
                 trainer process(es) (process group {}) were stopped",
                run.owner_pid, record.pgid
            )),
        };
        match store.finish_run(&run.id, outcome) {
            Ok(_) => failed.push(run.id),
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(failed)
}

/// [`RunStore::recover_stale_runs`], after [`stop_orphaned_trainers`]: a run whose process
/// died is recorded as failed only once nothing of its trainer runs any more. Returns the
/// ids of the runs recorded as failed.
pub fn recover_stale_runs<S: RunStore + ?Sized>(store: &S) -> Result<Vec<String>, StoreError> {
    let mut failed = stop_orphaned_trainers(store)?;
    failed.extend(store.recover_stale_runs()?);
    Ok(failed)
}
