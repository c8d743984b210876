//! The SQLite backend of the afs store ([`SqliteStore`]): [`UsageStore`], `RunStore` and
//! `ExperimentStore` (through `afs_store::backend`) on one file, in WAL mode, with a
//! connection pool for reads and short writes and one writer thread that commits concurrent
//! `log` calls in groups.
//!
//! # How it works
//!
//! - **One SQLite file**, WAL mode, an r2d2 connection pool for reads and short writes.
//! - **Versioned migrations** tracked in `PRAGMA user_version`. Columns are added, never
//!   renamed or dropped.
//! - **Seed compatibility:** a `usage.db` written by the Python module migrates in place with
//!   every row kept. The `usage` table keeps every seed column with its name and meaning; the
//!   new column `ts_us` (UTC microseconds since the epoch) is derived from the seed's
//!   local-time ISO timestamps during the migration.
//! - **Rollups:** three tables hold, per model per day, per hour and per minute, the counts and
//!   sums a statistic needs (count, Σquality, Σquality², feedback up/down/neutral counts,
//!   latency sums and squares, token sums), keyed by (bucket, model). A fourth, small table,
//!   `usage_rollup_recent`, holds pending deltas keyed by (level, bucket, model); a bucket's
//!   true value is its row in its table plus its pending delta, and readers sum both. A
//!   single-record commit adds its contribution to the pending deltas (the current minute,
//!   hour and day of a model share one page), and the writer folds the closed buckets into the
//!   three tables about once a minute, in the transaction of the first commit of a new minute.
//!   Batches (`log_batch`, import) add straight to the three tables, once per model and bucket
//!   of the transaction. SQLite triggers add a delta for every update and delete of `usage`
//!   (feedback, quality updates, dedupe, prune, forget) and for rows inserted by the Python
//!   module. Bulk deletes (dedupe, prune, forget) do not trust that arithmetic: they
//!   recompute every bucket they touched from the records that remain, so a deletion never
//!   fails on, or leaves residue in, the sums. A batch of quality scores silences the update
//!   trigger (a flag row inside its own transaction, schema v8) and adds one delta per bucket
//!   instead of six upserts per record. A window reads whole days, then whole hours and whole
//!   minutes at its ends, and scans only the partial minutes at its edges; an end after the
//!   newest record is open (its last buckets are read whole), so only a start or end inside a
//!   minute that records arrived in costs a scan; what each consumer asks for is tabled in
//!   docs/ARCHITECTURE.md.
//!   The log stays the source of truth: `rebuild_rollups` re-derives the tables.
//! - **Rows in time order, few indexes:** since schema v5 a row's rowid is
//!   `ts_us × 1024 + n` (up to 1,024 records per microsecond; a record that finds its
//!   microsecond full moves to the next one, its timestamp with it). The table is its own time
//!   index: a time range is a rowid range, and a commit of one record writes three pages
//!   (the row, its `id` key, one page of pending rollup deltas) instead of the six it wrote
//!   with a separate time index and three rollup tables. The indexes are the primary key on
//!   `id` and a partial index `usage_feedback_ts` on (time, feedback, quality) of records
//!   with feedback: what training data reads, in time order, skipping the rows whose feedback
//!   or stored quality fails the filter without reading them; logging a record without
//!   feedback does not touch it. Queries by
//!   model or unit walk the table in time order and filter; `forget --unit` scans the table
//!   (a rare operation). Migration 5 renumbers older rows in time order and keeps any index
//!   the Python module created.
//! - **Page size:** new files use 8 KiB pages; with ~1.5 KB rows, 4 KiB pages leave a quarter
//!   of each page empty. Files migrated from the Python module keep their page size.
//! - **Ids are ULIDs** (time-ordered, 48-bit milliseconds + 80 random bits).
//! - **Time is injected:** every timestamp comes from a `Clock`; tests use `ManualClock`.
//! - **Group commit:** a `log` call queues its row; if no other caller is committing, it
//!   becomes the leader and commits every queued row in one transaction, then wakes the
//!   callers whose rows it held. Each caller returns only once its record is committed. A new
//!   leader first yields its CPU (up to three times) while callers already inside `log` have
//!   not queued their rows: on a 2-core machine it would otherwise commit its own row alone,
//!   again and again, before the others ran. WAL
//!   checkpoints run on a background thread with its own connection: passive checkpoints copy
//!   frames while commits go on, and once the WAL holds 64 MB the thread finishes one while
//!   holding the process's write connection, so the next commit rewinds the WAL. The write
//!   connection checkpoints itself only if a commit finds the WAL at 80 MB (SQLite's WAL
//!   hook reports its size after each commit): on a machine too busy to run that thread.
//! - **Retrain runs and controller state** (`RunStore`, schema v4): the `retrain_runs` table
//!   (one row per run, at most one `running`, checked in an immediate transaction; a run
//!   whose owner process died — pid plus process start time — is marked failed) and the
//!   `afs_state` key/value table for trigger state.
//! - **Experiments** (`ExperimentStore`, schema v3): model versions, experiments, periods and
//!   the decision log of the abtest layer.
//! - **Per-unit experiment statistics** (schema v7, `src/units.rs`): what
//!   `ExperimentStore::unit_stats` returns, kept exact on every write while an experiment
//!   runs. `experiment_live` names the running experiment's two models; triggers on `usage`
//!   (insert, the Python module's `ts_us` update, feedback and quality updates, deletes) look
//!   a record's model up there (one lookup for other models) and keep `experiment_unit` (per
//!   unit and arm: sums, first record time, cohort period, moved flag, covariate means) and
//!   `experiment_loose` (records without a unit id, per period and arm). A changed unit row is
//!   marked dirty (partial index). `experiment_cohort` holds every sum of a `UnitCohort` per
//!   period and arm as of the last *fold*; the writer folds (subtracts each dirty row's
//!   contribution as of its last fold, kept in its `f_*` columns, and adds its current one)
//!   once a minute with the pending rollup deltas, and a batch (`log_batch`, import, the
//!   HTTP batch endpoint) folds the rows it changed in its own transaction. `unit_stats`
//!   writes nothing: in one read transaction it reads the cohort rows and adds the dirty
//!   rows' changes since their last fold, grouped by period and arm, so a look costs a pass
//!   over at most a minute's worth of changed units and never waits for the write lock
//!   behind a burst of logging (it used to fold in a write transaction of its own: in the
//!   burst bench the first look after a burst spent 5.0 ms folding 53 rows). Logging writes
//!   the unit's row but no cohort row (the cohort page per commit cost ~35% of
//!   single-record logging). Other short writes of a process that logs run on its write connection between group commits
//!   (a leader about to commit lets a waiting one in first: the connection's mutex is not fair);
//!   other processes wait for the lock with a busy handler that retries every 100-400 us
//!   (SQLite's own sleeps grow to 100 ms, which behind a busy writer cost a check tens to
//!   hundreds of milliseconds). With a maturity cut it also reads the records with feedback after the cut (partial
//!   index) and their units' rows.
//!   `record_unit_covariates` stores each unit's look-back sums (`experiment_unit_pre`, one
//!   grouped read of the window's rowid range). Removing a unit's first record walks the log
//!   forward to its next one. Promote and rollback delete the live rows: an ended experiment
//!   keeps its statistics as they stood; `forget --unit` removes the unit's rows everywhere.
//! - Reads stream in keyset-paginated pages: memory stays bounded whatever the log's size.
//!   Pages start at 64 rows and grow to 2,048 (`Paging::Growing`, so the first record comes
//!   quickly); a caller that reads everything, as generation does for its slices, asks for
//!   2,048-row pages from the start (`Paging::Bulk`: one query, and one mapping of the file,
//!   per slice). Pages of 64 rows or more are read through a memory map of the file (`PRAGMA
//!   mmap_size`) that is dropped after the page. Records with feedback lie about one per
//!   8 KiB page, so a generation run touches about half the file either way; mapping it and
//!   copying it page by page cost about the same time (measured with bulk pages), and the map
//!   keeps no copies of the pages in SQLite's cache. The map never outlives a page, so the
//!   file's pages do not pile up in the process's resident memory. A query can ask for the
//!   training fields only (`RecordFields::Training`).
//! - **Pair keys** (schema v6): every record afs writes carries `pair_key`, the BLAKE3 key (32
//!   bytes, the design's dedupe key) of its query and response after normalisation
//!   (lowercase, whitespace collapsed; see `afs_store::key`), computed in the logging thread.
//!   Training-data generation dedupes on it instead of hashing every candidate again; rows
//!   without one (written before v6 or by the Python module, or with the 16-byte keys of a
//!   development build of v6) are hashed during generation with the same function. 33 bytes
//!   per record.
//! - **Conversations** (schema v10): a multi-turn record keeps its turns in the nullable
//!   `messages` column as a JSON array of `{role, content}`; its `query` and `response` still
//!   hold the last user turn and the final answer, so the Python module and single-turn
//!   readers see the call's last exchange. Its `dedupe_hash` and `pair_key` cover every turn.
//! - **SQLite build options:** the bundled SQLite is compiled without
//!   `SQLITE_ENABLE_MEMORY_MANAGEMENT` and without memory statistics (`LIBSQLITE3_FLAGS` in
//!   `.cargo/config.toml`). With the option, which rusqlite's bundled build sets, every
//!   connection of a process shares one page cache behind one mutex, and afs-datagen's reader
//!   threads queued on it for every page they read.

mod experiments;
mod lease;
mod migrations;
mod restore;
mod rows;
mod runs;
mod stream;
mod time;
mod units;
mod window;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use afs_store::Clock;
use afs_store::UsageStats;
use afs_store::{
    validate_feedback_text, validate_qualities, validate_quality, validate_time, FeedbackValue,
    NewUsage, UsageRecord, DEFAULT_MAX_FIELD_BYTES,
};
use afs_store::{DedupeReport, PruneReport, RecordStream, UsageStore};
use afs_store::{RecordFilter, StatsWindow};
use afs_store::{Result, StoreError};

pub use migrations::SCHEMA_VERSION;
use rows::{InsertRow, RECORD_COLUMNS};
use time::{micros_of, rfc3339};
use writer::Writer;

/// How hard SQLite syncs to disk on commit (`"normal"` or `"full"` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// `synchronous=NORMAL` in WAL mode: a committed write survives a crash of the process;
    /// the last commits before a power loss or OS crash may be rolled back. Much faster.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk before it returns.
    Full,
}

/// Settings of a [`SqliteStore`].
///
/// Its settings other than the file are also the `[store]` section of the afs config file:
/// `busy_timeout_ms` (milliseconds), `max_field_bytes`, `synchronous` and `pool_size`, each
/// optional (an absent key keeps its default), an unknown key refused.
/// [`SqliteConfig::validate`] checks the ranges.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; created (with its directory) when missing. Not a config key (it
    /// is `--db`).
    #[serde(skip)]
    pub path: PathBuf,
    /// How long to wait for another connection's or process's lock before failing (the key
    /// `busy_timeout_ms`, at most an hour).
    #[serde(rename = "busy_timeout_ms", with = "millis")]
    pub busy_timeout: Duration,
    /// Limit on any one text field, in bytes (1024 up to [`MAX_FIELD_BYTES_LIMIT`]).
    pub max_field_bytes: usize,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// Connections in the pool (readers and short writers), 1 to 64.
    pub pool_size: u32,
}

/// Largest [`SqliteConfig::max_field_bytes`]: SQLite's own limit on a text value.
pub const MAX_FIELD_BYTES_LIMIT: usize = 1_000_000_000;

/// Longest [`SqliteConfig::busy_timeout`]: an hour.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration as whole milliseconds (`busy_timeout_ms`).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Default for SqliteConfig {
    /// The defaults of [`SqliteConfig::new`] with no file yet (set `path` before opening).
    fn default() -> Self {
        SqliteConfig::new(PathBuf::new())
    }
}

impl SqliteConfig {
    /// Defaults for a database at `path`: 1 MiB field limit, 30 s busy timeout, 8 connections,
    /// `synchronous=NORMAL`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            busy_timeout: Duration::from_secs(30),
            pool_size: 8,
            synchronous: Synchronous::Normal,
        }
    }

    /// Checks the settings' ranges; an error names the config key (`busy_timeout_ms`,
    /// `max_field_bytes`, `pool_size`).
    pub fn validate(&self) -> Result<()> {
        if self.busy_timeout > MAX_BUSY_TIMEOUT {
            return Err(StoreError::invalid(
                "busy_timeout_ms",
                format!(
                    "{} is more than an hour ({})",
                    self.busy_timeout.as_millis(),
                    MAX_BUSY_TIMEOUT.as_millis()
                ),
            ));
        }
        if !(1024..=MAX_FIELD_BYTES_LIMIT).contains(&self.max_field_bytes) {
            return Err(StoreError::invalid(
                "max_field_bytes",
                format!(
                    "{} is not within 1024..={MAX_FIELD_BYTES_LIMIT}",
                    self.max_field_bytes
                ),
            ));
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(StoreError::invalid(
                "pool_size",
                format!("{} is not within 1..=64", self.pool_size),
            ));
        }
        Ok(())
    }
}

/// The embedded SQLite usage store.
pub struct SqliteStore {
    config: SqliteConfig,
    clock: Arc<dyn Clock>,
    pool: Pool<SqliteConnectionManager>,
    writer: OnceLock<Writer>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

/// Longest busy timeout asked of any store in this process, in milliseconds: what
/// [`busy_wait`] waits for (a busy handler is a plain function, so it cannot carry it).
static BUSY_TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

/// SQLite's busy handler: called with the number of earlier calls while another connection
/// holds the lock; sleeping then trying again returns `true`. SQLite's own timeout handler
/// sleeps 1, 2, 5, 10 ... then 100 ms between tries, so behind a writer that commits every
/// few milliseconds (a service logging thousands of records a second) a reader that wants to
/// write misses the short gaps between commits and waits tens or hundreds of milliseconds.
/// This one tries every 100-400 us for the first ~50 ms, then every 2 ms, up to the timeout.
fn busy_wait(calls: i32) -> bool {
    use std::sync::atomic::Ordering;
    let calls = u64::try_from(calls).unwrap_or(0);
    let limit = BUSY_TIMEOUT_MS.load(Ordering::Relaxed);
    let (waited_us, pause_us) = if calls < 200 {
        (calls * 250, 100 + (calls % 4) * 100)
    } else {
        (50_000 + (calls - 200) * 2_000, 2_000)
    };
    if waited_us / 1_000 >= limit {
        return false;
    }
    std::thread::sleep(Duration::from_micros(pause_us));
    true
}

pub(crate) fn configure(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<()> {
    let ms = u64::try_from(config.busy_timeout.as_millis()).unwrap_or(u64::MAX);
    BUSY_TIMEOUT_MS.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    conn.busy_handler(Some(busy_wait))?;
    let sync = match config.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // SQLite's auto-checkpoint (after any commit that leaves 1,000 frames in the WAL) made a
    // short write on a pooled connection (a check's decision, a trigger's state) copy and
    // sync the WAL that a logging process wrote, in the caller's time: `afs ab check` beside
    // `afs serve` logging ~11k records/s (8 connections) took 45-190 ms, and 39-48 ms
    // without it. Checkpoints are the writer's checkpoint thread's work
    // (`writer::Checkpointer`); a pooled connection only steps in at the writer's own hard
    // cap, and the last connection to close checkpoints anyway.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16000; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = {};",
        writer::HARD_CAP_FRAMES
    ))
}

pub(crate) fn open_connection(config: &SqliteConfig) -> Result<Connection> {
    let conn = Connection::open(&config.path)
        .map_err(|e| crate::db(format!("open {}", config.path.display()), e))?;
    configure(&conn, config).map_err(|e| crate::db("configure connection", e))?;
    Ok(conn)
}

/// Checks that the file at `config.path` is an afs database, a Python module `usage.db`, an
/// empty file or absent, without writing to it; then sets up a new file (page size, WAL)
/// and migrates it to [`SCHEMA_VERSION`].
fn prepare_file(config: &SqliteConfig) -> Result<()> {
    check_header(&config.path)?;
    let mut conn = open_connection(config)?;
    identify(&conn, &config.path)?;
    // A new file gets 8 KiB pages: with ~1.5 KB rows, 4 KiB pages leave a quarter of each
    // page empty. The page size can only be chosen before the first table exists.
    let n_pages: i64 = conn
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .map_err(|e| crate::db("read page count", e))?;
    if n_pages == 0 {
        conn.execute_batch("PRAGMA page_size = 8192")
            .map_err(|e| crate::db("set page size", e))?;
    }
    // WAL lets readers run while one writer commits; switching needs a brief exclusive
    // lock, which the busy timeout waits for when other processes hold the file.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| crate::db("enable WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "database is not in WAL mode; concurrent access will be slower");
    }
    migrations::migrate(&mut conn)
}

/// Whether `e` is SQLite reporting a lock held by another connection.
fn is_busy(e: &StoreError) -> bool {
    let StoreError::Database { source, .. } = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<rusqlite::Error>(),
        Some(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The error for a file afs will not open, which it has left as it found it.
fn not_afs(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::NotAfsDatabase {
        path: path.to_path_buf(),
        reason: why.to_string(),
    }
}

/// Refuses a non-empty file that is not an SQLite database, reading only its first bytes.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("open {}", path.display()),
                source: e,
            })
        }
    };
    let metadata = file.metadata().map_err(|e| StoreError::Io {
        context: format!("read {}", path.display()),
        source: e,
    })?;
    if !metadata.is_file() {
        return Err(not_afs(path, "it is not a regular file"));
    }
    let mut header = [0u8; 16];
    let mut n = 0;
    while n < header.len() {
        match file.read(&mut header[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("read {}", path.display()),
                    source: e,
                })
            }
        }
    }
    if n == 0 {
        return Ok(());
    }
    if n < header.len() || header[..] != b"SQLite format 3\0"[..] {
        return Err(not_afs(path, "it is not an SQLite database"));
    }
    Ok(())
}

/// The columns of the Python module's `usage` table (schema version 1).
const SEED_COLUMNS: &[&str] = &[
    "id",
    "timestamp",
    "query",
    "response",
    "model",
    "expert",
    "latency_ms",
    "token_count",
    "quality_score",
    "user_feedback",
    "feedback_text",
    "context_hash",
    "dedupe_hash",
    "created_at",
];

/// Refuses, by reading only, an SQLite database that belongs to another application: one
/// with tables afs did not create, or a `usage` table of another shape. An empty database
/// is new; one at a schema version of afs is afs's; one at version 0 holding only the
/// Python module's `usage` table is migrated.
fn identify(conn: &Connection, path: &Path) -> Result<()> {
    let read = |e| crate::db(format!("read the schema of {}", path.display()), e);
    // One read transaction: the version and the tables from one snapshot. Read apart, a
    // process could see version 0 and then the tables another process's migration had
    // just committed, and take a new afs database for another application's.
    let snapshot = conn.unchecked_transaction().map_err(read)?;
    let conn: &Connection = &snapshot;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(read)?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(read)?;
    if tables.is_empty() {
        return Ok(());
    }
    if !tables.iter().any(|t| t == "usage") {
        return Err(not_afs(
            path,
            format!("it holds tables of another application ({})", list(&tables)),
        ));
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('usage')")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(read)?;
    let missing: Vec<&str> = SEED_COLUMNS
        .iter()
        .copied()
        .filter(|c| !columns.iter().any(|have| have == c))
        .collect();
    if !missing.is_empty() {
        return Err(not_afs(
            path,
            format!(
                "its usage table is not afs's (no column {})",
                missing.join(", ")
            ),
        ));
    }
    if version == 0 {
        let others: Vec<String> = tables.into_iter().filter(|t| t != "usage").collect();
        if !others.is_empty() {
            return Err(not_afs(
                path,
                format!(
                    "beside a usage table it holds tables afs does not know ({})",
                    list(&others)
                ),
            ));
        }
    }
    Ok(())
}

/// Up to five names, then how many more.
fn list(names: &[String]) -> String {
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        text.push_str(&format!(" and {} more", names.len() - 5));
    }
    text
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `config.path`.
    ///
    /// A database written by the Python module is migrated in place with every row kept.
    pub fn open(config: SqliteConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                context: format!("create directory {}", dir.display()),
                source: e,
            })?;
        }
        // Several processes may open (and create) a new file at once. SQLite does not apply
        // its busy timeout everywhere a new file can be locked (switching to WAL while
        // another connection is starting up, for one), so the whole preparation is retried
        // while it reports a lock, up to the busy timeout.
        let deadline = std::time::Instant::now() + config.busy_timeout;
        let mut attempt = 0u32;
        loop {
            match prepare_file(&config) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    attempt += 1;
                    // 2, 4, 8 ... up to 64 ms, shifted by the pid so that processes that
                    // collided once do not collide again in step.
                    let base = 1u64 << attempt.min(6);
                    let jitter = u64::from(std::process::id() % 7);
                    std::thread::sleep(Duration::from_millis(base + jitter));
                }
                Err(e) => return Err(e),
            }
        }

        let init_config = config.clone();
        let manager = SqliteConnectionManager::file(&config.path)
            .with_init(move |c| configure(c, &init_config));
        let pool = Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(config.busy_timeout)
            .build(manager)
            .map_err(|e| crate::db("create connection pool", e))?;
        Ok(SqliteStore {
            config,
            clock,
            pool,
            writer: OnceLock::new(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The settings this store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    pub(crate) fn conn(&self) -> Result<PooledConnection<SqliteConnectionManager>> {
        self.pool
            .get()
            .map_err(|e| crate::db("get a connection from the pool", e))
    }

    fn writer(&self) -> Result<&Writer> {
        if let Some(w) = self.writer.get() {
            return Ok(w);
        }
        let started = Writer::start(&self.config)?;
        // Another thread may have won the race; its writer is used and ours is dropped.
        let _ = self.writer.set(started);
        Ok(self.writer.get().expect("writer was just set"))
    }

    /// A record without a timestamp (or feedback without a time) takes the clock's time,
    /// which must then lie in the range a record may carry.
    fn check_clock(&self, record: &NewUsage) -> Result<()> {
        let needs_clock =
            record.timestamp.is_none() || matches!(&record.feedback, Some(f) if f.at.is_none());
        if needs_clock {
            validate_time("timestamp", self.clock.now()).map_err(|e| StoreError::bad_clock(&e))?;
        }
        Ok(())
    }

    /// Runs `f` in an immediate (write) transaction: on this process's write connection when
    /// its writer runs (so it queues behind the group commit in progress, see
    /// [`Writer::with_conn`]), else on a pooled connection.
    pub(crate) fn write_txn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let run = |conn: &mut Connection| immediate(conn, what, f);
        match self.writer.get() {
            Some(writer) => writer.with_conn(run),
            None => run(&mut *self.conn()?),
        }
    }

    /// Runs `f` in an immediate transaction on the write connection, starting the writer if
    /// this process has none: for a write of many scattered pages, whose commit on a pooled
    /// connection would also checkpoint the whole write-ahead log in the caller's time
    /// (SQLite's auto-checkpoint), where the writer's checkpointer does it on its own thread.
    pub(crate) fn bulk_write_txn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.writer()?.with_conn(|conn| immediate(conn, what, f))
    }

    fn prepare(&self, record: NewUsage) -> InsertRow {
        InsertRow::new(record, self.clock.now())
    }

    fn update_one(
        &self,
        context: &str,
        sql: &str,
        id: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        // Cached: preparing an UPDATE of `usage` compiles every trigger it fires (the
        // rollups' and, since schema 7, the per-unit statistics'), which cost more than the
        // update itself when feedback arrives one call at a time.
        let run = |conn: &mut Connection| {
            conn.prepare_cached(sql)
                .and_then(|mut stmt| stmt.execute(params))
                .map_err(|e| crate::db(context, e))
        };
        // On the write connection when this process logs: the update waits for the group
        // commit in progress on a mutex, and never runs a checkpoint in its own commit.
        let changed = match self.writer.get() {
            Some(writer) => writer.with_conn(run)?,
            None => run(&mut *self.conn()?)?,
        };
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "usage record",
                id: id.to_string(),
            });
        }
        Ok(())
    }
}

/// Runs `f` in an immediate (write) transaction on `conn` and commits it; an error rolls it
/// back.
fn immediate<T>(
    conn: &mut Connection,
    what: &str,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| crate::db(format!("begin {what}"), e))?;
    let value = f(&tx)?;
    tx.commit()
        .map_err(|e| crate::db(format!("commit {what}"), e))?;
    Ok(value)
}

/// A [`StoreError::Database`] from a driver error. An error in a statement carries the
/// statement's whole text (kilobytes for a migration or a trigger); the message is what a
/// user can act on, so the text is dropped.
pub(crate) fn db(
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    let mut source: Box<dyn std::error::Error + Send + Sync> = Box::new(source);
    if let Some(rusqlite::Error::SqlInputError { error, msg, .. }) =
        source.downcast_ref::<rusqlite::Error>()
    {
        source = Box::new(rusqlite::Error::SqliteFailure(*error, Some(msg.clone())));
    }
    StoreError::Database {
        context: context.into(),
        source,
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.shutdown();
        }
    }
}

impl UsageStore for SqliteStore {
    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn log(&self, record: NewUsage) -> Result<String> {
        record.validate(self.config.max_field_bytes)?;
        self.check_clock(&record)?;
        let row = self.prepare(record);
        self.writer()?.log(row)
    }

    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        for (index, record) in records.iter().enumerate() {
            record
                .validate(self.config.max_field_bytes)
                .and_then(|()| self.check_clock(record))
                .map_err(|e| StoreError::InvalidBatchRecord {
                    index,
                    source: Box::new(e),
                })?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<InsertRow> = records.into_iter().map(|r| self.prepare(r)).collect();
        self.writer()?.log_batch(rows)
    }

    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()> {
        validate_feedback_text(text, self.config.max_field_bytes)?;
        let now = self.clock.now();
        validate_time("feedback_at", now).map_err(|e| StoreError::bad_clock(&e))?;
        let at = rfc3339(now);
        self.update_one(
            "record feedback",
            "UPDATE usage SET user_feedback = ?1, feedback_text = ?2, feedback_at = ?3 WHERE id = ?4",
            id,
            &[&value.as_i64(), &text, &at, &id],
        )
    }

    fn update_quality(&self, id: &str, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        self.update_one(
            "update quality score",
            "UPDATE usage SET quality_score = ?1 WHERE id = ?2",
            id,
            &[&quality, &id],
        )
    }

    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()> {
        const CONTEXT: &str = "update quality scores";
        validate_qualities(scores)?;
        if scores.is_empty() {
            return Ok(());
        }
        // On the write connection: the checkpoint of the pages changed runs on the writer's
        // own thread, not in this commit.
        self.bulk_write_txn(CONTEXT, |tx| {
            // The rollups are kept here, not by the update trigger (which would make six upserts
            // per record): the flag row silences it for this transaction only, and the deltas
            // are summed per bucket and added once each.
            let bulk = format!("INSERT INTO {} (id) VALUES (1)", migrations::BULK_WRITE);
            tx.execute(&bulk, []).map_err(|e| crate::db(CONTEXT, e))?;
            let mut deltas: BTreeMap<(i64, i64, String), [f64; 3]> = BTreeMap::new();
            {
                let mut read = tx
                    .prepare_cached(
                        "SELECT rowid, model, ts_us, quality_score FROM usage WHERE id = ?1",
                    )
                    .map_err(|e| crate::db(CONTEXT, e))?;
                let mut write = tx
                    .prepare_cached("UPDATE usage SET quality_score = ?1 WHERE rowid = ?2")
                    .map_err(|e| crate::db(CONTEXT, e))?;
                for (id, quality) in scores {
                    let row: Option<(i64, String, Option<i64>, Option<f64>)> = read
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()
                        .map_err(|e| crate::db(CONTEXT, e))?;
                    let Some((rowid, model, ts_us, old)) = row else {
                        // Dropping the transaction rolls back what this batch changed so far.
                        return Err(StoreError::NotFound {
                            what: "usage record",
                            id: id.clone(),
                        });
                    };
                    write
                        .execute(params![quality, rowid])
                        .map_err(|e| crate::db(CONTEXT, e))?;
                    let Some(ts_us) = ts_us else { continue };
                    let delta = [
                        1.0 - f64::from(u8::from(old.is_some())),
                        quality - old.unwrap_or(0.0),
                        quality * quality - old.map_or(0.0, |q| q * q),
                    ];
                    for table in migrations::ROLLUP_TABLES {
                        let sums = deltas
                            .entry((table.level(), ts_us / table.width_us, model.clone()))
                            .or_insert([0.0; 3]);
                        for (sum, d) in sums.iter_mut().zip(delta) {
                            *sum += d;
                        }
                    }
                }
                let mut upsert = tx
                    .prepare_cached(&migrations::recent_upsert_sql())
                    .map_err(|e| crate::db(CONTEXT, e))?;
                for ((level, bucket, model), [n, sum, sum_sq]) in deltas {
                    let mut values: Vec<rusqlite::types::Value> =
                        vec![level.into(), bucket.into(), model.into()];
                    for i in 0..migrations::N_ROLLUP_COLUMNS {
                        values.push(match i {
                            migrations::COL_N_QUALITY => (n.round() as i64).into(),
                            migrations::COL_SUM_Q => sum.into(),
                            migrations::COL_SUM_Q2 => sum_sq.into(),
                            i if migrations::rollup_column_is_real(i) => 0.0.into(),
                            _ => 0i64.into(),
                        });
                    }
                    upsert
                        .execute(rusqlite::params_from_iter(values))
                        .map_err(|e| crate::db(CONTEXT, e))?;
                }
            }
            let unflag = format!("DELETE FROM {}", migrations::BULK_WRITE);
            tx.execute(&unflag, []).map_err(|e| crate::db(CONTEXT, e))?;
            Ok(())
        })
    }

    fn get(&self, id: &str) -> Result<UsageRecord> {
        let conn = self.conn()?;
        let sql = format!("SELECT {RECORD_COLUMNS} FROM usage WHERE id = ?1");
        let mut stmt = conn
            .prepare_cached(&sql)
            .map_err(|e| crate::db("get record", e))?;
        stmt.query_row([id], rows::record_from_row)
            .optional()
            .map_err(|e| crate::db("get record", e))?
            .ok_or_else(|| StoreError::NotFound {
                what: "usage record",
                id: id.to_string(),
            })
    }

    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>> {
        if let Some(q) = filter.min_quality {
            if !q.is_finite() {
                return Err(StoreError::invalid(
                    "min_quality",
                    format!("{q} is not a finite number"),
                ));
            }
        }
        Ok(Box::new(stream::record_pages(self, filter.clone())))
    }

    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>> {
        let conn = self.conn()?;
        window::stats_grouped(&conn, window, window::Grouping::Model).map(|groups| {
            groups
                .into_iter()
                .map(|(key, stats)| (key.model, stats))
                .collect()
        })
    }

    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>> {
        let conn = self.conn()?;
        window::stats_grouped(&conn, window, window::Grouping::Hour).map(|groups| {
            groups
                .into_iter()
                .map(|(key, stats)| (key.hour_start(), stats))
                .collect()
        })
    }

    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin dedupe", e))?;
        // Rank each group's rows newest first; every row ranked below 1 is a duplicate.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS dedupe_victims (rid INTEGER PRIMARY KEY);
             DELETE FROM dedupe_victims;
             INSERT INTO dedupe_victims (rid)
             SELECT rid FROM (
                 SELECT rowid AS rid, ROW_NUMBER() OVER (
                     PARTITION BY dedupe_hash ORDER BY ts_us DESC, rowid DESC) AS rank
                 FROM usage WHERE dedupe_hash IS NOT NULL)
             WHERE rank > 1;",
        )
        .map_err(|e| crate::db("find duplicates", e))?;
        let (removed, duplicate_groups): (i64, i64) = tx
            .query_row(
                "SELECT (SELECT COUNT(*) FROM dedupe_victims),
                        (SELECT COUNT(DISTINCT dedupe_hash) FROM usage
                         WHERE rowid IN (SELECT rid FROM dedupe_victims))",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| crate::db("count duplicates", e))?;
        if !dry_run {
            tx.execute(
                "DELETE FROM usage WHERE rowid IN (SELECT rid FROM dedupe_victims)",
                [],
            )
            .map_err(|e| crate::db("delete duplicates", e))?;
            migrations::refresh_pending(&tx)?;
        }
        tx.execute("DELETE FROM dedupe_victims", [])
            .map_err(|e| crate::db("dedupe cleanup", e))?;
        tx.commit().map_err(|e| crate::db("commit dedupe", e))?;
        Ok(DedupeReport {
            duplicate_groups: duplicate_groups as u64,
            removed: removed as u64,
            dry_run,
        })
    }

    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport> {
        let cutoff_us = micros_of(cutoff);
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin prune", e))?;
        let mut archived = 0u64;
        if let Some(path) = archive {
            archived = write_archive(&tx, cutoff_us, path)?;
        }
        let removed = tx
            .execute(
                "DELETE FROM usage WHERE rowid < ?1",
                [time::first_rowid_at(cutoff_us)],
            )
            .map_err(|e| crate::db("delete old records", e))? as u64;
        // The delete trigger left a pending delta in every bucket it touched: those buckets
        // are summed again from what remains (emptied ones leave the rollup tables).
        migrations::refresh_pending(&tx)?;
        tx.commit().map_err(|e| crate::db("commit prune", e))?;
        Ok(PruneReport { removed, archived })
    }

    fn forget_unit(&self, unit_id: &str) -> Result<u64> {
        if unit_id.is_empty() {
            return Err(StoreError::invalid("unit_id", "must not be empty"));
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin forget", e))?;
        let removed = tx
            .execute("DELETE FROM usage WHERE unit_id = ?1", [unit_id])
            .map_err(|e| crate::db("forget unit", e))?;
        // The delete trigger took the unit's records out of the running experiment's unit
        // statistics; ended experiments and covariates still name it.
        units::forget_unit(&tx, unit_id)?;
        migrations::refresh_pending(&tx)?;
        tx.commit().map_err(|e| crate::db("commit forget", e))?;
        Ok(removed as u64)
    }

    fn files(&self) -> Vec<PathBuf> {
        let path = &self.config.path;
        let mut files = vec![path.clone()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_os_string();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        files
    }

    fn rebuild_rollups(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| crate::db("begin rollup rebuild", e))?;
        tx.execute_batch(&migrations::rebuild_rollups_sql())
            .map_err(|e| crate::db("rebuild rollups", e))?;
        tx.commit()
            .map_err(|e| crate::db("commit rollup rebuild", e))
    }
}

/// Writes every record older than `cutoff_us` to a new file at `path` as JSON lines and syncs
/// it. On any failure the partial file is removed, so an archive either is whole or absent.
fn write_archive(tx: &rusqlite::Transaction<'_>, cutoff_us: i64, path: &Path) -> Result<u64> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM usage WHERE rowid < ?1 ORDER BY rowid");
    let mut stmt = tx
        .prepare(&sql)
        .map_err(|e| crate::db("read records to archive", e))?;
    let rows = stmt
        .query_map(
            params![time::first_rowid_at(cutoff_us)],
            rows::record_from_row,
        )
        .map_err(|e| crate::db("read records to archive", e))?;
    afs_store::write_archive(
        path,
        rows.map(|r| r.map_err(|e| crate::db("read records to archive", e))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_connections_leave_checkpoints_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            SqliteConfig::new(dir.path().join("afs.db")),
            Arc::new(afs_store::SystemClock),
        )
        .unwrap();
        let frames: i64 = store
            .conn()
            .unwrap()
            .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
            .unwrap();
        assert_eq!(frames, writer::HARD_CAP_FRAMES);
    }
}
