//! One usage record as JSON: the one parser of `afs import` lines and of `afs serve`'s
//! `POST /v1/usage` bodies, with one description of every error.
//!
//! A record has the keys `query`, `response`, `model` (required), `expert`, `latency_ms`,
//! `quality_score`, `feedback` (-1, 0, 1), `feedback_text`, `unit`, `timestamp`,
//! `token_count`, `context_hash` and `messages` (a conversation: an array of `{role,
//! content}` objects; with it, `query` and `response` may be left out and are then its last
//! user turn and final assistant turn). Where the two callers really differ, a [`Dialect`]
//! says so: `afs import` also takes the keys of `afs records` output and `afs prune`
//! archives ([`IMPORT`]); the HTTP API does not ([`API`]). Line numbers (import) and
//! `records[i].` paths (API batches) are the callers' own.
//!
//! Records are parsed straight into a typed struct ([`RecordFields`], the fast path: no
//! allocation beyond the record's own strings); only input that fails is parsed again as a
//! generic JSON value to find and name the key at fault ([`diagnose`]). Every error about
//! one key reads `invalid KEY: REASON` (e.g. `invalid quality_score: expected a number, got a
//! string ("high")`, `invalid model: missing required key`); the API also sends the key as
//! its `field`.

use std::fmt;

use afs_store::{Feedback, FeedbackValue, Message, NewUsage, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::output::{describe_json_value, json_type_name};
use crate::time_arg::parse_timestamp;

/// Every key a record may have: the first [`N_COMMON_KEYS`] in every dialect, the rest only
/// with [`Dialect::archive_keys`].
const KEYS: [&str; 18] = [
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
    "messages",
    "user_feedback",
    "feedback_at",
    "id",
    "created_at",
    "dedupe_hash",
];

/// How many of [`KEYS`] every dialect accepts.
const N_COMMON_KEYS: usize = 13;

/// The keys a record must have; `query` and `response` only when it has no `messages`.
const REQUIRED_KEYS: [&str; 3] = ["query", "response", "model"];

/// The roles a turn of `messages` may have, as the input names them.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// What differs between the callers of the parser.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// Whether the keys of `afs records` output and of `afs prune` archives are accepted
    /// too, so that those files import as they are: `user_feedback` (another name for
    /// `feedback`), `feedback_at`, and `id`, `created_at`, `dedupe_hash` (checked to be
    /// strings and ignored: the store assigns its own).
    pub(crate) archive_keys: bool,
    /// What one input is called in messages (`the body is empty`).
    pub(crate) input: &'static str,
}

/// `afs import`: one line of a JSON Lines file, archive keys accepted.
pub(crate) const IMPORT: Dialect = Dialect {
    archive_keys: true,
    input: "line",
};

/// `afs serve`'s HTTP API: one record of a request body.
pub(crate) const API: Dialect = Dialect {
    archive_keys: false,
    input: "body",
};

impl Dialect {
    /// The keys a record may have in this dialect.
    fn keys(self) -> &'static [&'static str] {
        if self.archive_keys {
            &KEYS
        } else {
            &KEYS[..N_COMMON_KEYS]
        }
    }

    /// The error for a key this dialect does not know, suggesting the known key it most
    /// likely misspells, as the CLI does for flags.
    fn unknown_key(self, key: &str) -> RecordError {
        let suggestion = match closest_key(key, self.keys()) {
            Some(known) => format!(", did you mean {known}?"),
            None => String::new(),
        };
        RecordError::at(
            key,
            format!(
                "unknown key{suggestion} (known keys: {})",
                self.keys().join(", ")
            ),
        )
    }
}

/// The known key `key` most likely stands for: a common other name for it (`unit_id`,
/// `user_id`, `quality`, ...), or the nearest by edit distance when the distance is small
/// for the key's length (at most 1 for up to 4 characters, 2 up to 8, 3 beyond).
fn closest_key(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    let alias = match lower.as_str() {
        "unit_id" | "user_id" | "user" | "session_id" | "session" => Some("unit"),
        "quality" | "score" => Some("quality_score"),
        "latency" => Some("latency_ms"),
        "tokens" => Some("token_count"),
        "prompt" | "input" | "question" => Some("query"),
        "completion" | "output" | "answer" => Some("response"),
        "time" | "ts" | "created" => Some("timestamp"),
        _ => None,
    };
    if let Some(alias) = alias.filter(|a| known.contains(a)) {
        return Some(alias);
    }
    let limit = match lower.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordError {
    /// The key at fault, as the input names it (`unit`, not the store's `unit_id`); `None`
    /// when the input as a whole is wrong (malformed JSON, not an object).
    pub(crate) key: Option<String>,
    /// What is wrong, without the key.
    pub(crate) reason: String,
}

impl RecordError {
    /// An error about `key`.
    fn at(key: &str, reason: impl Into<String>) -> Self {
        RecordError {
            key: Some(key.to_string()),
            reason: reason.into(),
        }
    }

    /// An error about the input as a whole.
    fn whole(reason: impl Into<String>) -> Self {
        RecordError {
            key: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "invalid {key}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl From<StoreError> for RecordError {
    /// A store validation error in the input's vocabulary (`unit`, not `unit_id`).
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidInput { field, reason } => RecordError::at(key_of(field), reason),
            StoreError::InvalidBatchRecord { source, .. } => RecordError::from(*source),
            other => RecordError::whole(other.to_string()),
        }
    }
}

/// The input's name of a store field: the store says `unit_id` and `user_feedback` where
/// records say `unit` and `feedback` (the HTTP API's `field` of a store error too).
pub(crate) fn key_of(store_field: &str) -> &str {
    match store_field {
        "unit_id" => "unit",
        "user_feedback" => "feedback",
        other => other,
    }
}

/// A key that may be absent, `null` or a value; unlike `Option`, it tells absent from null
/// (for keys only some dialects accept, and for `feedback` given under both its names).
#[derive(Debug, Default)]
enum Given<T> {
    #[default]
    Absent,
    Present(Option<T>),
}

impl<T> Given<T> {
    fn is_present(&self) -> bool {
        matches!(self, Given::Present(_))
    }

    fn into_option(self) -> Option<T> {
        match self {
            Given::Absent => None,
            Given::Present(value) => value,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(deserializer).map(Given::Present)
    }
}

/// One record as the input has it: the typed fast path. Turn it into a record with
/// [`RecordFields::into_usage`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordFields {
    #[serde(default)]
    query: Given<String>,
    #[serde(default)]
    response: Given<String>,
    model: String,
    expert: Option<String>,
    latency_ms: Option<f64>,
    quality_score: Option<f64>,
    #[serde(default)]
    feedback: Given<i64>,
    feedback_text: Option<String>,
    unit: Option<String>,
    timestamp: Option<String>,
    token_count: Option<i64>,
    context_hash: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(default)]
    user_feedback: Given<i64>,
    #[serde(default)]
    feedback_at: Given<String>,
    #[serde(default)]
    id: Given<String>,
    #[serde(default)]
    created_at: Given<String>,
    #[serde(default)]
    dedupe_hash: Given<String>,
}

impl RecordFields {
    /// The record, checked by `dialect`'s keys and the store's rules (fields at most
    /// `max_field_bytes`).
    pub(crate) fn into_usage(
        self,
        dialect: Dialect,
        max_field_bytes: usize,
    ) -> Result<NewUsage, RecordError> {
        if !dialect.archive_keys {
            let archive_key = [
                ("user_feedback", self.user_feedback.is_present()),
                ("feedback_at", self.feedback_at.is_present()),
                ("id", self.id.is_present()),
                ("created_at", self.created_at.is_present()),
                ("dedupe_hash", self.dedupe_hash.is_present()),
            ]
            .into_iter()
            .find_map(|(key, given)| given.then_some(key));
            if let Some(key) = archive_key {
                return Err(dialect.unknown_key(key));
            }
        }
        if self.feedback.is_present() && self.user_feedback.is_present() {
            return Err(feedback_twice());
        }
        let has_messages = self.messages.is_some();
        let query = turn_text("query", self.query, has_messages)?;
        let response = turn_text("response", self.response, has_messages)?;
        let feedback = self
            .feedback
            .into_option()
            .or(self.user_feedback.into_option());
        let timestamp = parse_time("timestamp", self.timestamp.as_deref())?;
        let feedback_at = parse_time("feedback_at", self.feedback_at.into_option().as_deref())?;
        let feedback = match feedback {
            Some(v) => Some(Feedback {
                value: FeedbackValue::from_i64(v)?,
                text: self.feedback_text,
                at: feedback_at,
            }),
            None if self.feedback_text.is_some() => {
                return Err(RecordError::at("feedback_text", "given without feedback"));
            }
            None if feedback_at.is_some() => {
                return Err(RecordError::at("feedback_at", "given without feedback"));
            }
            None => None,
        };
        let mut usage = NewUsage {
            query,
            response,
            model: self.model,
            expert: self.expert,
            latency_ms: self.latency_ms,
            token_count: self.token_count,
            quality_score: self.quality_score,
            unit_id: self.unit,
            context_hash: self.context_hash,
            timestamp,
            feedback,
            messages: self.messages,
        };
        usage.fill_turns();
        usage.validate(max_field_bytes)?;
        Ok(usage)
    }
}

/// The text of `query` or `response` (`key`): required without `messages`, and then
/// filled in from them when absent (left empty here).
fn turn_text(key: &str, given: Given<String>, has_messages: bool) -> Result<String, RecordError> {
    match given {
        Given::Present(Some(text)) => Ok(text),
        Given::Present(None) => Err(RecordError::at(
            key,
            format!(
                "expected a string, got {}",
                describe_json_value(&Value::Null)
            ),
        )),
        Given::Absent if has_messages => Ok(String::new()),
        Given::Absent => Err(RecordError::at(key, "missing required key")),
    }
}

/// Parses a conversation given on its own (`afs log --messages`): a JSON array of `{role,
/// content}` objects, with errors naming the turn at fault (`messages[2].role`).
pub(crate) fn parse_messages(text: &str) -> Result<Vec<Message>, RecordError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| RecordError::at("messages", malformed_json(&e, IMPORT)))?;
    if let Some(err) = diagnose_messages(&value) {
        return Err(err);
    }
    if value.is_null() {
        return Err(RecordError::at("messages", "expected an array, got null"));
    }
    serde_json::from_value(value).map_err(|e| RecordError::at("messages", e.to_string()))
}

/// The first problem of a `messages` value: not an array (or null), a turn that is not an
/// object of exactly `role` and `content`, an unknown role, a content that is not a string.
fn diagnose_messages(value: &Value) -> Option<RecordError> {
    let items = match value {
        Value::Null => return None,
        Value::Array(items) => items,
        other => {
            return Some(RecordError::at(
                "messages",
                format!(
                    "expected an array of {{role, content}} objects, got {}",
                    describe_json_value(other)
                ),
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Object(turn) = item else {
            return Some(RecordError::at(
                &format!("messages[{i}]"),
                format!(
                    "expected a {{role, content}} object, got {}",
                    describe_json_value(item)
                ),
            ));
        };
        if let Some(key) = turn
            .keys()
            .find(|k| !["role", "content"].contains(&k.as_str()))
        {
            return Some(RecordError::at(
                &format!("messages[{i}].{key}"),
                "unknown key (known keys: role, content)",
            ));
        }
        match turn.get("role") {
            None => {
                return Some(RecordError::at(
                    &format!("messages[{i}].role"),
                    "missing required key",
                ))
            }
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(role) => {
                return Some(RecordError::at(
                    &format!("messages[{i}].role"),
                    format!(
                        "expected one of {}, got {}",
                        ROLES.join(", "),
                        describe_json_value(role)
                    ),
                ))
            }
        }
        match turn.get("content") {
            None => {
                return Some(RecordError::at(
                    &format!("messages[{i}].content"),
                    "missing required key",
                ))
            }
            Some(Value::String(_)) => {}
            Some(content) => {
                return Some(RecordError::at(
                    &format!("messages[{i}].content"),
                    format!("expected a string, got {}", describe_json_value(content)),
                ))
            }
        }
    }
    None
}

fn feedback_twice() -> RecordError {
    RecordError::at("feedback", "given twice (as feedback and as user_feedback)")
}

/// Parses an optional time, naming its key in the error.
fn parse_time(key: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, RecordError> {
    text.map(|t| parse_timestamp(t).map_err(|reason| RecordError::at(key, reason)))
        .transpose()
}

/// Parses and checks one record (a JSON object), as `dialect` reads it.
pub(crate) fn parse(
    text: &[u8],
    dialect: Dialect,
    max_field_bytes: usize,
) -> Result<NewUsage, RecordError> {
    match serde_json::from_slice::<RecordFields>(text) {
        Ok(fields) => fields.into_usage(dialect, max_field_bytes),
        Err(err) => Err(explain(text, &err, dialect)),
    }
}

/// Explains why `text` did not deserialize as one record (`err`), naming the key at fault.
///
/// serde's own messages do not say which key had the wrong type, so the text is parsed
/// again as a generic JSON value (only for bad input) and checked key by key.
fn explain(text: &[u8], err: &serde_json::Error, dialect: Dialect) -> RecordError {
    match serde_json::from_slice::<Value>(text) {
        Ok(value) => {
            diagnose(&value, dialect).unwrap_or_else(|| RecordError::whole(without_position(err)))
        }
        Err(syntax) => RecordError::whole(malformed_json(&syntax, dialect)),
    }
}

/// The first problem of one record given as a JSON value, as `dialect` reads it: not an
/// object, an unknown key, a missing required key, or a value of the wrong type. `None`
/// when none of these is wrong (the typed parse then says what is).
pub(crate) fn diagnose(value: &Value, dialect: Dialect) -> Option<RecordError> {
    let Value::Object(map) = value else {
        return Some(RecordError::whole(format!(
            "expected a JSON object, got {}",
            json_type_name(value)
        )));
    };
    let keys = dialect.keys();
    if let Some(key) = map.keys().find(|key| !keys.contains(&key.as_str())) {
        return Some(dialect.unknown_key(key));
    }
    let has_messages = map.get("messages").is_some_and(|m| !m.is_null());
    if let Some(key) = REQUIRED_KEYS
        .into_iter()
        .filter(|key| !has_messages || *key == "model")
        .find(|key| !map.contains_key(*key))
    {
        return Some(RecordError::at(key, "missing required key"));
    }
    if map.contains_key("feedback") && map.contains_key("user_feedback") {
        return Some(feedback_twice());
    }
    for (key, value) in map {
        if key == "messages" {
            if let Some(err) = diagnose_messages(value) {
                return Some(err);
            }
            continue;
        }
        let (expected, ok) = match key.as_str() {
            "query" | "response" | "model" => ("a string", value.is_string()),
            "latency_ms" | "quality_score" => ("a number", value.is_number() || value.is_null()),
            "feedback" | "user_feedback" => ("one of -1, 0, 1", value.is_i64() || value.is_null()),
            "token_count" => ("an integer", value.is_i64() || value.is_null()),
            _ => ("a string", value.is_string() || value.is_null()),
        };
        if !ok {
            return Some(RecordError::at(
                key,
                format!("expected {expected}, got {}", describe_json_value(value)),
            ));
        }
    }
    None
}

/// A syntax error in the input: `malformed JSON: ...`, with the column (and the line, when
/// the input has several lines); an empty input says so.
pub(crate) fn malformed_json(err: &serde_json::Error, dialect: Dialect) -> String {
    if err.is_eof() && err.line() == 1 && err.column() == 0 {
        return format!("malformed JSON: the {} is empty", dialect.input);
    }
    let bare = without_position(err);
    match (err.line(), err.column()) {
        (_, 0) => format!("malformed JSON: {bare}"),
        (1, column) => format!("malformed JSON: {bare} at column {column}"),
        (line, column) => format!("malformed JSON: {bare} at line {line} column {column}"),
    }
}

/// serde_json's message without its " at line L column C" suffix.
pub(crate) fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match message.strip_suffix(&suffix) {
        Some(bare) => bare.to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` in `dialect` and checks the outcome: a record, or an error whose
    /// description contains `fragment`.
    fn check_in(dialect: Dialect, text: &str, expected: Result<(), &str>) {
        let got = parse(text.as_bytes(), dialect, afs_store::DEFAULT_MAX_FIELD_BYTES);
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(err), Err(fragment)) => {
                let message = err.to_string();
                assert!(
                    message.contains(fragment),
                    "{text}: {message:?} lacks {fragment:?}"
                )
            }
            (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
        }
    }

    /// Both dialects answer the same.
    fn check(text: &str, expected: Result<(), &str>) {
        check_in(IMPORT, text, expected);
        check_in(API, text, expected);
    }

    #[test]
    fn records() {
        let ok = Ok(());
        check(r#"{"query":"q","response":"r","model":"m"}"#, ok);
        check(
            r#"{"query":"q","response":"r","model":"m","expert":"e","latency_ms":12.5,"quality_score":0.9,"feedback":-1,"feedback_text":"meh","unit":"u","timestamp":"2025-01-02T03:04:05.123456","token_count":7,"context_hash":"c"}"#,
            ok,
        );
        check(
            r#"{"query":"q","response":"r","model":"m","expert":null,"quality_score":null,"feedback":null}"#,
            ok,
        );
        check(
            r#"{"query":"q","response":"r""#,
            Err("malformed JSON: EOF while parsing an object at column 27"),
        );
        check(
            "{\"query\":\"q\",\n\"response\":}",
            Err("malformed JSON: expected value at line 2 column 12"),
        );
        check(r#"not json"#, Err("malformed JSON"));
        check_in(API, "", Err("malformed JSON: the body is empty"));
        check(r#"[1,2]"#, Err("expected a JSON object, got an array"));
        check(
            r#"{"query":"q","response":"r"}"#,
            Err("invalid model: missing required key"),
        );
        check(
            r#"{"query":"","response":"r","model":"m"}"#,
            Err("invalid query: must not be empty"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","qualty":0.5}"#,
            Err("invalid qualty: unknown key (known keys: query, response, model, expert, latency_ms, quality_score, feedback, feedback_text, unit, timestamp, token_count, context_hash"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","qualty_score":0.5}"#,
            Err("invalid qualty_score: unknown key, did you mean quality_score? (known keys: "),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","unit_id":"u1"}"#,
            Err("invalid unit_id: unknown key, did you mean unit? (known keys: "),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","quality_score":1.5}"#,
            Err("invalid quality_score: 1.5 is outside [0, 1]"),
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
            Err("invalid feedback: expected one of -1, 0, 1, got a number (1.0)"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","feedback_text":"x"}"#,
            Err("invalid feedback_text: given without feedback"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","unit":""}"#,
            Err("invalid unit: must not be empty"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","token_count":-3}"#,
            Err("invalid token_count"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","timestamp":"yesterday"}"#,
            Err("invalid timestamp: \"yesterday\" is not an RFC 3339 time"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","timestamp":5}"#,
            Err("invalid timestamp: expected a string, got a number (5)"),
        );
        check(
            r#"{"query":1,"response":"r","model":"m"}"#,
            Err("invalid query: expected a string, got a number (1)"),
        );
        check(
            r#"{"query":"q","response":"r","model":"m","query":"again"}"#,
            Err("duplicate field `query`"),
        );
    }

    #[test]
    fn conversations() {
        let ok = Ok(());
        let turns = r#"[{"role":"system","content":"s"},{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"},{"role":"assistant","content":"a2"}]"#;
        let with = |rest: &str| format!(r#"{{"model":"m","messages":{turns}{rest}}}"#);
        check(&with(""), ok);
        check(&with(r#","query":"q2","response":"a2""#), ok);
        check(
            &with(r#","query":"q1""#),
            Err("invalid query: must be the last user turn of messages"),
        );
        check(
            &with(r#","response":"a1""#),
            Err("invalid response: must be the final assistant turn of messages"),
        );
        check(
            &with(r#","query":null"#),
            Err("invalid query: expected a string, got null"),
        );
        let got = parse(with("").as_bytes(), API, afs_store::DEFAULT_MAX_FIELD_BYTES).unwrap();
        assert_eq!((got.query.as_str(), got.response.as_str()), ("q2", "a2"));
        assert_eq!(got.messages.as_ref().map(Vec::len), Some(5));
        check(
            r#"{"model":"m","messages":null}"#,
            Err("invalid query: missing required key"),
        );
        check(
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#,
            Err("invalid model: missing required key"),
        );
        check(
            r#"{"model":"m","messages":"hi"}"#,
            Err("invalid messages: expected an array of {role, content} objects, got a string (\"hi\")"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},"a"]}"#,
            Err("invalid messages[1]: expected a {role, content} object, got a string"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"robot","content":"a"}]}"#,
            Err("invalid messages[1].role: expected one of system, user, assistant, tool, got a string (\"robot\")"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"assistant","text":"a"}]}"#,
            Err("invalid messages[1].text: unknown key (known keys: role, content)"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"assistant"}]}"#,
            Err("invalid messages[1].content: missing required key"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"assistant","content":7}]}"#,
            Err("invalid messages[1].content: expected a string, got a number (7)"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}"#,
            Err("invalid messages: messages[1].role is system, but only the first turn may be a system turn"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"user","content":"q"}]}"#,
            Err("invalid messages: messages[0].role is user, but a conversation must end with an assistant turn"),
        );
        assert_eq!(
            parse_messages(r#"[{"role":"user","content":"q"},{"role":"tool","content":"t"}]"#)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_messages(r#"[{"role":"bot","content":"q"}]"#)
                .unwrap_err()
                .key
                .as_deref(),
            Some("messages[0].role")
        );
        assert!(parse_messages("[")
            .unwrap_err()
            .to_string()
            .starts_with("invalid messages: malformed JSON"));
    }

    #[test]
    fn archive_keys_are_imports_only() {
        let import_ok = |text: &str| {
            check_in(IMPORT, text, Ok(()));
            let key = [
                "user_feedback",
                "feedback_at",
                "id",
                "created_at",
                "dedupe_hash",
            ]
            .into_iter()
            .find(|key| text.contains(&format!("\"{key}\"")))
            .unwrap();
            check_in(API, text, Err(&format!("invalid {key}: unknown key")));
        };
        import_ok(r#"{"query":"q","response":"r","model":"m","user_feedback":1}"#);
        import_ok(r#"{"query":"q","response":"r","model":"m","user_feedback":null}"#);
        import_ok(
            r#"{"query":"q","response":"r","model":"m","feedback":1,"feedback_at":"2025-01-01T00:00:00Z"}"#,
        );
        import_ok(
            r#"{"id":"01J","created_at":"2025-01-01T00:00:00Z","dedupe_hash":"ab","query":"q","response":"r","model":"m"}"#,
        );
        import_ok(r#"{"query":"q","response":"r","model":"m","dedupe_hash":null}"#);
        let import_err = |text: &str, fragment: &str| check_in(IMPORT, text, Err(fragment));
        import_err(
            r#"{"query":"q","response":"r","model":"m","user_feedback":1,"feedback":1}"#,
            "invalid feedback: given twice (as feedback and as user_feedback)",
        );
        import_err(
            r#"{"query":"q","response":"r","model":"m","user_feedback":1,"feedback":"x"}"#,
            "invalid feedback: given twice",
        );
        import_err(
            r#"{"query":"q","response":"r","model":"m","user_feedback":5}"#,
            "invalid feedback: 5 is not one of -1, 0, 1",
        );
        import_err(
            r#"{"query":"q","response":"r","model":"m","feedback_at":"2025-01-01T00:00:00Z"}"#,
            "invalid feedback_at: given without feedback",
        );
        import_err(
            r#"{"query":"q","response":"r","model":"m","feedback":1,"feedback_at":"soon"}"#,
            "invalid feedback_at",
        );
        import_err(
            r#"{"id":7,"query":"q","response":"r","model":"m"}"#,
            "invalid id: expected a string, got a number (7)",
        );
        import_err(
            r#"{"query":"q","response":"r","model":"m","qualty":0.5}"#,
            "context_hash, messages, user_feedback, feedback_at, id, created_at, dedupe_hash)",
        );
    }

    mod properties {
        use super::*;
        use crate::record_strategies::{out_of_range, same, valid_record};
        use proptest::prelude::*;
        use serde_json::json;

        const LIMIT: usize = afs_store::DEFAULT_MAX_FIELD_BYTES;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Every record within the documented ranges reads the same in both dialects.
            #[test]
            fn a_valid_record_round_trips((record, want) in valid_record()) {
                let text = record.to_string();
                same(&parse(text.as_bytes(), IMPORT, LIMIT).unwrap(), &want)?;
                same(&parse(text.as_bytes(), API, LIMIT).unwrap(), &want)?;
            }

            /// A number outside its documented range is refused naming its key, with the
            /// same message in both dialects.
            #[test]
            fn a_number_out_of_range_names_its_key((key, value) in out_of_range()) {
                let mut record = json!({"query": "q", "response": "r", "model": "m"});
                record.as_object_mut().unwrap().insert(key.into(), value);
                let text = record.to_string();
                let err = parse(text.as_bytes(), IMPORT, LIMIT).unwrap_err();
                prop_assert_eq!(err.key.as_deref(), Some(key), "{}: {}", record, err);
                prop_assert_eq!(parse(text.as_bytes(), API, LIMIT).unwrap_err(), err);
            }

            /// A value of the wrong type is refused naming its key, the expected type and
            /// what was found, the same in both dialects.
            #[test]
            fn a_wrong_type_names_key_expected_and_found(
                which in 0..12usize,
                value in prop_oneof![
                    Just(json!(true)), Just(json!([1])), Just(json!({"a": 1})),
                    Just(json!("text")), Just(json!(2.5)),
                ],
            ) {
                let key = KEYS[which];
                let mut record = json!({"query": "q", "response": "r", "model": "m"});
                record.as_object_mut().unwrap().insert(key.into(), value.clone());
                let text = record.to_string();
                if let Err(err) = parse(text.as_bytes(), IMPORT, LIMIT) {
                    prop_assert_eq!(err.key.as_deref(), Some(key), "{}", err);
                    prop_assert_eq!(parse(text.as_bytes(), API, LIMIT).unwrap_err(), err.clone());
                    if err.reason.starts_with("expected") {
                        prop_assert!(err.reason.contains(json_type_name(&value)), "{}", err);
                    }
                } else {
                    prop_assert!(parse(text.as_bytes(), API, LIMIT).is_ok());
                }
            }

            /// Any bytes at all: an answer (a record or a message), never a panic, and a
            /// refusal always says something, the same in both dialects (but for what
            /// only the import takes).
            #[test]
            fn any_bytes_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Err(message) = parse(&bytes, IMPORT, LIMIT) {
                    prop_assert!(!message.to_string().trim().is_empty());
                }
                if let Err(message) = parse(&bytes, API, LIMIT) {
                    prop_assert!(!message.to_string().trim().is_empty());
                }
            }

            /// Mutations of a valid record: an answer, never a panic.
            #[test]
            fn mutated_records_get_an_answer(
                at in 0..120usize,
                byte in any::<u8>(),
            ) {
                let line = br#"{"query":"q","response":"r","model":"m","latency_ms":12.5,"token_count":7,"feedback":1,"unit":"u"}"#;
                let mut bytes = line.to_vec();
                let at = at % bytes.len();
                bytes[at] = byte;
                let import = parse(&bytes, IMPORT, LIMIT);
                if let Err(message) = &import {
                    prop_assert!(!message.to_string().trim().is_empty());
                }
                let api = parse(&bytes, API, LIMIT);
                // A mutation cannot make an archive key of a common one, so the dialects agree
                // on the outcome and the key at fault (the list of known keys differs).
                let key = |r: &Result<NewUsage, RecordError>| r.as_ref().err().map(|e| e.key.clone());
                prop_assert_eq!(import.is_ok(), api.is_ok());
                prop_assert_eq!(key(&import), key(&api));
            }
        }
    }
}
