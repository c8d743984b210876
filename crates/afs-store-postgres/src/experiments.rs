//! [`ExperimentBackend`] on PostgreSQL: transactions over [`ExperimentTx`]; the rules are
//! afs-store's.

use afs_store::backend::{ExperimentBackend, ExperimentTx};
use afs_store::{Result, UnitCohort};
use chrono::{DateTime, Utc};

use crate::store::PgStore;

impl ExperimentBackend for PgStore {
    fn max_field_bytes(&self) -> usize {
        self.config.max_field_bytes
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>) -> Result<T> {
        let _ = f;
        todo!()
    }

    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn ExperimentTx) -> Result<T>,
    ) -> Result<T> {
        let _ = f;
        todo!("{what}")
    }

    fn unit_stats(
        &self,
        experiment_id: i64,
        feedback_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<UnitCohort>> {
        todo!("{experiment_id}{feedback_before:?}")
    }

    fn record_unit_covariates(&self, experiment_id: i64, since: DateTime<Utc>) -> Result<u64> {
        todo!("{experiment_id}{since}")
    }
}
