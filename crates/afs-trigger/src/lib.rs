//! Retraining triggers and the retrainer: decides *when* to retrain and runs one retrain
//! safely.
//!
//! [`RetrainTrigger`] evaluates the enabled [`Trigger`] policies (sample count, schedule,
//! quality drop against a stored baseline, a Page-Hinkley change detector, error rate among
//! feedback, manual) from the store's aggregates — never scanning the log — and applies a
//! cooldown; all of its state lives in the store, so a restart neither re-triggers nor
//! forgets. [`AutoRetrainer`] turns a fired trigger into a recorded run: dataset generation
//! into a run directory, a [`Trainer`] (a closure or an external [`CommandTrainer`]), and
//! the run's final status, one run at a time per database.

mod checker;
mod config;
mod error;
mod page_hinkley;
mod policy;
mod recovery;
mod retrainer;
mod state;
mod supervise;
mod template;
mod trainer;

pub use checker::{
    record_retrain_started, record_retrain_succeeded, reset_after_promotion, RetrainTrigger,
    TriggerStore,
};
pub use config::{PageHinkleyConfig, RetrainerConfig, TriggerConfig};
pub use error::TriggerError;
pub use page_hinkley::PageHinkley;
pub use policy::{
    policies, CheckContext, ErrorRate, QualityChange, QualityDrop, SampleCount, Schedule, Trigger,
    TriggerResult, TriggerType,
};
pub use recovery::{recover_stale_runs, stop_orphaned_trainers, TRAINER_GROUP_FILE};
pub use retrainer::{AutoRetrainer, RetrainOutcome};
pub use state::{Baseline, TriggerState, STATE_KEY};
pub use supervise::{
    create_new, is_secret_env, run_supervised, tail, Ended, ShellCommand, SuperviseError,
    SECRET_ENV_WORDS, WATCHDOG_GRACE_SECS,
};
pub use template::{CommandTemplate, Placeholder, TemplateError};
pub use trainer::{
    parse_result, CommandTrainer, FnTrainer, TrainError, TrainJob, TrainOutput, Trainer,
    MAX_METRICS_BYTES, MAX_MODEL_PATH_BYTES, MAX_RESULT_BYTES,
};
