//! Versioned migrations: the schema's version lives in `afs_meta`; each step runs once, in
//! one transaction, under an advisory lock that serialises processes opening the database
//! at the same time.

use afs_store::{Result, StoreError};

use crate::error::dbe;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 5;

/// The advisory-lock key held while migrating (any process of any host).
const MIGRATION_LOCK: i64 = 0x0afd_0001;

/// One step: its version, what it does, and its SQL (run as one batch).
struct Migration {
    version: i64,
    what: &'static str,
    sql: &'static [&'static str],
}

/// Every step in order; a step's version is one more than the previous one's.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "the usage log with its rollups, runs, state, experiments and per-unit statistics",
        sql: &[
            include_str!("schema/usage.sql"),
            include_str!("schema/experiments.sql"),
        ],
    },
    Migration {
        version: 2,
        what: "the conversation of multi-turn records",
        // A nullable column without a default: PostgreSQL adds it to the log and every
        // partition without rewriting them. It holds `afs_store::messages_to_json`'s text.
        sql: &["ALTER TABLE afs_usage ADD COLUMN messages text;"],
    },
    Migration {
        version: 3,
        what: "pending rollup deltas of single-record logging, folded a few times a second",
        sql: &[include_str!("schema/pending.sql")],
    },
    Migration {
        version: 4,
        what: "byte order (COLLATE \"C\") for the text keys of the log, rollups and units",
        sql: &[include_str!("schema/collate.sql")],
    },
    Migration {
        version: 5,
        what: "inserts summed per minute once, and per-unit triggers only while an experiment runs",
        sql: &[include_str!("schema/insert_sums.sql")],
    },
];

/// A fingerprint of the schema this build writes (its version and every step's SQL), naming
/// the test cluster's template database of it (`testing`), so a changed schema gets a new one.
#[cfg(feature = "testing")]
pub(crate) fn fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    SCHEMA_VERSION.hash(&mut hasher);
    for step in MIGRATIONS {
        step.version.hash(&mut hasher);
        step.sql.hash(&mut hasher);
    }
    hasher.finish()
}

/// Brings the database of `client` to [`SCHEMA_VERSION`], creating afs's tables in an empty
/// database. Refuses, changing nothing, a database with other tables and no afs schema, and
/// a schema newer than this build; without `create`, refuses a database without afs's
/// tables (`NotFound`, what = `"afs schema"`).
pub(crate) fn migrate(client: &mut postgres::Client, shown: &str, create: bool) -> Result<()> {
    if is_current(client)? {
        return Ok(());
    }
    let mut tx = client
        .transaction()
        .map_err(dbe("starting the schema check"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(dbe("waiting for other processes to finish migrating"))?;
    let has_meta: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
             WHERE schemaname = current_schema() AND tablename = 'afs_meta')",
            &[],
        )
        .map_err(dbe("reading the schema"))?
        .get(0);
    let current = if has_meta {
        let application: Option<String> = tx
            .query_opt("SELECT value FROM afs_meta WHERE key = 'application'", &[])
            .map_err(dbe("reading afs_meta"))?
            .map(|row| row.get(0));
        if application.as_deref() != Some("afs") {
            return Err(not_afs(
                shown,
                "its afs_meta table does not name afs as its application",
            ));
        }
        let version: Option<String> = tx
            .query_opt(
                "SELECT value FROM afs_meta WHERE key = 'schema_version'",
                &[],
            )
            .map_err(dbe("reading the schema version"))?
            .map(|row| row.get(0));
        version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| not_afs(shown, "its afs_meta table has no schema version"))?
    } else {
        let tables: Vec<String> = tx
            .query(
                "SELECT tablename::text FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema() ORDER BY tablename LIMIT 4",
                &[],
            )
            .map_err(dbe("reading the schema"))?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        if !tables.is_empty() {
            return Err(not_afs(
                shown,
                &format!(
                    "its schema holds other tables ({}) and no afs_meta table; \
                     give afs a database (or a schema, through the URL's search_path) of its own",
                    tables.join(", ")
                ),
            ));
        }
        if !create {
            return Err(StoreError::NotFound {
                what: "afs schema",
                id: shown.to_string(),
            });
        }
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::Database {
            context: format!("open database {shown}"),
            source: Box::new(std::io::Error::other(format!(
                "schema version {current} is newer than this build of afs understands \
                 ({SCHEMA_VERSION}); upgrade afs"
            ))),
        });
    }
    if current == 0 {
        tx.batch_execute(
            "CREATE TABLE afs_meta (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO afs_meta VALUES ('application', 'afs'), ('schema_version', '0');",
        )
        .map_err(dbe("creating afs_meta"))?;
    }
    for step in MIGRATIONS.iter().filter(|m| m.version > current) {
        tracing::info!(
            version = step.version,
            what = step.what,
            "migrating {shown}"
        );
        for sql in step.sql {
            tx.batch_execute(sql)
                .map_err(dbe(&format!("migrating to schema {}", step.version)))?;
        }
        tx.execute(
            "UPDATE afs_meta SET value = $1 WHERE key = 'schema_version'",
            &[&step.version.to_string()],
        )
        .map_err(dbe("recording the schema version"))?;
    }
    tx.commit().map_err(dbe("committing the migration"))
}

/// Whether the database holds afs's schema at exactly [`SCHEMA_VERSION`]: two short reads
/// (the table, then its two keys) without the migration lock, which is all that opening an
/// up-to-date database costs. A migration in progress elsewhere has not committed its new
/// version, so this reads the old one (or no table) and the caller takes the lock and looks
/// again.
fn is_current(client: &mut postgres::Client) -> Result<bool> {
    let meta: Option<String> = client
        .query_one(
            "SELECT to_regclass(quote_ident(current_schema()) || '.afs_meta')::text",
            &[],
        )
        .map_err(dbe("reading the schema"))?
        .get(0);
    let Some(meta) = meta else {
        return Ok(false);
    };
    let rows = client
        .query(
            &format!(
                "SELECT key, value FROM {meta} WHERE key IN ('application', 'schema_version')"
            ),
            &[],
        )
        .map_err(dbe("reading afs_meta"))?;
    let value = |key: &str| {
        rows.iter()
            .find(|row| row.get::<_, &str>(0) == key)
            .map(|row| row.get::<_, String>(1))
    };
    Ok(value("application").as_deref() == Some("afs")
        && value("schema_version").as_deref() == Some(&SCHEMA_VERSION.to_string()))
}

fn not_afs(shown: &str, reason: &str) -> StoreError {
    StoreError::NotAfsDatabase {
        path: shown.into(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_end_at_the_schema_version() {
        for (i, step) in MIGRATIONS.iter().enumerate() {
            assert_eq!(step.version, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
