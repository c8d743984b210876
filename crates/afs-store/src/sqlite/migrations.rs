//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Version 1 is the Python module's `usage` table, created only when absent, so a `usage.db`
//! written by the seed opens as a version-0 database whose table already exists. Version 2
//! adds afs's columns, indexes, the per-model hourly rollup table and the triggers that keep
//! it consistent, and back-fills the new columns of rows written by the Python module.
//! Migrations never rename or drop a seed column.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use rusqlite::{params, Connection, TransactionBehavior};

use super::time::micros_of;
use crate::error::{Result, StoreError};
use crate::record::dedupe_hash;

/// The schema version this build writes and understands: the last entry of `MIGRATIONS`.
pub const SCHEMA_VERSION: i64 = 4;

const V1_SEED_USAGE: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    query TEXT NOT NULL,
    response TEXT NOT NULL,
    model TEXT NOT NULL,
    expert TEXT,
    latency_ms REAL,
    token_count INTEGER,
    quality_score REAL,
    user_feedback INTEGER,
    feedback_text TEXT,
    context_hash TEXT,
    dedupe_hash TEXT,
    created_at TEXT
);
";

/// One rollup bucket is one hour, in microseconds.
pub(crate) const HOUR_US: i64 = 3_600_000_000;

/// One day (UTC), in microseconds.
pub(crate) const DAY_US: i64 = 24 * HOUR_US;

/// A rollup table: its name, its bucket column and the bucket width in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RollupTable {
    pub(crate) name: &'static str,
    pub(crate) key: &'static str,
    pub(crate) width_us: i64,
}

/// Daily, hourly and minute buckets, all kept by the same writes: a window reads whole days,
/// then whole hours and whole minutes at its ends, and scans only the partial minutes at
/// its edges, so its cost barely depends on how many records the log holds.
pub(crate) const HOURLY: RollupTable = RollupTable {
    name: "usage_rollup",
    key: "hour",
    width_us: HOUR_US,
};
pub(crate) const DAILY: RollupTable = RollupTable {
    name: "usage_rollup_day",
    key: "day",
    width_us: DAY_US,
};
pub(crate) const MINUTELY: RollupTable = RollupTable {
    name: "usage_rollup_minute",
    key: "minute",
    width_us: 60_000_000,
};
pub(crate) const ROLLUP_TABLES: [RollupTable; 3] = [HOURLY, DAILY, MINUTELY];

/// The aggregate columns of `usage_rollup`, in order, and the expression over a `usage` row
/// (with `{r}` standing for `NEW`, `OLD` or nothing) that each bucket sums.
const ROLLUP_COLUMNS: &[(&str, &str)] = &[
    ("n", "1"),
    ("n_feedback", "({r}user_feedback IS NOT NULL)"),
    ("n_pos", "({r}user_feedback IS 1)"),
    ("n_neg", "({r}user_feedback IS -1)"),
    ("n_neutral", "({r}user_feedback IS 0)"),
    ("n_quality", "({r}quality_score IS NOT NULL)"),
    ("sum_q", "COALESCE({r}quality_score, 0.0)"),
    (
        "sum_q2",
        "COALESCE({r}quality_score * {r}quality_score, 0.0)",
    ),
    ("n_latency", "({r}latency_ms IS NOT NULL)"),
    ("sum_lat", "COALESCE({r}latency_ms, 0.0)"),
    ("sum_lat2", "COALESCE({r}latency_ms * {r}latency_ms, 0.0)"),
    ("sum_tokens", "COALESCE({r}token_count, 0)"),
];

/// The aggregate select list over `usage` rows (one `SUM` per rollup column), shared by the
/// rollup rebuild and the scans of partial hours at the edges of a window.
pub(crate) fn aggregate_select_list() -> String {
    ROLLUP_COLUMNS
        .iter()
        .map(|(_, expr)| format!("TOTAL({})", expr.replace("{r}", "")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether rollup column `index` holds a float sum (the others are integer counts).
pub(crate) fn rollup_column_is_real(index: usize) -> bool {
    let name = ROLLUP_COLUMNS[index].0;
    name.starts_with("sum_q") || name.starts_with("sum_lat")
}

/// Number of rollup aggregate columns.
pub(crate) const N_ROLLUP_COLUMNS: usize = 12;

/// `INSERT ... ON CONFLICT DO UPDATE` adding one delta (model, hour, then every aggregate
/// column in order) to a rollup bucket.
pub(crate) fn rollup_upsert_sql(table: RollupTable) -> String {
    let placeholders = (3..3 + ROLLUP_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let upsert_set = ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| format!("{c} = {c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {name} (model, {key}, {}) VALUES (?1, ?2, {placeholders}) \
         ON CONFLICT ({key}, model) DO UPDATE SET {upsert_set}",
        rollup_column_list(),
        name = table.name,
        key = table.key,
    )
}

/// Column names of the rollup aggregates, comma separated.
pub(crate) fn rollup_column_list() -> String {
    ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

fn v2_schema() -> String {
    let cols_decl = ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| {
            let ty = if c.starts_with("sum_q") || c.starts_with("sum_lat") {
                "REAL"
            } else {
                "INTEGER"
            };
            format!("    {c} {ty} NOT NULL DEFAULT 0")
        })
        .collect::<Vec<_>>()
        .join(",\n");
    let names = rollup_column_list();
    let add = |r: &str| {
        ROLLUP_COLUMNS
            .iter()
            .map(|(_, e)| e.replace("{r}", r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let upsert_set = ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| format!("{c} = {c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let subtract_set = ROLLUP_COLUMNS
        .iter()
        .map(|(c, e)| format!("{c} = {c} - {}", e.replace("{r}", "OLD.")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut add_new = String::new();
    let mut remove_old = String::new();
    let mut tables = String::new();
    for t in ROLLUP_TABLES {
        let (name, key, width) = (t.name, t.key, t.width_us);
        add_new.push_str(&format!(
            "INSERT INTO {name} (model, {key}, {names}) \
             VALUES (NEW.model, NEW.ts_us / {width}, {}) \
             ON CONFLICT ({key}, model) DO UPDATE SET {upsert_set};\n    ",
            add("NEW.")
        ));
        remove_old.push_str(&format!(
            "UPDATE {name} SET {subtract_set} WHERE model = OLD.model AND {key} = OLD.ts_us / {width}; \
             DELETE FROM {name} WHERE model = OLD.model AND {key} = OLD.ts_us / {width} AND n <= 0;\n    "
        ));
        tables.push_str(&format!(
            "CREATE TABLE {name} (\n    model TEXT NOT NULL,\n    {key} INTEGER NOT NULL,\n{cols_decl},\n    PRIMARY KEY ({key}, model)\n) WITHOUT ROWID;\n"
        ));
    }
    format!(
        "
ALTER TABLE usage ADD COLUMN ts_us INTEGER;
ALTER TABLE usage ADD COLUMN feedback_at TEXT;
ALTER TABLE usage ADD COLUMN unit_id TEXT;
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts_us);
-- Records with feedback, in time order: what training data and feedback queries read.
-- Partial, so logging a record without feedback does not touch it.
CREATE INDEX IF NOT EXISTS usage_feedback_ts ON usage (ts_us) WHERE user_feedback IS NOT NULL;
{tables}-- afs adds each insert's contribution to the rollups itself, once per model and hour of a
-- transaction (see sqlite/writer.rs): cheaper than a trigger per row. Rows inserted by the
-- Python module (which knows nothing of ts_us) get ts_us derived from their local-time
-- timestamp here; that UPDATE fires the update trigger, which adds them to the rollups.
CREATE TRIGGER usage_seed_insert AFTER INSERT ON usage WHEN NEW.ts_us IS NULL BEGIN
    UPDATE usage SET ts_us = COALESCE(
        CAST(ROUND((julianday(NEW.timestamp, 'utc') - 2440587.5) * 86400000000.0) AS INTEGER), 0)
    WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage BEGIN
    {remove_old}
END;
CREATE TRIGGER usage_rollup_update
AFTER UPDATE OF model, ts_us, user_feedback, quality_score, latency_ms, token_count ON usage BEGIN
    {remove_old}
    {add_new}
END;
"
    )
}

/// One schema step: the version it brings the database to, and how.
struct Migration {
    version: i64,
    apply: fn(&rusqlite::Transaction<'_>) -> Result<()>,
}

/// Every migration, in order. A new step appends an entry (its SQL may live in the module
/// that owns the tables) and raises [`SCHEMA_VERSION`]; a released step is never edited.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        apply: migrate_v1_seed_usage,
    },
    Migration {
        version: 2,
        apply: migrate_v2_afs_usage,
    },
    Migration {
        version: 3,
        apply: super::experiments::migrate_v3,
    },
    Migration {
        version: 4,
        apply: super::runs::migrate_v4,
    },
];

fn migrate_v1_seed_usage(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(V1_SEED_USAGE)
        .map_err(|e| StoreError::db("migration 1", e))
}

fn migrate_v2_afs_usage(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(&v2_schema())
        .map_err(|e| StoreError::db("migration 2", e))?;
    backfill_seed_rows(tx)?;
    tx.execute_batch(&rebuild_rollups_sql())
        .map_err(|e| StoreError::db("migration 2: build rollups", e))
}

/// Brings the database to [`SCHEMA_VERSION`] in one immediate transaction, so several
/// processes opening a new file at once migrate it exactly once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::db("begin migration", e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| StoreError::db("read schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::db(
            "open database",
            std::io::Error::other(format!(
                "schema version {version} is newer than this build of afs understands ({SCHEMA_VERSION})"
            )),
        ));
    }
    for step in MIGRATIONS.iter().filter(|m| m.version > version) {
        (step.apply)(&tx)?;
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(|e| StoreError::db("write schema version", e))?;
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "migrated database schema"
        );
    }
    tx.commit()
        .map_err(|e| StoreError::db("commit migration", e))
}

/// SQL that recomputes every rollup bucket from the log.
pub(crate) fn rebuild_rollups_sql() -> String {
    ROLLUP_TABLES
        .iter()
        .map(|t| {
            format!(
                "DELETE FROM {name};
                 INSERT INTO {name} (model, {key}, {})
                 SELECT model, ts_us / {width}, {} FROM usage GROUP BY model, ts_us / {width};\n",
                rollup_column_list(),
                aggregate_select_list(),
                name = t.name,
                key = t.key,
                width = t.width_us,
            )
        })
        .collect()
}

/// Fills `ts_us` of rows written by the Python module from their local-time ISO timestamp,
/// and replaces their content hash with afs's BLAKE3 key so exact dedupe spans old and new
/// rows. The seed's `timestamp` text itself is kept as written.
fn backfill_seed_rows(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let mut select = tx
        .prepare(
            "SELECT rowid, timestamp, created_at, query, response FROM usage WHERE ts_us IS NULL",
        )
        .map_err(|e| StoreError::db("migration 2: read seed rows", e))?;
    let mut update = tx
        .prepare("UPDATE usage SET ts_us = ?1, dedupe_hash = ?2 WHERE rowid = ?3")
        .map_err(|e| StoreError::db("migration 2: prepare backfill", e))?;
    let mut rows = select
        .query([])
        .map_err(|e| StoreError::db("migration 2: read seed rows", e))?;
    let mut n_rows = 0u64;
    let mut n_unparsed = 0u64;
    while let Some(row) = rows
        .next()
        .map_err(|e| StoreError::db("migration 2: read seed rows", e))?
    {
        let rowid: i64 = row
            .get(0)
            .map_err(|e| StoreError::db("migration 2: read rowid", e))?;
        let timestamp: Option<String> = row.get(1).ok();
        let created_at: Option<String> = row.get(2).ok();
        let query: String = row
            .get::<_, Option<String>>(3)
            .ok()
            .flatten()
            .unwrap_or_default();
        let response: String = row
            .get::<_, Option<String>>(4)
            .ok()
            .flatten()
            .unwrap_or_default();
        let when = timestamp
            .as_deref()
            .and_then(parse_legacy_time)
            .or_else(|| created_at.as_deref().and_then(parse_legacy_time));
        let ts_us = match when {
            Some(t) => micros_of(t),
            None => {
                n_unparsed += 1;
                0
            }
        };
        update
            .execute(params![ts_us, dedupe_hash(&query, &response), rowid])
            .map_err(|e| StoreError::db("migration 2: backfill row", e))?;
        n_rows += 1;
    }
    if n_rows > 0 {
        tracing::info!(n_rows, "back-filled rows written by the Python module");
    }
    if n_unparsed > 0 {
        tracing::warn!(
            n_unparsed,
            "seed rows with an unreadable timestamp were dated 1970-01-01"
        );
    }
    Ok(())
}

/// Parses a timestamp as the Python module writes it (`datetime.now().isoformat()`: local
/// time, no offset), or any RFC 3339 time. Times without an offset are read in this
/// machine's local time zone, which is where the Python module wrote them.
pub(crate) fn parse_legacy_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_column_count_matches() {
        assert_eq!(N_ROLLUP_COLUMNS, ROLLUP_COLUMNS.len());
    }

    #[test]
    fn schema_version_is_the_last_migration_and_steps_are_consecutive() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }
}
