//! Opening the store named by `--db`, with the clock chosen by the environment.

use std::path::Path;
use std::sync::Arc;

use afs_store::{Clock, ManualClock, SqliteConfig, SqliteStore, SystemClock};
use anyhow::{bail, Context};

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

/// The store settings for the database at `path`; callers read limits such as
/// `max_field_bytes` from it to validate input before opening anything.
pub(crate) fn config(path: &Path) -> SqliteConfig {
    SqliteConfig::new(path)
}

/// Opens the database configured by `config`.
pub(crate) fn open(config: SqliteConfig, create: Create) -> anyhow::Result<SqliteStore> {
    let path = config.path.clone();
    if create == Create::Never && !path.exists() {
        bail!(
            "database {} does not exist (pass --db PATH or set AFS_DB; `afs log`, \
             `afs import` and `afs ab set-champion` create it)",
            path.display()
        );
    }
    let clock = clock_from_env()?;
    tracing::debug!(db = %path.display(), "opening store");
    SqliteStore::open(config, clock)
        .with_context(|| format!("cannot open database {}", path.display()))
}

/// The system clock, or a clock pinned to `AFS_NOW` when that is set.
fn clock_from_env() -> anyhow::Result<Arc<dyn Clock>> {
    match std::env::var(NOW_VAR) {
        Ok(text) if !text.trim().is_empty() => {
            let now = parse_timestamp(text.trim())
                .map_err(|reason| InvalidInput(format!("invalid {NOW_VAR}: {reason}")))?;
            tracing::debug!(now = %now, "clock pinned by {NOW_VAR}");
            Ok(Arc::new(ManualClock::new(now)))
        }
        _ => Ok(Arc::new(SystemClock)),
    }
}
