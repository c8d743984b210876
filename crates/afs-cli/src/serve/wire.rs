//! The API's request formats: usage records (one or a batch), feedback, and query
//! parameters, parsed into the store's types with errors that name the field at fault.
//!
//! A record is parsed by [`crate::record_json`] (the parser of `afs import` lines too) in
//! its [`API`] dialect: the same keys, fast path and messages; here are only the shapes of
//! a body (one record, an array, `{"records": [...]}`) and the `records[i].` paths of a
//! batch.

use afs_store::{FeedbackValue, NewUsage};
use axum::extract::Query;
use axum::http::Uri;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::output::{describe_json_value as describe_value, json_type_name as type_name};
use crate::record_json::{self, RecordError, RecordFields, API};
use crate::time_arg::parse_time_arg;

/// A batch sent as `{"records": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    records: Vec<RecordFields>,
}

/// What a `POST /v1/usage` body holds.
#[derive(Debug)]
pub(super) enum UsageBody {
    /// One record (a JSON object): answered with `{"id": ...}`.
    One(Box<NewUsage>),
    /// A batch (a JSON array, or `{"records": [...]}`): answered with `{"ids": [...]}`.
    Batch(Vec<NewUsage>),
}

/// Parses and validates a `POST /v1/usage` body. A batch is refused whole when any record
/// is bad, naming it as `records[i].field`; above `max_batch` records it is refused too.
pub(super) fn parse_usage(
    body: &[u8],
    max_field_bytes: usize,
    max_batch: usize,
) -> Result<UsageBody, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let records: Vec<RecordFields> = if first == Some(b'[') {
        serde_json::from_slice(body).map_err(|e| diagnose_batch(body, &e))?
    } else {
        match serde_json::from_slice::<RecordFields>(body) {
            Ok(record) => {
                return record
                    .into_usage(API, max_field_bytes)
                    .map(|r| UsageBody::One(Box::new(r)))
                    .map_err(|e| api_error(e, None))
            }
            Err(single_err) => match serde_json::from_slice::<BatchIn>(body) {
                Ok(batch) => batch.records,
                Err(_) => return Err(diagnose_object(body, &single_err)),
            },
        }
    };
    if records.len() > max_batch {
        return Err(ApiError::invalid(
            "records",
            format!(
                "{} records exceed the limit of {max_batch} per batch",
                records.len()
            ),
        ));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_usage(API, max_field_bytes)
                .map_err(|e| api_error(e, Some(i)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(UsageBody::Batch)
}

/// A record's error as an API error: its key is the `field` (`records[i].key` for the
/// record at `index` of a batch); an error about the whole record names `records[i]` in a
/// batch, and no field for a single record.
fn api_error(err: RecordError, index: Option<usize>) -> ApiError {
    match (index, err.key) {
        (None, Some(key)) => ApiError::invalid(key, err.reason),
        (None, None) => ApiError::malformed(err.reason),
        (Some(i), Some(key)) => ApiError::invalid(format!("records[{i}].{key}"), err.reason),
        (Some(i), None) => ApiError::invalid(format!("records[{i}]"), err.reason),
    }
}

/// The message for a body that is neither a record nor a batch.
fn not_a_body(value: &Value) -> ApiError {
    ApiError::malformed(format!(
        "expected a record, an array of records or {{\"records\": [...]}}, got {}",
        type_name(value)
    ))
}

/// Explains why a batch array did not parse, naming `records[i].key`.
fn diagnose_batch(body: &[u8], err: &serde_json::Error) -> ApiError {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => diagnose_records(&items, err),
        Ok(other) => not_a_body(&other),
        Err(syntax) => malformed(&syntax),
    }
}

/// Explains why an object body did not parse, as one record or as `{"records": [...]}`.
fn diagnose_object(body: &[u8], err: &serde_json::Error) -> ApiError {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(syntax) => return malformed(&syntax),
    };
    let Value::Object(map) = &value else {
        return not_a_body(&value);
    };
    if let Some(records) = map.get("records") {
        if let Some(key) = map.keys().find(|k| k.as_str() != "records") {
            return ApiError::invalid(
                key.clone(),
                "unknown key beside \"records\" (a batch is {\"records\": [...]})",
            );
        }
        return match records {
            Value::Array(items) => diagnose_records(items, err),
            other => ApiError::invalid(
                "records",
                format!(
                    "expected an array of records, got {}",
                    describe_value(other)
                ),
            ),
        };
    }
    record_json::diagnose(&value, API).map_or_else(
        || ApiError::malformed(record_json::without_position(err)),
        |e| api_error(e, None),
    )
}

/// The first bad record of a batch, named `records[i]`.
fn diagnose_records(items: &[Value], err: &serde_json::Error) -> ApiError {
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| record_json::diagnose(item, API).map(|e| api_error(e, Some(i))))
        .unwrap_or_else(|| ApiError::malformed(record_json::without_position(err)))
}

/// A feedback value, or why it is none (`2 is not one of -1, 0, 1`, as for a record).
fn feedback_value(value: i64) -> Result<FeedbackValue, String> {
    FeedbackValue::from_i64(value).map_err(|e| RecordError::from(e).reason)
}

/// The body of `POST /v1/feedback`.
#[derive(Debug)]
pub(super) struct FeedbackIn {
    /// The record's id.
    pub(super) id: String,
    /// The feedback.
    pub(super) value: FeedbackValue,
    /// An optional comment.
    pub(super) text: Option<String>,
}

/// Parses `{"id": "...", "value": -1|0|1, "text": "..."}`; `value` may also be `true` (1) or
/// `false` (-1), as the seed's `is_positive`.
pub(super) fn parse_feedback(body: &[u8], max_field_bytes: usize) -> Result<FeedbackIn, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let Value::Object(map) = value else {
        return Err(ApiError::malformed(format!(
            "expected a JSON object {{\"id\", \"value\", \"text\"}}, got {}",
            type_name(&value)
        )));
    };
    if let Some(key) = map
        .keys()
        .find(|k| !["id", "value", "text"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            key.clone(),
            "unknown key (known keys: id, value, text)",
        ));
    }
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        Some(Value::String(_)) => return Err(ApiError::invalid("id", "must not be empty")),
        Some(other) => {
            return Err(ApiError::invalid(
                "id",
                format!("expected a string, got {}", describe_value(other)),
            ))
        }
        None => return Err(ApiError::invalid("id", "missing required key")),
    };
    let value = match map.get("value") {
        Some(Value::Bool(true)) => FeedbackValue::Positive,
        Some(Value::Bool(false)) => FeedbackValue::Negative,
        Some(v) if v.is_i64() => feedback_value(v.as_i64().unwrap_or(i64::MAX))
            .map_err(|r| ApiError::invalid("value", r))?,
        Some(other) => {
            return Err(ApiError::invalid(
                "value",
                format!("expected one of -1, 0, 1, got {}", describe_value(other)),
            ))
        }
        None => return Err(ApiError::invalid("value", "missing required key")),
    };
    let text = match map.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.len() > max_field_bytes => {
            return Err(ApiError::invalid(
                "text",
                format!(
                    "{} bytes exceeds the limit of {max_field_bytes} bytes",
                    text.len()
                ),
            ))
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            return Err(ApiError::invalid(
                "text",
                format!("expected a string, got {}", describe_value(other)),
            ))
        }
    };
    Ok(FeedbackIn { id, value, text })
}

/// Query parameters, checked against the names an endpoint knows.
#[derive(Debug, Default)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of `uri`'s query (percent-decoded); an unknown or repeated name is an
    /// error.
    pub(super) fn parse(uri: &Uri, known: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = match uri.query() {
            Some(_) => {
                Query::<Vec<(String, String)>>::try_from_uri(uri)
                    .map_err(|e| {
                        ApiError::malformed(format!("malformed query string: {}", e.body_text()))
                    })?
                    .0
            }
            None => Vec::new(),
        };
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("unknown query parameter (known: {known})"),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::invalid(name.clone(), "given more than once"));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, if given.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty string parameter.
    pub(super) fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            Some("") => Err(ApiError::invalid(name, "must not be empty")),
            other => Ok(other.map(str::to_string)),
        }
    }

    /// A boolean: `true`/`false`/`1`/`0`; absent is `false`.
    pub(super) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("{other:?} is not true or false"),
            )),
        }
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub(super) fn int(
        &self,
        name: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    name,
                    format!("{text:?} is not an integer from {min} to {max}"),
                )),
            },
        }
    }

    /// A time: RFC 3339, or an age such as `24h` or `7d` (before `now`, from the start of its
    /// minute), as the `--since`/`--until` of `afs stats`.
    pub(super) fn time(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name)
            .map(|text| {
                parse_time_arg(text)
                    .map(|t| t.resolve_to_minute(now))
                    .map_err(|r| ApiError::invalid(name, r))
            })
            .transpose()
    }
}

/// A syntax error in a body, described as for a record.
fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::malformed(record_json::malformed_json(err, API))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `body` and checks the outcome: `Ok(n)` records, or an error naming `field`
    /// (or, for `Err("")`, an error without a field) whose message contains `fragment`.
    fn check(body: &str, expected: Result<usize, (&str, &str)>) {
        let got = parse_usage(body.as_bytes(), 64, 3);
        match (got, expected) {
            (Ok(UsageBody::One(_)), Ok(1)) => {}
            (Ok(UsageBody::Batch(records)), Ok(n)) if records.len() == n => {}
            (Err(err), Err((field, fragment))) => {
                let text = format!("{err:?}");
                assert_eq!(err.status_code(), 400, "{body}");
                if field.is_empty() {
                    assert!(text.contains("field: None"), "{body}: {text}");
                } else {
                    assert!(
                        text.contains(&format!("field: Some({field:?})")),
                        "{body}: {text} does not name {field}"
                    );
                }
                assert!(text.contains(fragment), "{body}: {text} lacks {fragment:?}");
            }
            (got, expected) => panic!("{body}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn usage_bodies() {
        let ok = r#"{"query":"q","response":"r","model":"m"}"#;
        check(ok, Ok(1));
        check(&format!("[{ok},{ok}]"), Ok(2));
        check(&format!("{{\"records\":[{ok},{ok},{ok}]}}"), Ok(3));
        check("[]", Ok(0));
        check(
            r#"{"query":"q","response":"r","model":"m","expert":"e","latency_ms":12,"quality_score":0.5,"feedback":1,"feedback_text":"t","unit":"u","timestamp":"2025-01-02T03:04:05Z","token_count":3,"context_hash":"c"}"#,
            Ok(1),
        );
        check("", Err(("", "the body is empty")));
        check("{\"query\":", Err(("", "malformed JSON")));
        check("42", Err(("", "got a number")));
        check(
            r#"{"query":"q","response":"r"}"#,
            Err(("model", "missing required key")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","qualty":1}"#,
            Err(("qualty", "unknown key")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","quality_score":"high"}"#,
            Err(("quality_score", "expected a number")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","quality_score":1.5}"#,
            Err(("quality_score", "outside [0, 1]")),
        );
        check(
            r#"{"query":"","response":"r","model":"m"}"#,
            Err(("query", "must not be empty")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback":2}"#,
            Err(("feedback", "not one of -1, 0, 1")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback_text":"x"}"#,
            Err(("feedback_text", "without feedback")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","timestamp":"yesterday"}"#,
            Err(("timestamp", "not an RFC 3339 time")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","unit":""}"#,
            Err(("unit", "must not be empty")),
        );
        check(
            &format!(
                "{{\"query\":\"{}\",\"response\":\"r\",\"model\":\"m\"}}",
                "x".repeat(65)
            ),
            Err(("query", "exceeds the limit")),
        );
        check(
            &format!(
                "[{ok},{{\"query\":\"q\",\"response\":\"r\",\"model\":\"m\",\"latency_ms\":-1}}]"
            ),
            Err(("records[1].latency_ms", "finite number >= 0")),
        );
        check(
            &format!("[{ok},{{\"query\":\"q\",\"response\":\"r\",\"model\":7}}]"),
            Err(("records[1].model", "expected a string")),
        );
        check(
            &format!("{{\"records\":[{ok},{ok},{{\"query\":\"q\"}}]}}"),
            Err(("records[2].response", "missing required key")),
        );
        check(
            &format!("{{\"records\":[{ok}],\"extra\":1}}"),
            Err(("extra", "unknown key")),
        );
        check("{\"records\":5}", Err(("records", "expected an array")));
        check("[1]", Err(("records[0]", "expected a JSON object")));
        check(
            &format!("[{ok},{{\"query\":\"q\",\"response\":\"r\",\"model\":\"m\",\"id\":\"x\"}}]"),
            Err(("records[1].id", "unknown key (known keys: query,")),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","user_feedback":1}"#,
            Err(("user_feedback", "unknown key")),
        );
        check(
            "{\"query\":\"q\",\n\"response\":}",
            Err(("", "malformed JSON: expected value at line 2 column 12")),
        );
        check("{\"query\":", Err(("", "at column 9")));
        check(
            &format!("[{ok},{ok},{ok},{ok}]"),
            Err(("records", "exceed the limit of 3")),
        );
    }

    #[test]
    fn feedback_bodies() {
        let check = |body: &str, expected: Result<i64, &str>| match (
            parse_feedback(body.as_bytes(), 8),
            expected,
        ) {
            (Ok(f), Ok(v)) => assert_eq!(f.value.as_i64(), v, "{body}"),
            (Err(e), Err(field)) => {
                let text = format!("{e:?}");
                assert!(text.contains(&format!("Some({field:?})")), "{body}: {text}")
            }
            (got, expected) => panic!("{body}: got {got:?}, expected {expected:?}"),
        };
        check(r#"{"id":"a","value":1}"#, Ok(1));
        check(r#"{"id":"a","value":-1,"text":"bad"}"#, Ok(-1));
        check(r#"{"id":"a","value":true}"#, Ok(1));
        check(r#"{"id":"a","value":false,"text":null}"#, Ok(-1));
        check(r#"{"id":"a","value":0}"#, Ok(0));
        check(r#"{"value":1}"#, Err("id"));
        check(r#"{"id":"","value":1}"#, Err("id"));
        check(r#"{"id":3,"value":1}"#, Err("id"));
        check(r#"{"id":"a"}"#, Err("value"));
        check(r#"{"id":"a","value":2}"#, Err("value"));
        check(r#"{"id":"a","value":"up"}"#, Err("value"));
        check(r#"{"id":"a","value":1,"text":7}"#, Err("text"));
        check(r#"{"id":"a","value":1,"text":"far too long"}"#, Err("text"));
        check(r#"{"id":"a","value":1,"note":"x"}"#, Err("note"));
    }

    #[test]
    fn query_parameters() {
        let uri = |q: &str| format!("/v1/stats?{q}").parse::<Uri>().unwrap();
        let params = Params::parse(
            &uri("model=m%201&by_model=true&limit=5"),
            &["model", "by_model", "limit"],
        )
        .unwrap();
        assert_eq!(params.text("model").unwrap().as_deref(), Some("m 1"));
        assert!(params.flag("by_model").unwrap());
        assert_eq!(params.int("limit", 20, 1, 10).unwrap(), 5);
        assert!(params.int("absent", 20, 1, 10).is_ok());
        let err = Params::parse(&uri("modle=x"), &["model"]).unwrap_err();
        assert!(format!("{err:?}").contains("Some(\"modle\")"));
        let err = Params::parse(&uri("model=a&model=b"), &["model"]).unwrap_err();
        assert!(format!("{err:?}").contains("more than once"));
        let params = Params::parse(&uri("limit=0&since=soon"), &["limit", "since"]).unwrap();
        assert!(params.int("limit", 20, 1, 10).is_err());
        assert!(params.time("since", Utc::now()).is_err());
    }

    mod properties {
        use super::*;
        use crate::record_strategies::{out_of_range, same, valid_record};
        use proptest::prelude::*;
        use serde_json::json;

        const LIMIT: usize = afs_store::DEFAULT_MAX_FIELD_BYTES;

        fn one(body: &[u8]) -> Result<NewUsage, ApiError> {
            match parse_usage(body, LIMIT, 1000)? {
                UsageBody::One(record) => Ok(*record),
                UsageBody::Batch(records) => panic!("a batch of {}", records.len()),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Every record within the documented ranges survives the trip through a body,
            /// alone and in a batch of either shape.
            #[test]
            fn a_valid_record_round_trips((record, want) in valid_record(), copies in 1..4usize) {
                same(&one(record.to_string().as_bytes()).unwrap(), &want)?;
                let array = json!(vec![record.clone(); copies]).to_string();
                let wrapped = json!({"records": vec![record; copies]}).to_string();
                for body in [array, wrapped] {
                    match parse_usage(body.as_bytes(), LIMIT, 1000).unwrap() {
                        UsageBody::Batch(records) => {
                            prop_assert_eq!(records.len(), copies);
                            for got in &records {
                                same(got, &want)?;
                            }
                        }
                        UsageBody::One(_) => prop_assert!(false, "a batch parsed as one"),
                    }
                }
            }

            /// A number outside its documented range is refused with 400, naming its key;
            /// in a batch, naming the record too.
            #[test]
            fn a_number_out_of_range_names_its_key((key, value) in out_of_range(), at in 0..3usize) {
                let good = json!({"query": "q", "response": "r", "model": "m"});
                let mut bad = good.clone();
                bad.as_object_mut().unwrap().insert(key.into(), value);
                let err = one(bad.to_string().as_bytes()).unwrap_err();
                prop_assert_eq!(err.status_code(), 400);
                prop_assert!(format!("{err:?}").contains(&format!("field: Some({key:?})")), "{:?}", err);
                let mut batch = vec![good.clone(), good.clone(), good];
                batch[at] = bad;
                let err = match parse_usage(json!(batch).to_string().as_bytes(), LIMIT, 1000) {
                    Err(err) => err,
                    Ok(_) => return Err(TestCaseError::fail("a bad batch was accepted")),
                };
                let want = format!("field: Some(\"records[{at}].{key}\")");
                prop_assert!(format!("{err:?}").contains(&want), "{:?}", err);
            }

            /// Any bytes at all: a record, a batch or a 400 with a message; never a panic.
            #[test]
            fn any_bytes_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Err(err) = parse_usage(&bytes, LIMIT, 1000) {
                    prop_assert_eq!(err.status_code(), 400);
                }
                if let Err(err) = parse_feedback(&bytes, LIMIT) {
                    prop_assert_eq!(err.status_code(), 400);
                }
            }

            /// Mutations of a valid body: an answer, never a panic.
            #[test]
            fn mutated_bodies_get_an_answer(at in 0..200usize, byte in any::<u8>()) {
                let body = br#"[{"query":"q","response":"r","model":"m","latency_ms":12.5,"token_count":7,"feedback":1,"unit":"u"},{"query":"q2","response":"r","model":"m"}]"#;
                let mut bytes = body.to_vec();
                let at = at % bytes.len();
                bytes[at] = byte;
                if let Err(err) = parse_usage(&bytes, LIMIT, 1000) {
                    prop_assert_eq!(err.status_code(), 400);
                }
            }
        }
    }
}
