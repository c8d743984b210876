//! Figure 5: bytes on disk per record, after the write-ahead log is checkpointed, and which
//! tables and indexes they go to.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;

/// Disk use of a closed database.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DiskUse {
    /// The database file plus its `-wal` file, bytes.
    pub(crate) bytes: u64,
    /// Pages per table or index, largest first (empty when SQLite lacks `dbstat`).
    pub(crate) by_object: Vec<ObjectUse>,
}

/// The pages of one table or index.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ObjectUse {
    /// Table or index name.
    pub(crate) name: String,
    /// Bytes of the pages it occupies.
    pub(crate) bytes: u64,
    /// Bytes of row data in them; the rest is page headers, cell pointers and free space.
    pub(crate) payload: u64,
}

/// Checkpoints the (closed) database at `path` and measures it.
pub(crate) fn measure(path: &Path) -> Result<DiskUse> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .context("cannot checkpoint the write-ahead log")?;
    // Where the bytes go is a diagnostic: leave it empty rather than fail without dbstat.
    let by_object = by_object(&conn).unwrap_or_default();
    drop(conn);
    let mut bytes = 0;
    for file in [path.to_path_buf(), crate::sibling(path, "-wal")] {
        if let Ok(meta) = std::fs::metadata(&file) {
            bytes += meta.len();
        }
    }
    Ok(DiskUse { bytes, by_object })
}

fn by_object(conn: &Connection) -> rusqlite::Result<Vec<ObjectUse>> {
    let mut stmt = conn.prepare(
        "SELECT name, SUM(pgsize), SUM(payload) FROM dbstat GROUP BY name \
         HAVING SUM(payload) > 0 ORDER BY SUM(pgsize) DESC",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(ObjectUse {
            name: row.get(0)?,
            bytes: row.get::<_, i64>(1)? as u64,
            payload: row.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}
