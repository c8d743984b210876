//! [`RunStore`] in memory: retrain runs and the key-value controller state.
//!
//! Ownership: every run is owned by this process (its pid is recorded, as SQLite records
//! it), and a store in memory lives no longer than this process, so a run is never left
//! `running` by a dead owner: [`RunStore::recover_stale_runs`] returns nothing, and a
//! `running` run blocks [`RunStore::begin_run`] until it is finished.

use afs_store::{new_id, NewRun, Result, RetrainRun, RunOutcome, RunStatus, RunStore, StoreError};

use crate::store::MemStore;

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "retrain run",
        id: id.to_string(),
    }
}

/// Runs newest first: by start time, then id (as SQLite orders them).
fn newest_first(runs: &mut [RetrainRun]) {
    runs.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.id.cmp(&a.id))
    });
}

impl RunStore for MemStore {
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun> {
        let now = self.now();
        let mut state = self.lock_write();
        if let Some(busy) = state.runs.values().find(|r| r.status == RunStatus::Running) {
            return Err(StoreError::Conflict {
                reason: format!(
                    "retrain run {} is already running (pid {})",
                    busy.id, busy.owner_pid
                ),
            });
        }
        let id = run.id.unwrap_or_else(|| new_id(now));
        if state.runs.contains_key(&id) {
            return Err(StoreError::Conflict {
                reason: format!("retrain run {id} already exists"),
            });
        }
        let stored = RetrainRun {
            id: id.clone(),
            started_at: now,
            finished_at: None,
            status: RunStatus::Running,
            trigger_type: run.trigger_type,
            trigger: run.trigger,
            run_dir: run.run_dir,
            dataset_manifest: None,
            dataset_path: None,
            n_samples: None,
            model_path: None,
            metrics: None,
            error: None,
            owner_pid: std::process::id(),
        };
        state.runs.insert(id, stored.clone());
        Ok(stored)
    }

    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()> {
        let mut state = self.lock_write();
        let run = state.runs.get_mut(id).ok_or_else(|| not_found(id))?;
        if run.status != RunStatus::Running {
            return Err(StoreError::run_not_running(id));
        }
        run.dataset_path = Some(dataset_path.to_string());
        run.dataset_manifest = Some(manifest.to_string());
        run.n_samples = Some(n_samples);
        Ok(())
    }

    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun> {
        outcome.check_final()?;
        let now = self.now();
        let mut state = self.lock_write();
        let run = state.runs.get_mut(id).ok_or_else(|| not_found(id))?;
        if run.status != RunStatus::Running {
            return Err(StoreError::Conflict {
                reason: format!(
                    "retrain run {id} already finished as {}",
                    run.status.as_str()
                ),
            });
        }
        run.status = outcome.status;
        run.finished_at = Some(now);
        run.model_path = outcome.model_path;
        run.metrics = outcome.metrics;
        run.error = outcome.error;
        Ok(run.clone())
    }

    fn run(&self, id: &str) -> Result<RetrainRun> {
        self.lock_read()
            .runs
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>> {
        let mut runs: Vec<RetrainRun> = self.lock_read().runs.values().cloned().collect();
        newest_first(&mut runs);
        runs.truncate(limit);
        Ok(runs)
    }

    fn count_runs(&self, status: RunStatus) -> Result<u64> {
        Ok(self
            .lock_read()
            .runs
            .values()
            .filter(|r| r.status == status)
            .count() as u64)
    }

    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>> {
        let mut runs: Vec<RetrainRun> = self
            .lock_read()
            .runs
            .values()
            .filter(|r| r.status == status)
            .cloned()
            .collect();
        newest_first(&mut runs);
        Ok(runs.into_iter().next())
    }

    /// Nothing to recover: runs are owned by this process, which holds the store.
    fn recover_stale_runs(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock_read().kv.get(key).cloned())
    }

    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()> {
        if entries.iter().any(|(key, _)| key.is_empty()) {
            return Err(StoreError::InvalidInput {
                field: "key",
                reason: "must not be empty".into(),
            });
        }
        let mut state = self.lock_write();
        for (key, value) in entries {
            state.kv.insert((*key).to_string(), (*value).to_string());
        }
        Ok(())
    }
}
