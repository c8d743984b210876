//! Opening the store named by `--db`, with the clock chosen by the environment.

use std::sync::Arc;
use std::time::Instant;

use afs_store::{Clock, ManualClock, SystemClock};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use crate::any_store::{AnyStore, StoreConfig};
use crate::cli::GlobalArgs;
use crate::exit::InvalidInput;
use crate::time_arg::parse_timestamp;

/// Environment variable that pins the clock to a fixed time (a testing aid).
const NOW_VAR: &str = "AFS_NOW";

/// Whether a command may create the database (a file, or afs's tables in a PostgreSQL
/// database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Commands that add records (`log`, `import`) or the first model (`ab set-champion`)
    /// create a missing database.
    IfMissing,
    /// Every other command refuses a missing file (or a PostgreSQL database without afs's
    /// tables) instead of creating an empty one.
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
pub(crate) fn configured(global: &GlobalArgs) -> anyhow::Result<StoreConfig> {
    let config = crate::config::load(global)?;
    Ok(config.store_config(&global.db))
}

/// Opens the database configured by `config`.
pub(crate) fn open(config: StoreConfig, create: Create) -> anyhow::Result<AnyStore> {
    open_with(config, create, Pinned::Stopped)
}

/// Opens the database configured by `config`, with `AFS_NOW` read as `pinned` says.
pub(crate) fn open_with(
    mut config: StoreConfig,
    create: Create,
    pinned: Pinned,
) -> anyhow::Result<AnyStore> {
    let shown = config.shown();
    match &mut config {
        StoreConfig::Sqlite(sqlite) => {
            if create == Create::Never && !sqlite.path.exists() {
                bail!(
                    "database {shown} does not exist (pass --db PATH or set AFS_DB; `afs log`, \
                     `afs import` and `afs ab set-champion` create it)"
                );
            }
        }
        StoreConfig::Postgres(pg) => pg.create_schema = create == Create::IfMissing,
    }
    let clock = clock_from_env(pinned)?;
    tracing::debug!(db = %shown, "opening store");
    match AnyStore::open(config, clock) {
        Ok(store) => Ok(store),
        Err(afs_store::StoreError::NotFound {
            what: "afs schema", ..
        }) => bail!(
            "database {shown} holds no afs data yet (`afs log`, `afs import` and \
             `afs ab set-champion` create afs's tables)"
        ),
        Err(err) => Err(err).with_context(|| format!("cannot open database {shown}")),
    }
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
