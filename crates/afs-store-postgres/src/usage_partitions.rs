//! The log's monthly partitions: `afs_usage_pYYYYMM` holds the records of one calendar
//! month (UTC), `afs_usage_default` those of months without a partition of their own.
//!
//! - **Making them.** Opening a store makes the partitions of the previous, current and next
//!   two months (of the store's clock) if missing, and logging makes the following ones as
//!   time goes on (checked against a cached horizon, so a log call costs one comparison).
//!   Making a partition moves the default partition's records of that month into it first
//!   (directly between the partitions, which fires none of the log's statement triggers:
//!   the records, and so the rollups and per-unit statistics, do not change), under an
//!   advisory lock so that processes making the same partition do it once, and with the
//!   default partition locked so that no record of the month lands there meanwhile.
//! - **Dropping them** (`prune`): a partition whose month ends at or before the cutoff, and
//!   before the running experiment started (its records feed the experiment's per-unit
//!   statistics, which only row deletes keep), is archived if asked and dropped whole; its
//!   buckets are removed from the rollups (a month is whole hours and minutes, and only its
//!   partition holds records of it). The rest is deleted row by row, as before. An ended
//!   experiment keeps its per-unit statistics as they stood, whichever way its records go.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use afs_store::Result;

use crate::error::dbe;
use crate::usage_rows::micros_of;

/// The advisory-lock key held while partitions are made or dropped.
const PARTITION_LOCK: i64 = 0x0afd_0004;

/// One month's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Month {
    /// `afs_usage_pYYYYMM`.
    pub(crate) name: String,
    /// The month's first microsecond.
    pub(crate) start_us: i64,
    /// The next month's first microsecond.
    pub(crate) end_us: i64,
}

/// The month containing `at`, shifted by `offset` months.
pub(crate) fn month(at: DateTime<Utc>, offset: i32) -> Month {
    let index = at.year() * 12 + at.month0() as i32 + offset;
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12) as u32);
    let start = Utc
        .with_ymd_and_hms(year, month0 + 1, 1, 0, 0, 0)
        .single()
        .expect("the first of a month exists");
    let next_index = index + 1;
    let end = Utc
        .with_ymd_and_hms(
            next_index.div_euclid(12),
            next_index.rem_euclid(12) as u32 + 1,
            1,
            0,
            0,
            0,
        )
        .single()
        .expect("the first of a month exists");
    Month {
        name: format!("afs_usage_p{year:04}{:02}", month0 + 1),
        start_us: micros_of(start),
        end_us: micros_of(end),
    }
}

/// Makes the partitions of the months `from..=to` offsets around `now` that are missing;
/// returns the end (exclusive, in microseconds) of the last one.
pub(crate) fn ensure(
    tx: &mut postgres::Transaction<'_>,
    now: DateTime<Utc>,
    from: i32,
    to: i32,
) -> Result<i64> {
    const WHAT: &str = "make the log's monthly partitions";
    // Nearly always every partition exists: one query then, without the lock.
    let months: Vec<Month> = (from..=to).map(|offset| month(now, offset)).collect();
    let names: Vec<&str> = months.iter().map(|m| m.name.as_str()).collect();
    let all_exist: bool = tx
        .query_one(
            "SELECT bool_and(to_regclass(name) IS NOT NULL) FROM unnest($1::text[]) AS name",
            &[&names],
        )
        .map_err(dbe(WHAT))?
        .get::<_, Option<bool>>(0)
        .unwrap_or(true);
    let end = months.last().map_or(0, |m| m.end_us);
    if all_exist {
        return Ok(end);
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .map_err(dbe(WHAT))?;
    for m in &months {
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&m.name])
            .map_err(dbe(WHAT))?
            .get(0);
        if exists {
            continue;
        }
        // Records of the month that went to the default partition move first: a partition
        // cannot be attached while the default one holds records of its range.
        tx.batch_execute(&format!(
            "LOCK TABLE afs_usage_default IN ACCESS EXCLUSIVE MODE;
             CREATE TABLE {name} (LIKE afs_usage INCLUDING DEFAULTS);
             WITH moved AS (
                 DELETE FROM afs_usage_default WHERE ts_us >= {lo} AND ts_us < {hi} RETURNING *
             )
             INSERT INTO {name} SELECT * FROM moved;
             ALTER TABLE afs_usage ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi});",
            name = m.name,
            lo = m.start_us,
            hi = m.end_us
        ))
        .map_err(dbe(WHAT))?;
    }
    Ok(end)
}

/// A partition `prune` may drop whole: its name and range.
pub(crate) fn droppable(
    tx: &mut postgres::Transaction<'_>,
    cutoff_us: i64,
) -> Result<Vec<(u32, Month)>> {
    const WHAT: &str = "list the log's partitions";
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .map_err(dbe(WHAT))?;
    let running_start: Option<i64> = tx
        .query_one("SELECT min(started_us) FROM afs_experiment_live", &[])
        .map_err(dbe(WHAT))?
        .get(0);
    let limit = running_start.map_or(cutoff_us, |s| s.min(cutoff_us));
    let rows = tx
        .query(
            "SELECT c.oid, c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'afs_usage'::regclass AND c.relname LIKE 'afs_usage_p%' \
             ORDER BY c.relname",
            &[],
        )
        .map_err(dbe(WHAT))?;
    let mut out = Vec::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        let Some(m) = parse_month(&name) else {
            continue;
        };
        if m.end_us <= limit {
            out.push((oid, m));
        }
    }
    Ok(out)
}

/// The month of a partition named `afs_usage_pYYYYMM`.
fn parse_month(name: &str) -> Option<Month> {
    let digits = name.strip_prefix("afs_usage_p")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month1: u32 = digits[4..].parse().ok()?;
    let first = Utc.with_ymd_and_hms(year, month1, 1, 0, 0, 0).single()?;
    Some(month(first, 0))
}

/// Drops partition `m` (whose records were archived, if asked), its rollup buckets and
/// their pending deltas.
pub(crate) fn drop_month(tx: &mut postgres::Transaction<'_>, m: &Month) -> Result<()> {
    const WHAT: &str = "drop a month of the log";
    tx.batch_execute(&format!(
        "DELETE FROM afs_usage_pending WHERE minute >= {lo_min} AND minute < {hi_min};
         DELETE FROM afs_usage_minute WHERE bucket >= {lo_min} AND bucket < {hi_min};
         DELETE FROM afs_usage_hour WHERE bucket >= {lo_hour} AND bucket < {hi_hour};
         DROP TABLE {name};",
        lo_min = m.start_us / 60_000_000,
        hi_min = m.end_us / 60_000_000,
        lo_hour = m.start_us / 3_600_000_000,
        hi_hour = m.end_us / 3_600_000_000,
        name = m.name
    ))
    .map_err(dbe(WHAT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 12, 15, 10, 0, 0).unwrap();
        let m = month(at, 0);
        assert_eq!(m.name, "afs_usage_p202612");
        assert_eq!(
            m.start_us,
            micros_of(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            m.end_us,
            micros_of(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(month(at, 1).name, "afs_usage_p202701");
        assert_eq!(month(at, -12).name, "afs_usage_p202512");
        assert_eq!(parse_month("afs_usage_p202701"), Some(month(at, 1)));
        assert_eq!(parse_month("afs_usage_default"), None);
        // Month boundaries are whole hours: dropped buckets are whole.
        assert_eq!(m.start_us % 3_600_000_000, 0);
    }
}
