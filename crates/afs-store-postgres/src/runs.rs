//! [`RunStore`] on PostgreSQL: retrain runs owned across hosts, and controller state.

use afs_store::{NewRun, Result, RetrainRun, RunOutcome, RunStatus, RunStore};

use crate::store::PgStore;

/// The runs this handle owns.
#[derive(Debug, Default)]
pub(crate) struct RunState {}

impl RunState {
    /// No runs yet.
    pub(crate) fn new() -> Self {
        RunState {}
    }
}

impl RunStore for PgStore {
    fn begin_run(&self, run: NewRun) -> Result<RetrainRun> {
        todo!("{run:?}")
    }

    fn set_run_dataset(
        &self,
        id: &str,
        dataset_path: &str,
        manifest: &str,
        n_samples: u64,
    ) -> Result<()> {
        todo!("{id}{dataset_path}{manifest}{n_samples}")
    }

    fn finish_run(&self, id: &str, outcome: RunOutcome) -> Result<RetrainRun> {
        todo!("{id}{outcome:?}")
    }

    fn run(&self, id: &str) -> Result<RetrainRun> {
        todo!("{id}")
    }

    fn runs(&self, limit: usize) -> Result<Vec<RetrainRun>> {
        todo!("{limit}")
    }

    fn last_run_with_status(&self, status: RunStatus) -> Result<Option<RetrainRun>> {
        todo!("{status:?}")
    }

    fn recover_stale_runs(&self) -> Result<Vec<String>> {
        todo!()
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        todo!("{key}")
    }

    fn put_states(&self, entries: &[(&str, &str)]) -> Result<()> {
        todo!("{entries:?}")
    }
}
