//! Opening the store named by `--db`, with the clock chosen by the environment.

use std::sync::Arc;
use std::time::Instant;

use afs_store::{Clock, ManualClock, SystemClock};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use crate::cli::GlobalArgs;
use crate::exit::InvalidInput;
use crate::time_arg::parse_timestamp;

/// Environment variable that pins the clock to a fixed time (a testing aid).
const NOW_VAR: &str = "AFS_NOW";

/// Whether a command may create the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Commands that add records (`log`, `import`) or the first model (`ab set-champion`)
    /// create a missing database.
    IfMissing,
    /// Every other command refuses a missing file instead of creating an empty one.
    Never,
}

/// How `AFS_NOW` sets the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pinned {
    /// Stopped at `AFS_NOW`: every command that does one thing.
    Stopped,
    /// Starting at `AFS_NOW` and running on with real time: `afs loop run`, which must see
    /// its check interval pass.
    Running,
}

/// The store settings for `--db` with the `[store]` section of the configuration applied;
/// for commands that read no other section. Fails like [`crate::config::load`].
pub(crate) fn configured(global: &GlobalArgs) -> anyhow::Result<SqliteConfig> {
    let config = crate::config::load(global.config.as_deref())?;
    Ok(config.sqlite_config(&global.db))
}

/// Opens the database configured by `config`.
pub(crate) fn open(config: SqliteConfig, create: Create) -> anyhow::Result<SqliteStore> {
    open_with(config, create, Pinned::Stopped)
}

/// Opens the database configured by `config`, with `AFS_NOW` read as `pinned` says.
pub(crate) fn open_with(
    config: SqliteConfig,
    create: Create,
    pinned: Pinned,
) -> anyhow::Result<SqliteStore> {
    let path = config.path.clone();
    if create == Create::Never && !path.exists() {
        bail!(
            "database {} does not exist (pass --db PATH or set AFS_DB; `afs log`, \
             `afs import` and `afs ab set-champion` create it)",
            path.display()
        );
    }
    let clock = clock_from_env(pinned)?;
    tracing::debug!(db = %path.display(), "opening store");
    SqliteStore::open(config, clock)
        .with_context(|| format!("cannot open database {}", path.display()))
}

/// The system clock, or a clock set to `AFS_NOW` when that is set.
fn clock_from_env(pinned: Pinned) -> anyhow::Result<Arc<dyn Clock>> {
    match std::env::var(NOW_VAR) {
        Ok(text) if !text.trim().is_empty() => {
            let now = parse_timestamp(text.trim())
                .map_err(|reason| InvalidInput(format!("invalid {NOW_VAR}: {reason}")))?;
            // A clock outside the range records may carry would date every record wrongly.
            afs_store::validate_time("AFS_NOW", now).map_err(|e| match e {
                afs_store::StoreError::InvalidInput { reason, .. } => {
                    InvalidInput(format!("invalid {NOW_VAR}: {reason}"))
                }
                other => InvalidInput(format!("invalid {NOW_VAR}: {other}")),
            })?;
            tracing::debug!(now = %now, ?pinned, "clock set by {NOW_VAR}");
            Ok(match pinned {
                Pinned::Stopped => Arc::new(ManualClock::new(now)),
                Pinned::Running => Arc::new(RunningClock {
                    start: now,
                    started: Instant::now(),
                }),
            })
        }
        _ => Ok(Arc::new(SystemClock)),
    }
}

/// A clock that starts at a given time and runs with real time.
#[derive(Debug)]
struct RunningClock {
    start: DateTime<Utc>,
    started: Instant,
}

impl Clock for RunningClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default();
        self.start + elapsed
    }
}
