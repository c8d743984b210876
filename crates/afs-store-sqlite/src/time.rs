//! Conversions between `DateTime<Utc>` and the store's integer and text time columns.

use chrono::{DateTime, Utc};

/// Microseconds since the Unix epoch.
pub(crate) fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time at `us` microseconds since the epoch (clamped to chrono's range).
pub(crate) fn time_of_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 text, UTC, microsecond precision: what afs writes to text time columns.
pub(crate) use afs_store::rfc3339;

/// `usage` rows are keyed by time (schema version 5): a row's rowid is
/// `ts_us * ROWID_SLOTS + n` with `0 <= n < ROWID_SLOTS`, so the table itself is in time
/// order and a time range is a rowid range, with no separate time index to update on every
/// insert. Up to 1,024 records fit in one microsecond; a record that finds its microsecond
/// full is moved to the next one.
pub(crate) const ROWID_SLOTS: i64 = 1024;

/// The first rowid of microsecond `ts_us` (saturating, so any time bound maps to a bound).
pub(crate) fn first_rowid_at(ts_us: i64) -> i64 {
    ts_us.saturating_mul(ROWID_SLOTS)
}

/// The microsecond a rowid belongs to.
pub(crate) fn micros_of_rowid(rowid: i64) -> i64 {
    rowid.div_euclid(ROWID_SLOTS)
}
