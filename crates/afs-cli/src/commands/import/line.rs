//! One line of an import file: its keys, parsing into a record, and error messages that
//! name the key at fault.

use crate::output::{describe_json_value as describe_value, json_type_name as type_name};
use afs_store::{Feedback, FeedbackValue, NewUsage, StoreError};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::time_arg::parse_timestamp;

/// Every key a line may have. The last five make the output of `afs records` and the
/// archives of `afs prune` importable as they are.
const KEYS: [&str; 17] = [
    "query",
    "response",
    "model",
    "expert",
    "latency_ms",
    "quality_score",
    "feedback",
    "feedback_text",
    "unit",
    "timestamp",
    "token_count",
    "context_hash",
    "user_feedback",
    "feedback_at",
    "id",
    "created_at",
    "dedupe_hash",
];

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    query: String,
    response: String,
    model: String,
    expert: Option<String>,
    latency_ms: Option<f64>,
    quality_score: Option<f64>,
    /// `user_feedback` is the name in the output of `afs records`.
    #[serde(alias = "user_feedback")]
    feedback: Option<i64>,
    feedback_text: Option<String>,
    feedback_at: Option<String>,
    unit: Option<String>,
    timestamp: Option<String>,
    token_count: Option<i64>,
    context_hash: Option<String>,
    /// Accepted and ignored: the store assigns every new record its own id.
    #[allow(dead_code)]
    id: Option<String>,
    /// Accepted and ignored: `created_at` is when the record is written, i.e. now.
    #[allow(dead_code)]
    created_at: Option<String>,
    /// Accepted and ignored: the store computes the hash from query and response.
    #[allow(dead_code)]
    dedupe_hash: Option<String>,
}

/// Parses one non-blank line into a record (not yet validated by the store's rules).
pub(super) fn parse_line(text: &[u8]) -> Result<NewUsage, String> {
    let line: ImportLine = serde_json::from_slice(text).map_err(|err| diagnose(text, &err))?;
    let timestamp = parse_time_field("timestamp", line.timestamp.as_deref())?;
    let feedback_at = parse_time_field("feedback_at", line.feedback_at.as_deref())?;
    let feedback = match line.feedback {
        Some(v) => Some(Feedback {
            value: FeedbackValue::from_i64(v).map_err(describe_store_error)?,
            text: line.feedback_text,
            at: feedback_at,
        }),
        None if line.feedback_text.is_some() => {
            return Err("invalid feedback_text: given without feedback".to_string());
        }
        None if feedback_at.is_some() => {
            return Err("invalid feedback_at: given without feedback".to_string());
        }
        None => None,
    };
    Ok(NewUsage {
        query: line.query,
        response: line.response,
        model: line.model,
        expert: line.expert,
        latency_ms: line.latency_ms,
        token_count: line.token_count,
        quality_score: line.quality_score,
        unit_id: line.unit,
        context_hash: line.context_hash,
        timestamp,
        feedback,
    })
}

/// Parses an optional time field, naming it in the error.
fn parse_time_field(key: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    text.map(|t| parse_timestamp(t).map_err(|reason| format!("invalid {key}: {reason}")))
        .transpose()
}

/// A store validation error in the import file's vocabulary (`unit`, not `unit_id`).
pub(super) fn describe_store_error(err: StoreError) -> String {
    match err {
        StoreError::InvalidInput { field, reason } => {
            let key = match field {
                "unit_id" => "unit",
                "user_feedback" => "feedback",
                other => other,
            };
            format!("invalid {key}: {reason}")
        }
        StoreError::InvalidBatchRecord { source, .. } => describe_store_error(*source),
        other => other.to_string(),
    }
}

/// Explains why a line did not deserialize, naming the key at fault.
///
/// serde's own messages do not say which key had the wrong type, so the line is parsed
/// again as a generic JSON value (only for bad lines) and checked key by key.
fn diagnose(text: &[u8], err: &serde_json::Error) -> String {
    let value: Value = match serde_json::from_slice(text) {
        Ok(value) => value,
        Err(syntax) => return format!("malformed JSON: {}", without_position(&syntax, true)),
    };
    let Value::Object(map) = value else {
        return format!("expected a JSON object, got {}", type_name(&value));
    };
    if let Some(key) = map.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return format!("unknown key {key:?} (known keys: {})", KEYS.join(", "));
    }
    if let Some(key) = ["query", "response", "model"]
        .into_iter()
        .find(|key| !map.contains_key(*key))
    {
        return format!("missing required key {key:?}");
    }
    for (key, value) in &map {
        let (expected, ok) = match key.as_str() {
            "query" | "response" | "model" => ("a string", value.is_string()),
            "latency_ms" | "quality_score" => ("a number", value.is_number() || value.is_null()),
            "feedback" | "user_feedback" => ("one of -1, 0, 1", value.is_i64() || value.is_null()),
            "token_count" => ("an integer", value.is_i64() || value.is_null()),
            _ => ("a string", value.is_string() || value.is_null()),
        };
        if !ok {
            return format!(
                "invalid {key}: expected {expected}, got {}",
                describe_value(value)
            );
        }
    }
    without_position(err, false)
}

/// serde_json's message without its " at line L column C" suffix (the line is always 1
/// here, which would be confused with the file's line number); the column is kept for
/// syntax errors.
fn without_position(err: &serde_json::Error, keep_column: bool) -> String {
    let message = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match message.strip_suffix(&suffix) {
        Some(bare) if keep_column && err.column() > 0 => {
            format!("{bare} at column {}", err.column())
        }
        Some(bare) => bare.to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Result<(), &str>) {
        let got = parse_line(line.as_bytes()).and_then(|r| {
            r.validate(afs_store::DEFAULT_MAX_FIELD_BYTES)
                .map_err(describe_store_error)
        });
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(err), Err(fragment)) => {
                assert!(err.contains(fragment), "{line}: {err:?} lacks {fragment:?}")
            }
            (got, expected) => panic!("{line}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn lines() {
        let ok = Ok(());
        check(r#"{"query":"q","response":"r","model":"m"}"#, ok);
        check(
            r#"{"query":"q","response":"r","model":"m","expert":"e","latency_ms":12.5,"quality_score":0.9,"feedback":-1,"feedback_text":"meh","unit":"u","timestamp":"2025-01-02T03:04:05.123456","token_count":7,"context_hash":"c"}"#,
            ok,
        );
        check(
            r#"{"query":"q","response":"r","model":"m","expert":null,"quality_score":null}"#,
            ok,
        );
        check(r#"{"query":"q","response":"r""#, Err("malformed JSON"));
        check(r#"not json"#, Err("malformed JSON"));
        check(r#"[1,2]"#, Err("expected a JSON object, got an array"));
        check(
            r#"{"query":"q","response":"r"}"#,
            Err("missing required key \"model\""),
        );
        check(
            r#"{"query":"","response":"r","model":"m"}"#,
            Err("invalid query: must not be empty"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","qualty":0.5}"#,
            Err("unknown key \"qualty\""),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","quality_score":1.5}"#,
            Err("invalid quality_score"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","quality_score":"high"}"#,
            Err("invalid quality_score: expected a number, got a string (\"high\")"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback":2}"#,
            Err("invalid feedback: 2 is not one of -1, 0, 1"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback":1.0}"#,
            Err("invalid feedback: expected one of -1, 0, 1"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback_text":"x"}"#,
            Err("feedback_text: given without feedback"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","unit":""}"#,
            Err("invalid unit"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","token_count":-3}"#,
            Err("invalid token_count"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","timestamp":"yesterday"}"#,
            Err("invalid timestamp"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","timestamp":5}"#,
            Err("invalid timestamp: expected a string"),
        );
        check(
            r#"{"query":1,"response":"r","model":"m"}"#,
            Err("invalid query: expected a string, got a number (1)"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","user_feedback":1}"#,
            ok,
        );
        check(
            r#"{"query":"q","response":"r","model":"m","user_feedback":1,"feedback":1}"#,
            Err("duplicate field `feedback`"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback":1,"feedback_at":"2025-01-01T00:00:00Z"}"#,
            ok,
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback_at":"2025-01-01T00:00:00Z"}"#,
            Err("invalid feedback_at: given without feedback"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback":1,"feedback_at":"soon"}"#,
            Err("invalid feedback_at"),
        );
        check(
            r#"{"id":"01J","created_at":"2025-01-01T00:00:00Z","dedupe_hash":"ab","query":"q","response":"r","model":"m"}"#,
            ok,
        );
        check(
            r#"{"id":7,"query":"q","response":"r","model":"m"}"#,
            Err("invalid id: expected a string, got a number (7)"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","query":"again"}"#,
            Err("duplicate field"),
        );
    }

    mod properties {
        use super::*;
        use crate::record_strategies::{out_of_range, same, valid_record};
        use proptest::prelude::*;
        use serde_json::json;

        /// Parses and validates, as `afs import` does.
        fn import(text: &[u8]) -> Result<NewUsage, String> {
            parse_line(text).and_then(|r| {
                r.validate(afs_store::DEFAULT_MAX_FIELD_BYTES)
                    .map_err(describe_store_error)?;
                Ok(r)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Every record within the documented ranges survives the trip through a line.
            #[test]
            fn a_valid_record_round_trips((line, want) in valid_record()) {
                same(&import(line.to_string().as_bytes()).unwrap(), &want)?;
            }

            /// A number outside its documented range is refused, naming its key.
            #[test]
            fn a_number_out_of_range_names_its_key((key, value) in out_of_range()) {
                let mut line = json!({"query": "q", "response": "r", "model": "m"});
                line.as_object_mut().unwrap().insert(key.into(), value);
                let err = import(line.to_string().as_bytes()).unwrap_err();
                prop_assert!(err.contains(key), "{}: {}", line, err);
            }

            /// Any bytes at all: an answer (a record or a message), never a panic, and a
            /// refusal always says something.
            #[test]
            fn any_bytes_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Err(message) = import(&bytes) {
                    prop_assert!(!message.trim().is_empty());
                }
            }

            /// Mutations of a valid line: an answer, never a panic.
            #[test]
            fn mutated_lines_get_an_answer(
                at in 0..120usize,
                byte in any::<u8>(),
            ) {
                let line = br#"{"query":"q","response":"r","model":"m","latency_ms":12.5,"token_count":7,"feedback":1,"unit":"u"}"#;
                let mut bytes = line.to_vec();
                let at = at % bytes.len();
                bytes[at] = byte;
                if let Err(message) = import(&bytes) {
                    prop_assert!(!message.trim().is_empty());
                }
            }
        }
    }
}
