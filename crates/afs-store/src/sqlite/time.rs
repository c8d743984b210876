//! Conversions between `DateTime<Utc>` and the store's integer and text time columns.

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds since the Unix epoch.
pub(crate) fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time at `us` microseconds since the epoch (clamped to chrono's range).
pub(crate) fn time_of_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 text, UTC, microsecond precision: what afs writes to text time columns.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}
