//! How the domain types serialise their times and JSON text (`#[serde(serialize_with)]`):
//! RFC 3339 in UTC with a `Z` and only the fraction digits needed (the form `afs` prints
//! everywhere), and JSON stored as text parsed back into JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// A time as RFC 3339, e.g. `2025-06-01T12:00:00Z` or `2025-06-01T12:00:00.25Z`.
pub fn text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Serialises a time with [`text`].
pub(crate) fn at<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&text(*at))
}

/// Serialises an optional time with [`text`], `null` for none.
pub(crate) fn at_opt<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_str(&text(*at)),
        None => serializer.serialize_none(),
    }
}

/// Serialises JSON kept as text as the JSON it holds (the text itself when it does not
/// parse), `null` for none.
pub(crate) fn json_text<S: Serializer>(
    text: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match text {
        None => serializer.serialize_none(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => value.serialize(serializer),
            Err(_) => serializer.serialize_str(text),
        },
    }
}
