//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Version 1 is the Python module's `usage` table, created only when absent, so a `usage.db`
//! written by the seed opens as a version-0 database whose table already exists. Version 2
//! adds afs's columns, indexes, the per-model hourly rollup table and the triggers that keep
//! it consistent, and back-fills the new columns of rows written by the Python module.
//! Versions 3 and 4 add the experiment and retrain-run tables (in their own modules);
//! version 5 adds the table of pending rollup deltas ([`RECENT`]), points the update and
//! delete triggers at it, and rebuilds `usage` with rowids in time order (see
//! [`ROWID_SLOTS`]), which replaces its time index; version 6 adds the pair key; version 7
//! adds the per-unit experiment statistics (see `units.rs`); version 8 makes the
//! delete trigger's pending deltas unable to fail (see [`migrate_v8`]); version 9 adds a
//! judge's own state to the sequential state (see `experiments.rs`). Migrations never
//! rename or drop a seed column.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use rusqlite::{params, Connection, TransactionBehavior};

use super::time::{first_rowid_at, micros_of, micros_of_rowid, ROWID_SLOTS};
use afs_store::dedupe_hash;
use afs_store::Result;

/// The schema version this build writes and understands: the last entry of `MIGRATIONS`.
pub const SCHEMA_VERSION: i64 = 10;

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

impl RollupTable {
    /// The level of this table's rows in [`RECENT`]: its bucket width in minutes.
    pub(crate) fn level(self) -> i64 {
        self.width_us / MINUTELY.width_us
    }
}

/// The table of pending rollup deltas (schema version 5): `(level, bucket, model)` and the
/// aggregate columns, where `level` is [`RollupTable::level`].
///
/// A single-record commit adds its contribution here instead of to the three rollup tables,
/// so it dirties one small page instead of three; so do the update and delete triggers. The
/// writer folds the rows of closed buckets into the rollup tables about once a minute, and
/// bulk deletes fold everything they left here. A rollup bucket's true value is its row in
/// its table plus its row here: readers sum both.
pub(crate) const RECENT: &str = "usage_rollup_recent";

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

/// Appends a bucket's sums to an upsert's parameters, in [`ROLLUP_COLUMNS`] order: the
/// float sums as they are, the counts as integers.
pub(crate) fn push_rollup_sums(
    values: &mut Vec<rusqlite::types::Value>,
    sums: &[f64; N_ROLLUP_COLUMNS],
) {
    for (i, v) in sums.iter().enumerate() {
        values.push(if rollup_column_is_real(i) {
            (*v).into()
        } else {
            (v.round() as i64).into()
        });
    }
}

/// Positions of the quality columns in [`ROLLUP_COLUMNS`] (checked by a test).
pub(crate) const COL_N_QUALITY: usize = 5;
pub(crate) const COL_SUM_Q: usize = 6;
pub(crate) const COL_SUM_Q2: usize = 7;

/// `INSERT ... ON CONFLICT DO UPDATE` adding one delta (model, hour, then every aggregate
/// column in order) to a rollup bucket.
pub(crate) fn rollup_upsert_sql(table: RollupTable) -> String {
    let placeholders = (3..3 + ROLLUP_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let upsert_set = add_excluded_set();
    format!(
        "INSERT INTO {name} (model, {key}, {}) VALUES (?1, ?2, {placeholders}) \
         ON CONFLICT ({key}, model) DO UPDATE SET {upsert_set}",
        rollup_column_list(),
        name = table.name,
        key = table.key,
    )
}

/// The declarations of the rollup aggregate columns (counts INTEGER, sums REAL, all
/// `NOT NULL DEFAULT 0`), one per line, for a `CREATE TABLE`.
fn rollup_columns_decl() -> String {
    ROLLUP_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (c, _))| {
            let ty = if rollup_column_is_real(i) {
                "REAL"
            } else {
                "INTEGER"
            };
            format!("    {c} {ty} NOT NULL DEFAULT 0")
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// Column names of the rollup aggregates, comma separated.
pub(crate) fn rollup_column_list() -> String {
    ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT ... ON CONFLICT DO UPDATE` adding one delta (level, bucket, model, then every
/// aggregate column in order) to a row of [`RECENT`].
pub(crate) fn recent_upsert_sql() -> String {
    let placeholders = (4..4 + ROLLUP_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {RECENT} (level, bucket, model, {}) VALUES (?1, ?2, ?3, {placeholders}) \
         ON CONFLICT (level, bucket, model) DO UPDATE SET {}",
        rollup_column_list(),
        add_excluded_set(),
    )
}

/// `c = c + excluded.c` for every aggregate column.
fn add_excluded_set() -> String {
    ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| format!("{c} = {c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statements that move the rows of `table`'s level in [`RECENT`] whose bucket is not `?1`
/// into `table`, drop buckets left empty, and delete the moved rows, in that order. `?1` is
/// the bucket still being written (`NULL` folds every row of the level).
pub(crate) fn fold_sql(table: RollupTable) -> [String; 3] {
    let (name, key, level) = (table.name, table.key, table.level());
    let pending = format!("FROM {RECENT} WHERE level = {level} AND bucket IS NOT ?1");
    let cols = rollup_column_list();
    [
        format!(
            "INSERT INTO {name} (model, {key}, {cols}) SELECT model, bucket, {cols} {pending} \
             ON CONFLICT ({key}, model) DO UPDATE SET {}",
            add_excluded_set()
        ),
        format!("DELETE FROM {name} WHERE n <= 0 AND ({key}, model) IN (SELECT bucket, model {pending})"),
        format!("DELETE {pending}"),
    ]
}

/// Folds every row of [`RECENT`] into the rollup tables (after bulk deletes).
pub(crate) fn fold_all(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    for table in ROLLUP_TABLES {
        for sql in fold_sql(table) {
            tx.prepare_cached(&sql)
                .and_then(|mut stmt| stmt.execute([rusqlite::types::Null]))
                .map_err(|e| crate::db("fold rollup deltas", e))?;
        }
    }
    Ok(())
}

/// Recomputes from the log every rollup bucket that has a row in [`RECENT`], at every level,
/// and empties [`RECENT`]. Bulk deletes (prune, forget, dedupe) run this instead of
/// [`fold_all`]: the buckets they touched are summed again from the rows that remain, so a
/// deletion never depends on subtracting from sums (which could leave rounding residue, or
/// fail on sums a pre-bounds database let overflow), and its result equals a scan of the log.
/// Each bucket is read as a rowid range, so the cost is the rows of the touched buckets.
pub(crate) fn refresh_pending(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    // TOTAL, not SUM, for the counts too: SUM fails on integer overflow, which rows written
    // by other programs (never range-checked) can reach; TOTAL is exact below 2^53.
    let select = ROLLUP_COLUMNS
        .iter()
        .map(|(_, e)| format!("TOTAL({})", e.replace("{r}", "u.")))
        .collect::<Vec<_>>()
        .join(", ");
    for table in ROLLUP_TABLES {
        let (name, key, level) = (table.name, table.key, table.level());
        let span = table.width_us * ROWID_SLOTS;
        let statements = [
            format!(
                "DELETE FROM {name} WHERE ({key}, model) IN \
                 (SELECT bucket, model FROM {RECENT} WHERE level = {level})"
            ),
            format!(
                "INSERT INTO {name} (model, {key}, {cols}) \
                 SELECT r.model, r.bucket, {select} FROM {RECENT} AS r \
                 JOIN usage AS u ON u.rowid >= r.bucket * {span} AND u.rowid < (r.bucket + 1) * {span} \
                     AND u.model = r.model \
                 WHERE r.level = {level} GROUP BY r.model, r.bucket",
                cols = rollup_column_list(),
            ),
        ];
        for sql in statements {
            tx.prepare_cached(&sql)
                .and_then(|mut stmt| stmt.execute([]))
                .map_err(|e| crate::db("recompute rollup buckets", e))?;
        }
    }
    tx.execute(&format!("DELETE FROM {RECENT}"), [])
        .map_err(|e| crate::db("recompute rollup buckets", e))?;
    Ok(())
}

/// Upserts into [`RECENT`], one per level, adding (sign `""`) or removing (sign `"-"`) the
/// contribution of trigger row `r` (`"NEW."` or `"OLD."`).
fn recent_delta_sql(r: &str, sign: &str) -> String {
    recent_delta_sql_with(r, sign, &add_excluded_set())
}

/// [`recent_delta_sql`] with `set` as the conflict's update.
fn recent_delta_sql_with(r: &str, sign: &str, set: &str) -> String {
    let values = ROLLUP_COLUMNS
        .iter()
        .map(|(_, e)| format!("{sign}({})", e.replace("{r}", r)))
        .collect::<Vec<_>>()
        .join(", ");
    ROLLUP_TABLES
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO {RECENT} (level, bucket, model, {cols}) \
                 SELECT {level}, {r}ts_us / {width}, {r}model, {values} WHERE {r}ts_us IS NOT NULL \
                 ON CONFLICT (level, bucket, model) DO UPDATE SET {set};\n    ",
                cols = rollup_column_list(),
                level = t.level(),
                width = t.width_us,
            )
        })
        .collect()
}

/// Version 5, first part: the [`RECENT`] table.
fn v5_recent_table() -> String {
    let cols_decl = rollup_columns_decl();
    format!(
        "CREATE TABLE {RECENT} (
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    model TEXT NOT NULL,
{cols_decl},
    PRIMARY KEY (level, bucket, model)
) WITHOUT ROWID;"
    )
}

fn migrate_v5(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(&v5_recent_table())
        .map_err(|e| crate::db("migration 5", e))?;
    order_rows_by_time(tx)
}

/// Renumbers the rows of `usage` in place so that rowids follow time ([`ROWID_SLOTS`] per
/// microsecond), drops the time index that ordering replaces, and installs the version-5
/// triggers. A row whose microsecond is full moves to the next one, its `ts_us` with it (the
/// update trigger moves its rollup contribution). Other indexes, the Python module's
/// included, are left as they are.
fn order_rows_by_time(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let err = |e: rusqlite::Error| crate::db("migration 5: order records by time", e);
    tx.execute_batch(&format!(
        "DROP INDEX IF EXISTS usage_ts;
         DROP TRIGGER IF EXISTS usage_seed_insert;
         DROP TRIGGER IF EXISTS usage_rollup_delete;
         DROP TRIGGER IF EXISTS usage_rollup_update;
         {}",
        usage_indexes_and_triggers_v5()
    ))
    .map_err(err)?;
    let rows: Vec<(i64, i64)> = tx
        .prepare("SELECT rowid, COALESCE(ts_us, 0) FROM usage ORDER BY 2, 1")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(err)?;
    let mut occupied = tx
        .prepare("SELECT EXISTS (SELECT 1 FROM usage WHERE rowid = ?1)")
        .map_err(err)?;
    let mut renumber = tx
        .prepare("UPDATE usage SET rowid = ?1 WHERE rowid = ?2")
        .map_err(err)?;
    let mut renumber_and_move = tx
        .prepare("UPDATE usage SET rowid = ?1, ts_us = ?3 WHERE rowid = ?2")
        .map_err(err)?;
    // Rows not renumbered yet that were pushed aside, by their first rowid: where they are.
    let mut pushed_aside: std::collections::HashMap<i64, i64> = Default::default();
    let mut next_aside = -1i64;
    let (mut previous, mut n_moved) = (i64::MIN, 0u64);
    for (old_rowid, ts_us) in rows.iter().copied() {
        let current = pushed_aside.remove(&old_rowid).unwrap_or(old_rowid);
        let rowid = first_rowid_at(ts_us).max(previous.saturating_add(1));
        previous = rowid;
        if rowid == current {
            continue;
        }
        // Rows already renumbered sit below `rowid`, so whoever holds it is a row still to
        // come (one with a small original rowid, as only rows dated near 1970 reach there).
        if occupied
            .query_row([rowid], |r| r.get::<_, bool>(0))
            .map_err(err)?
        {
            while occupied
                .query_row([next_aside], |r| r.get::<_, bool>(0))
                .map_err(err)?
            {
                next_aside -= 1;
            }
            renumber.execute([next_aside, rowid]).map_err(err)?;
            pushed_aside.insert(rowid, next_aside);
            next_aside -= 1;
        }
        let moved_to = micros_of_rowid(rowid);
        if moved_to == ts_us {
            renumber.execute([rowid, current]).map_err(err)?;
        } else {
            renumber_and_move
                .execute([rowid, current, moved_to])
                .map_err(err)?;
            n_moved += 1;
        }
    }
    fold_all(tx)?;
    if n_moved > 0 {
        tracing::warn!(
            n_moved,
            "records sharing a microsecond with over 1,024 others were moved to the next microsecond"
        );
    }
    if !rows.is_empty() {
        tracing::info!(n_rows = rows.len(), "records renumbered in time order");
    }
    Ok(())
}

/// The indexes and triggers of `usage` from schema version 5 on.
fn usage_indexes_and_triggers_v5() -> String {
    format!(
        "
-- Records with feedback, in time order: what training data and feedback queries read.
-- Partial, so logging a record without feedback does not touch it. Feedback and quality are
-- in the entries, so conditions on them skip rows without reading them.
DROP INDEX IF EXISTS usage_feedback_ts;
CREATE INDEX usage_feedback_ts ON usage (ts_us, user_feedback, quality_score)
    WHERE user_feedback IS NOT NULL;
-- A row inserted by the Python module (which knows nothing of ts_us or of time-ordered rowids)
-- gets ts_us from its local-time timestamp and moves to a rowid of that microsecond (the
-- next free one; if the microsecond is full, ts_us follows the row to the next one). The
-- UPDATE fires the update trigger, which adds the row to the rollups.
CREATE TRIGGER usage_seed_insert AFTER INSERT ON usage WHEN NEW.ts_us IS NULL BEGIN
    UPDATE usage SET rowid = (
        SELECT COALESCE(MAX(u.rowid) + 1, t.ts * {slots})
        FROM (SELECT COALESCE(CAST(ROUND((julianday(NEW.timestamp, 'utc') - 2440587.5)
                  * 86400000000.0) AS INTEGER), 0) AS ts) AS t
        LEFT JOIN usage AS u
          ON u.rowid >= t.ts * {slots} AND u.rowid < (t.ts + 1) * {slots} AND u.rowid <> NEW.rowid)
    WHERE rowid = NEW.rowid;
    UPDATE usage SET ts_us = (rowid >> {bits}) WHERE id IS NEW.id AND ts_us IS NULL;
END;
CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage BEGIN
    {remove_old}
END;
CREATE TRIGGER usage_rollup_update
AFTER UPDATE OF model, ts_us, user_feedback, quality_score, latency_ms, token_count ON usage BEGIN
    {remove_old}
    {add_new}
END;
",
        slots = ROWID_SLOTS,
        bits = ROWID_SLOTS.trailing_zeros(),
        remove_old = recent_delta_sql("OLD.", "-"),
        add_new = recent_delta_sql("NEW.", ""),
    )
}

fn v2_schema() -> String {
    let cols_decl = rollup_columns_decl();
    let names = rollup_column_list();
    let add = |r: &str| {
        ROLLUP_COLUMNS
            .iter()
            .map(|(_, e)| e.replace("{r}", r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let upsert_set = add_excluded_set();
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
-- transaction (see writer.rs): cheaper than a trigger per row. Rows inserted by the
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
    Migration {
        version: 5,
        apply: migrate_v5,
    },
    Migration {
        version: 6,
        apply: migrate_v6,
    },
    Migration {
        version: 7,
        apply: super::units::migrate_v7,
    },
    Migration {
        version: 8,
        apply: migrate_v8,
    },
    Migration {
        version: 9,
        apply: super::experiments::migrate_v9,
    },
    Migration {
        version: 10,
        apply: migrate_v10,
    },
];

/// Version 10: the whole conversation of a multi-turn record, as a JSON array of
/// `{role, content}` objects (see [`afs_store::messages_to_json`]); NULL for single-turn
/// records, old rows and rows the Python module writes.
fn migrate_v10(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch("ALTER TABLE usage ADD COLUMN messages TEXT")
        .map_err(|e| crate::db("migration 10", e))
}

/// Version 8: the delete trigger's pending deltas can no longer fail, and batches of quality
/// scores can keep the rollups themselves (see [`BULK_WRITE`]). The delete trigger first: sums that a database
/// written before the value bounds (or by another program) let reach infinity turned into
/// NaN when a row was subtracted, which SQLite stores as NULL, so the NOT NULL column made
/// every later deletion of that record fail. The trigger now stores a NaN delta as 0: bulk
/// deletes recompute every bucket they touched from the log anyway (see
/// [`refresh_pending`]), so a deletion never depends on the sums it subtracts from.
fn migrate_v8(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS usage_rollup_delete;
         CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage BEGIN
             {delete}
         END;
         CREATE TABLE IF NOT EXISTS {BULK_WRITE} (id INTEGER PRIMARY KEY);
         DROP TRIGGER IF EXISTS usage_rollup_update;
         CREATE TRIGGER usage_rollup_update
         AFTER UPDATE OF model, ts_us, user_feedback, quality_score, latency_ms, token_count ON usage
         WHEN NOT EXISTS (SELECT 1 FROM {BULK_WRITE}) BEGIN
             {remove_old}
             {add_new}
         END;",
        delete = recent_delta_sql_with("OLD.", "-", &nan_safe_add_excluded_set()),
        remove_old = recent_delta_sql("OLD.", "-"),
        add_new = recent_delta_sql("NEW.", ""),
    ))
    .map_err(|e| crate::db("migration 8", e))
}

/// A table that holds a row only inside a transaction that keeps the rollups itself (schema
/// version 8): while it does, the update trigger of `usage` does nothing. A batch of quality
/// scores adds one delta per bucket instead of six upserts per record. The row is deleted
/// before the transaction commits, so no other connection ever sees it.
pub(crate) const BULK_WRITE: &str = "usage_bulk_write";

/// `c = COALESCE(c + excluded.c, 0)` for every aggregate column: an upsert that cannot fail
/// (an infinite sum minus an infinite delta gives NaN, which SQLite stores as NULL).
fn nan_safe_add_excluded_set() -> String {
    ROLLUP_COLUMNS
        .iter()
        .map(|(c, _)| format!("{c} = COALESCE({c} + excluded.{c}, 0)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Version 6: the exact-duplicate key of each pair, written by afs with every new record
/// (see [`afs_store::key::pair_key`]). Older rows keep none; readers compute it for them.
fn migrate_v6(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch("ALTER TABLE usage ADD COLUMN pair_key BLOB")
        .map_err(|e| crate::db("migration 6", e))
}

fn migrate_v1_seed_usage(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(V1_SEED_USAGE)
        .map_err(|e| crate::db("migration 1", e))
}

fn migrate_v2_afs_usage(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(&v2_schema())
        .map_err(|e| crate::db("migration 2", e))?;
    backfill_seed_rows(tx)?;
    tx.execute_batch(&rebuild_rollup_tables_sql())
        .map_err(|e| crate::db("migration 2: build rollups", e))
}

/// Brings the database to [`SCHEMA_VERSION`] in one immediate transaction, so several
/// processes opening a new file at once migrate it exactly once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    // A database at the current version (nearly every open) needs no write lock: a process
    // that only reads must not queue behind a busy writer just to learn that.
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| crate::db("read schema version", e))?;
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| crate::db("begin migration", e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| crate::db("read schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(crate::db(
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
            .map_err(|e| crate::db("write schema version", e))?;
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "migrated database schema"
        );
    }
    tx.commit().map_err(|e| crate::db("commit migration", e))
}

/// SQL that recomputes every rollup bucket from the log. Only for a database at the current
/// version (it empties [`RECENT`]); migration 2 builds its tables with
/// [`rebuild_rollup_tables_sql`].
pub(crate) fn rebuild_rollups_sql() -> String {
    format!("DELETE FROM {RECENT};\n{}", rebuild_rollup_tables_sql())
}

/// SQL that recomputes the three rollup tables from the log.
fn rebuild_rollup_tables_sql() -> String {
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
        .map_err(|e| crate::db("migration 2: read seed rows", e))?;
    let mut update = tx
        .prepare("UPDATE usage SET ts_us = ?1, dedupe_hash = ?2 WHERE rowid = ?3")
        .map_err(|e| crate::db("migration 2: prepare backfill", e))?;
    let mut rows = select
        .query([])
        .map_err(|e| crate::db("migration 2: read seed rows", e))?;
    let mut n_rows = 0u64;
    let mut n_unparsed = 0u64;
    while let Some(row) = rows
        .next()
        .map_err(|e| crate::db("migration 2: read seed rows", e))?
    {
        let rowid: i64 = row
            .get(0)
            .map_err(|e| crate::db("migration 2: read rowid", e))?;
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
            .map_err(|e| crate::db("migration 2: backfill row", e))?;
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
        assert_eq!(ROLLUP_COLUMNS[COL_N_QUALITY].0, "n_quality");
        assert_eq!(ROLLUP_COLUMNS[COL_SUM_Q].0, "sum_q");
        assert_eq!(ROLLUP_COLUMNS[COL_SUM_Q2].0, "sum_q2");
    }

    #[test]
    fn schema_version_is_the_last_migration_and_steps_are_consecutive() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }
}
