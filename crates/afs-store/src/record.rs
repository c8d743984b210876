//! Usage records: what a caller logs (`NewUsage`), what the store returns (`UsageRecord`),
//! feedback values and input validation.

use chrono::{DateTime, Datelike, Utc};

use crate::error::{Result, StoreError};
use crate::key::TextKey;

/// Default limit on the size of any one text field, in bytes (1 MiB).
pub const DEFAULT_MAX_FIELD_BYTES: usize = 1024 * 1024;

/// Largest accepted `latency_ms`: one day. Bounded so that the rollups' sums of squares
/// stay far from overflow (a day's worth of records at this bound sums to about 1e26).
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// Largest accepted `token_count`: one billion. At this bound the rollups' integer token
/// sums stay exact for over 9 billion records.
pub const MAX_TOKEN_COUNT: i64 = 1_000_000_000;

/// Largest accepted `model` and `expert` name, in bytes. Names become metric labels and
/// rollup keys, so they are bounded much tighter than free text.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest accepted `unit_id`, in bytes.
pub const MAX_UNIT_ID_BYTES: usize = 1024;

/// Largest accepted number of turns in a record's `messages`. Their total size is bounded
/// by the field limit like any other text field.
pub const MAX_MESSAGES: usize = 1000;

/// First year a stored time may fall in (times are microseconds since 1970).
pub(crate) const MIN_YEAR: i32 = 1970;

/// Year from which times are refused (afs stores microseconds since 1970 in 64-bit
/// integers and record ids carry milliseconds in 48 bits; 2200 leaves room for both).
pub(crate) const MAX_YEAR_EXCLUSIVE: i32 = 2200;

/// A user's judgement of one response: thumbs down, neutral, thumbs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedbackValue {
    /// Thumbs down (-1).
    Negative,
    /// Neutral (0): the user reacted but neither liked nor disliked the response.
    Neutral,
    /// Thumbs up (1).
    Positive,
}

impl FeedbackValue {
    /// The integer the seed's schema stores: -1, 0 or 1.
    pub fn as_i64(self) -> i64 {
        match self {
            FeedbackValue::Negative => -1,
            FeedbackValue::Neutral => 0,
            FeedbackValue::Positive => 1,
        }
    }

    /// Parses -1, 0 or 1; anything else is an `InvalidInput` error naming `user_feedback`.
    pub fn from_i64(value: i64) -> Result<Self> {
        match value {
            -1 => Ok(FeedbackValue::Negative),
            0 => Ok(FeedbackValue::Neutral),
            1 => Ok(FeedbackValue::Positive),
            other => Err(StoreError::invalid(
                "user_feedback",
                format!("{other} is not one of -1, 0, 1"),
            )),
        }
    }
}

/// Feedback attached to a record: the value and an optional free-text comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The value.
    pub value: FeedbackValue,
    /// Optional comment from the user.
    pub text: Option<String>,
    /// When the feedback was given; `None` means "now" when written.
    pub at: Option<DateTime<Utc>>,
}

/// Who speaks a turn of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model; only the first turn may be one.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool the model called; follows an assistant turn (or another tool turn).
    Tool,
}

impl Role {
    /// The role's lowercase name, as stored and as written in training files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One turn of a conversation. Stored as JSON (`{"role": "user", "content": "..."}`), which
/// is why it derives serde although it is a core type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What was said (non-empty).
    pub content: String,
}

impl Message {
    /// A turn of `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The JSON text a backend stores for a conversation: an array of `{role, content}` objects.
pub fn messages_to_json(messages: &[Message]) -> String {
    serde_json::to_string(messages).expect("messages serialise to JSON")
}

/// Reads a conversation stored by [`messages_to_json`]; a backend maps the error to a
/// database error (the column held something afs did not write).
pub fn messages_from_json(text: &str) -> std::result::Result<Vec<Message>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The last user turn and the final turn (the assistant's answer) of a conversation, the
/// texts a conversation's `query` and `response` must hold. `None` where there is no such turn.
pub fn last_turns(messages: &[Message]) -> (Option<&str>, Option<&str>) {
    let query = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str());
    let response = messages
        .last()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str());
    (query, response)
}

/// Whether a conversation says no more than a single-turn record does: one user turn and
/// one assistant turn. Such a record keeps the single-turn keys ([`dedupe_hash`]), so it
/// is a duplicate of the same pair logged without `messages`.
pub(crate) fn is_single_turn(messages: &[Message]) -> bool {
    matches!(
        messages,
        [a, b] if a.role == Role::User && b.role == Role::Assistant
    )
}

/// One model call to log. Only `query`, `response` and `model` are required.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewUsage {
    /// The user's query (non-empty).
    pub query: String,
    /// The model's response (non-empty).
    pub response: String,
    /// Model identifier, e.g. `nayru-v1` (non-empty, at most [`MAX_NAME_BYTES`]).
    pub model: String,
    /// Expert or agent name, if the service routes among several (at most
    /// [`MAX_NAME_BYTES`]).
    pub expert: Option<String>,
    /// Inference latency in milliseconds (finite, within [0, [`MAX_LATENCY_MS`]]).
    pub latency_ms: Option<f64>,
    /// Token count of the call (within [0, [`MAX_TOKEN_COUNT`]]).
    pub token_count: Option<i64>,
    /// Quality score in [0, 1].
    pub quality_score: Option<f64>,
    /// Unit of assignment: a user or session id (for sticky routing and for forgetting a user).
    pub unit_id: Option<String>,
    /// Context identifier (the seed's `context_hash`), free-form.
    pub context_hash: Option<String>,
    /// When the call happened; `None` means the store's clock at logging time.
    pub timestamp: Option<DateTime<Utc>>,
    /// Feedback already known at logging time (e.g. when importing a history).
    pub feedback: Option<Feedback>,
    /// The whole conversation, for a multi-turn call: system (only first), user, assistant
    /// and tool turns in order, ending with the assistant's answer. `query` and `response`
    /// must then be the last user turn and that answer ([`NewUsage::conversation`] fills
    /// them in), so single-turn readers still see the call's last exchange.
    pub messages: Option<Vec<Message>>,
}

/// A stored usage record.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// Unique id. New ids are 26-character ULIDs (sortable by time); rows migrated from the
    /// Python module keep their 12-character ids.
    pub id: String,
    /// When the call happened, UTC.
    pub timestamp: DateTime<Utc>,
    /// The user's query.
    pub query: String,
    /// The model's response.
    pub response: String,
    /// Model identifier.
    pub model: String,
    /// Expert or agent name.
    pub expert: Option<String>,
    /// Inference latency in milliseconds.
    pub latency_ms: Option<f64>,
    /// Token count.
    pub token_count: Option<i64>,
    /// Quality score in [0, 1].
    pub quality_score: Option<f64>,
    /// User feedback.
    pub feedback: Option<FeedbackValue>,
    /// Optional feedback comment.
    pub feedback_text: Option<String>,
    /// When the feedback was given (unknown for feedback written by the Python module).
    pub feedback_at: Option<DateTime<Utc>>,
    /// Unit of assignment (user or session).
    pub unit_id: Option<String>,
    /// Context identifier.
    pub context_hash: Option<String>,
    /// BLAKE3 hex digest of the query and response (see [`dedupe_hash`]).
    pub dedupe_hash: Option<String>,
    /// When the row was written, if known.
    pub created_at: Option<DateTime<Utc>>,
    /// The exact-duplicate key of the query/response pair ([`pair_key`](crate::key::pair_key):
    /// BLAKE3 of the normalised texts), or of the whole conversation for a record with
    /// `messages` ([`record_key`](crate::key::record_key)), written with the record since
    /// schema version 6. `None` for rows written before that or by the Python module.
    pub pair_key: Option<TextKey>,
    /// The whole conversation of a multi-turn call (see [`NewUsage::messages`]).
    pub messages: Option<Vec<Message>>,
}

/// The exact-duplicate key of a query/response pair: BLAKE3 over both texts, each prefixed
/// with its length so that ("ab", "c") and ("a", "bc") differ. Returned as 64 hex digits.
pub fn dedupe_hash(query: &str, response: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(query.len() as u64).to_le_bytes());
    hasher.update(query.as_bytes());
    hasher.update(&(response.len() as u64).to_le_bytes());
    hasher.update(response.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// The exact-duplicate hash of a record: [`dedupe_hash`] of its query and response, or for a
/// conversation of more than one user and one assistant turn, BLAKE3 over every turn's role
/// and content, so conversations that end alike but began differently are not duplicates.
pub fn record_dedupe_hash(query: &str, response: &str, messages: Option<&[Message]>) -> String {
    let Some(messages) = messages.filter(|m| !is_single_turn(m)) else {
        return dedupe_hash(query, response);
    };
    let mut hasher = blake3::Hasher::new();
    // A tag no length prefix of the single-turn hash can start with.
    hasher.update(b"conversation");
    for message in messages {
        hasher.update(message.role.as_str().as_bytes());
        hasher.update(&(message.content.len() as u64).to_le_bytes());
        hasher.update(message.content.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Checks a quality score: finite and within [0, 1].
pub fn validate_quality(quality: f64) -> Result<()> {
    if !quality.is_finite() {
        return Err(StoreError::invalid(
            "quality_score",
            format!("{quality} is not a finite number"),
        ));
    }
    if !(0.0..=1.0).contains(&quality) {
        return Err(StoreError::invalid(
            "quality_score",
            format!("{quality} is outside [0, 1]"),
        ));
    }
    Ok(())
}

/// Checks every score of a batch of `(id, score)` pairs with [`validate_quality`]; the first
/// bad one is an [`StoreError::InvalidBatchRecord`] naming its index.
pub fn validate_qualities(scores: &[(String, f64)]) -> Result<()> {
    for (index, &(_, quality)) in scores.iter().enumerate() {
        validate_quality(quality).map_err(|e| StoreError::InvalidBatchRecord {
            index,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str, required: bool, max_bytes: usize) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(StoreError::invalid(
            field,
            format!(
                "{} bytes exceeds the limit of {max_bytes} bytes",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_optional_text(field: &'static str, value: Option<&str>, max_bytes: usize) -> Result<()> {
    match value {
        Some(v) => check_text(field, v, false, max_bytes),
        None => Ok(()),
    }
}

/// Checks that a time a record carries (`field`) lies in the range the store can keep:
/// from 1970 up to (not including) 2200.
pub fn validate_time(field: &'static str, t: DateTime<Utc>) -> Result<()> {
    if t.timestamp() < 0 || t.year() < MIN_YEAR {
        return Err(StoreError::invalid(field, format!("{t} is before 1970")));
    }
    if t.year() >= MAX_YEAR_EXCLUSIVE {
        return Err(StoreError::invalid(field, format!("{t} is after 2199")));
    }
    Ok(())
}

/// Checks a latency: finite, within [0, [`MAX_LATENCY_MS`]].
pub fn validate_latency(latency: f64) -> Result<()> {
    if !latency.is_finite() || latency < 0.0 {
        return Err(StoreError::invalid(
            "latency_ms",
            format!("{latency} is not a finite number >= 0"),
        ));
    }
    if latency > MAX_LATENCY_MS {
        return Err(StoreError::invalid(
            "latency_ms",
            format!("{latency} is above the limit of 86400000 (one day in milliseconds)"),
        ));
    }
    Ok(())
}

/// Checks a token count: within [0, [`MAX_TOKEN_COUNT`]].
pub fn validate_token_count(tokens: i64) -> Result<()> {
    if tokens < 0 {
        return Err(StoreError::invalid(
            "token_count",
            format!("{tokens} is negative"),
        ));
    }
    if tokens > MAX_TOKEN_COUNT {
        return Err(StoreError::invalid(
            "token_count",
            format!("{tokens} is above the limit of 1000000000"),
        ));
    }
    Ok(())
}

/// Checks feedback text against the field size limit.
pub fn validate_feedback_text(text: Option<&str>, max_bytes: usize) -> Result<()> {
    check_optional_text("feedback_text", text, max_bytes)
}

impl NewUsage {
    /// A record with the three required fields and nothing else.
    pub fn new(
        query: impl Into<String>,
        response: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        NewUsage {
            query: query.into(),
            response: response.into(),
            model: model.into(),
            ..NewUsage::default()
        }
    }

    /// A multi-turn record: `query` and `response` are the conversation's last user turn
    /// and final assistant turn (empty when it has none, which [`NewUsage::validate`] refuses).
    pub fn conversation(messages: Vec<Message>, model: impl Into<String>) -> Self {
        let mut record = NewUsage {
            model: model.into(),
            messages: Some(messages),
            ..NewUsage::default()
        };
        record.fill_turns();
        record
    }

    /// With `messages`, sets an empty `query` or `response` to the conversation's last user
    /// turn or final assistant turn; readers of a logged line call it so that a line may give
    /// the conversation alone.
    pub fn fill_turns(&mut self) {
        let Some(messages) = &self.messages else {
            return;
        };
        let (query, response) = last_turns(messages);
        if self.query.is_empty() {
            self.query = query.unwrap_or_default().to_owned();
        }
        if self.response.is_empty() {
            self.response = response.unwrap_or_default().to_owned();
        }
    }

    /// The exact-duplicate hash the store writes with this record ([`record_dedupe_hash`]).
    pub fn dedupe_hash(&self) -> String {
        record_dedupe_hash(&self.query, &self.response, self.messages.as_deref())
    }

    /// The exact-duplicate key the store writes with this record
    /// ([`record_key`](crate::key::record_key)).
    pub fn pair_key(&self) -> TextKey {
        crate::key::record_key(&self.query, &self.response, self.messages.as_deref())
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self, max_field_bytes: usize) -> Result<()> {
        if let Some(messages) = &self.messages {
            validate_messages(messages, max_field_bytes)?;
            let (query, response) = last_turns(messages);
            if query != Some(self.query.as_str()) {
                return Err(StoreError::invalid(
                    "query",
                    "must be the last user turn of messages (leave it out to have it filled in)",
                ));
            }
            if response != Some(self.response.as_str()) {
                return Err(StoreError::invalid(
                    "response",
                    "must be the final assistant turn of messages (leave it out to have it \
                     filled in)",
                ));
            }
        }
        check_text("query", &self.query, true, max_field_bytes)?;
        check_text("response", &self.response, true, max_field_bytes)?;
        check_text(
            "model",
            &self.model,
            true,
            max_field_bytes.min(MAX_NAME_BYTES),
        )?;
        check_optional_text(
            "expert",
            self.expert.as_deref(),
            max_field_bytes.min(MAX_NAME_BYTES),
        )?;
        check_optional_text(
            "unit_id",
            self.unit_id.as_deref(),
            max_field_bytes.min(MAX_UNIT_ID_BYTES),
        )?;
        check_optional_text(
            "context_hash",
            self.context_hash.as_deref(),
            max_field_bytes,
        )?;
        if let Some(unit) = &self.unit_id {
            if unit.is_empty() {
                return Err(StoreError::invalid(
                    "unit_id",
                    "must not be empty when given",
                ));
            }
        }
        if let Some(latency) = self.latency_ms {
            validate_latency(latency)?;
        }
        if let Some(tokens) = self.token_count {
            validate_token_count(tokens)?;
        }
        if let Some(quality) = self.quality_score {
            validate_quality(quality)?;
        }
        if let Some(t) = self.timestamp {
            validate_time("timestamp", t)?;
        }
        if let Some(Feedback { at: Some(at), .. }) = &self.feedback {
            validate_time("feedback_at", *at)?;
        }
        if let Some(feedback) = &self.feedback {
            validate_feedback_text(feedback.text.as_deref(), max_field_bytes)?;
        }
        Ok(())
    }
}

/// Checks a conversation: its turns are in an order a chat can have, none is empty, and
/// there are at most [`MAX_MESSAGES`] of them with at most `max_field_bytes` of content in all.
/// The error names the field `messages` and says which turn (`messages[3].role`) is at fault.
pub fn validate_messages(messages: &[Message], max_field_bytes: usize) -> Result<()> {
    let invalid = |reason: String| Err(StoreError::invalid("messages", reason));
    if messages.len() > MAX_MESSAGES {
        return invalid(format!(
            "{} turns exceeds the limit of {MAX_MESSAGES} turns",
            messages.len()
        ));
    }
    let mut total_bytes = 0usize;
    let mut seen_user = false;
    for (i, message) in messages.iter().enumerate() {
        if message.content.trim().is_empty() {
            return invalid(format!("messages[{i}].content must not be empty"));
        }
        total_bytes += message.content.len();
        let previous = i.checked_sub(1).map(|p| messages[p].role);
        match message.role {
            Role::System if i > 0 => {
                return invalid(format!(
                    "messages[{i}].role is system, but only the first turn may be a system turn"
                ));
            }
            Role::Tool if !matches!(previous, Some(Role::Assistant | Role::Tool)) => {
                return invalid(format!(
                    "messages[{i}].role is tool, but a tool turn must follow an assistant turn"
                ));
            }
            Role::User => seen_user = true,
            _ => {}
        }
    }
    if total_bytes > max_field_bytes {
        return invalid(format!(
            "{total_bytes} bytes of content exceeds the limit of {max_field_bytes} bytes"
        ));
    }
    match messages.last() {
        None => invalid("must hold at least a user turn and an assistant turn".to_owned()),
        Some(last) if last.role != Role::Assistant => invalid(format!(
            "messages[{}].role is {}, but a conversation must end with an assistant turn",
            messages.len() - 1,
            last.role.as_str()
        )),
        Some(_) if !seen_user => {
            invalid("has no user turn before the final assistant turn".to_owned())
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use chrono::TimeZone;

    fn field_of(err: StoreError) -> &'static str {
        match err {
            StoreError::InvalidInput { field, .. } => field,
            other => panic!("expected invalid input, got {other}"),
        }
    }

    fn check(record: NewUsage, expected_field: Option<&str>) {
        let result = record.validate(16);
        match expected_field {
            None => assert!(result.is_ok(), "{result:?}"),
            Some(field) => {
                let err = result.expect_err("expected an error");
                assert_eq!(err.kind(), ErrorKind::InvalidInput);
                assert_eq!(field_of(err), field);
            }
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let ok = NewUsage::new("q", "r", "m");
        check(ok.clone(), None);
        check(
            NewUsage {
                query: "  ".into(),
                ..ok.clone()
            },
            Some("query"),
        );
        check(
            NewUsage {
                response: String::new(),
                ..ok.clone()
            },
            Some("response"),
        );
        check(
            NewUsage {
                model: String::new(),
                ..ok.clone()
            },
            Some("model"),
        );
        check(
            NewUsage {
                query: "x".repeat(17),
                ..ok.clone()
            },
            Some("query"),
        );
        check(
            NewUsage {
                query: "x".repeat(16),
                ..ok.clone()
            },
            None,
        );
        check(
            NewUsage {
                quality_score: Some(f64::NAN),
                ..ok.clone()
            },
            Some("quality_score"),
        );
        check(
            NewUsage {
                quality_score: Some(f64::INFINITY),
                ..ok.clone()
            },
            Some("quality_score"),
        );
        check(
            NewUsage {
                quality_score: Some(1.01),
                ..ok.clone()
            },
            Some("quality_score"),
        );
        check(
            NewUsage {
                quality_score: Some(-0.01),
                ..ok.clone()
            },
            Some("quality_score"),
        );
        check(
            NewUsage {
                quality_score: Some(1.0),
                ..ok.clone()
            },
            None,
        );
        check(
            NewUsage {
                latency_ms: Some(-1.0),
                ..ok.clone()
            },
            Some("latency_ms"),
        );
        check(
            NewUsage {
                token_count: Some(-1),
                ..ok.clone()
            },
            Some("token_count"),
        );
        check(
            NewUsage {
                unit_id: Some(String::new()),
                ..ok.clone()
            },
            Some("unit_id"),
        );
        check(
            NewUsage {
                expert: Some("e".repeat(17)),
                ..ok
            },
            Some("expert"),
        );
    }

    #[test]
    fn numbers_names_and_times_are_bounded() {
        let ok = NewUsage::new("q", "r", "m");
        let field = |record: NewUsage| record.validate(DEFAULT_MAX_FIELD_BYTES).err().map(field_of);
        let at = |year: i32| Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
        let cases: Vec<(NewUsage, Option<&str>)> = vec![
            (
                NewUsage {
                    latency_ms: Some(MAX_LATENCY_MS),
                    ..ok.clone()
                },
                None,
            ),
            (
                NewUsage {
                    latency_ms: Some(MAX_LATENCY_MS * 1.000001),
                    ..ok.clone()
                },
                Some("latency_ms"),
            ),
            (
                NewUsage {
                    latency_ms: Some(1e154),
                    ..ok.clone()
                },
                Some("latency_ms"),
            ),
            (
                NewUsage {
                    latency_ms: Some(f64::MAX),
                    ..ok.clone()
                },
                Some("latency_ms"),
            ),
            (
                NewUsage {
                    token_count: Some(MAX_TOKEN_COUNT),
                    ..ok.clone()
                },
                None,
            ),
            (
                NewUsage {
                    token_count: Some(MAX_TOKEN_COUNT + 1),
                    ..ok.clone()
                },
                Some("token_count"),
            ),
            (
                NewUsage {
                    token_count: Some(i64::MAX),
                    ..ok.clone()
                },
                Some("token_count"),
            ),
            (
                NewUsage {
                    model: "m".repeat(MAX_NAME_BYTES),
                    ..ok.clone()
                },
                None,
            ),
            (
                NewUsage {
                    model: "m".repeat(MAX_NAME_BYTES + 1),
                    ..ok.clone()
                },
                Some("model"),
            ),
            (
                NewUsage {
                    expert: Some("e".repeat(MAX_NAME_BYTES + 1)),
                    ..ok.clone()
                },
                Some("expert"),
            ),
            (
                NewUsage {
                    unit_id: Some("u".repeat(MAX_UNIT_ID_BYTES + 1)),
                    ..ok.clone()
                },
                Some("unit_id"),
            ),
            (
                NewUsage {
                    timestamp: Some(at(1969)),
                    ..ok.clone()
                },
                Some("timestamp"),
            ),
            (
                NewUsage {
                    timestamp: Some(at(2200)),
                    ..ok.clone()
                },
                Some("timestamp"),
            ),
            (
                NewUsage {
                    timestamp: Some(at(2199)),
                    ..ok.clone()
                },
                None,
            ),
            (
                NewUsage {
                    feedback: Some(Feedback {
                        value: FeedbackValue::Positive,
                        text: None,
                        at: Some(at(1969)),
                    }),
                    ..ok.clone()
                },
                Some("feedback_at"),
            ),
            (
                NewUsage {
                    feedback: Some(Feedback {
                        value: FeedbackValue::Positive,
                        text: None,
                        at: Some(at(2300)),
                    }),
                    ..ok.clone()
                },
                Some("feedback_at"),
            ),
        ];
        for (record, want) in cases {
            assert_eq!(field(record.clone()), want, "{record:?}");
        }
    }

    #[test]
    fn feedback_values_are_minus_one_zero_one() {
        for v in [-1, 0, 1] {
            assert_eq!(FeedbackValue::from_i64(v).unwrap().as_i64(), v);
        }
        for v in [-2, 2, 5] {
            assert_eq!(
                field_of(FeedbackValue::from_i64(v).unwrap_err()),
                "user_feedback"
            );
        }
    }

    fn turns(spec: &[(Role, &str)]) -> Vec<Message> {
        spec.iter()
            .map(|(role, c)| Message::new(*role, *c))
            .collect()
    }

    /// Validates the conversation `spec` (query and response filled in from it) and
    /// returns the error's text, if any.
    fn conversation_error(spec: &[(Role, &str)]) -> Option<String> {
        NewUsage::conversation(turns(spec), "m")
            .validate(32)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn conversations_are_checked_turn_by_turn() {
        use Role::*;
        let ok: &[&[(Role, &str)]] = &[
            &[(User, "q"), (Assistant, "a")],
            &[(System, "s"), (User, "q"), (Assistant, "a")],
            &[
                (User, "q"),
                (Assistant, "call"),
                (Tool, "out"),
                (Assistant, "a"),
            ],
            &[
                (User, "q"),
                (Assistant, "call"),
                (Tool, "1"),
                (Tool, "2"),
                (Assistant, "a"),
            ],
            &[(Assistant, "hi"), (User, "q"), (Assistant, "a")],
        ];
        for spec in ok {
            assert_eq!(conversation_error(spec), None, "{spec:?}");
        }
        let bad: &[(&[(Role, &str)], &str)] = &[
            (&[], "at least a user turn"),
            (&[(User, "q")], "messages[0].role is user"),
            (
                &[(User, "q"), (System, "s"), (Assistant, "a")],
                "messages[1].role is system",
            ),
            (
                &[(User, "q"), (Tool, "t"), (Assistant, "a")],
                "messages[1].role is tool",
            ),
            (&[(System, "s"), (Assistant, "a")], "no user turn"),
            (
                &[(User, " "), (Assistant, "a")],
                "messages[0].content must not be empty",
            ),
            (
                &[(User, "q"), (Assistant, "a"), (Tool, "t")],
                "messages[2].role is tool",
            ),
            (
                &[(User, &"x".repeat(20)), (Assistant, &"y".repeat(20))],
                "40 bytes of content exceeds the limit of 32 bytes",
            ),
        ];
        for (spec, want) in bad {
            let err = conversation_error(spec).expect("an error");
            assert!(err.starts_with("invalid messages: "), "{err}");
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let long = vec![(User, "q"); MAX_MESSAGES];
        let mut long = turns(&long);
        long.push(Message::new(Assistant, "a"));
        let err = NewUsage::conversation(long, "m")
            .validate(DEFAULT_MAX_FIELD_BYTES)
            .unwrap_err();
        assert!(err.to_string().contains("turns exceeds the limit of 1000"));
    }

    #[test]
    fn query_and_response_are_the_conversations_last_turns() {
        use Role::*;
        let messages = turns(&[
            (User, "first"),
            (Assistant, "one"),
            (User, "second"),
            (Assistant, "two"),
        ]);
        let record = NewUsage::conversation(messages.clone(), "m");
        assert_eq!(
            (record.query.as_str(), record.response.as_str()),
            ("second", "two")
        );
        assert!(record.validate(DEFAULT_MAX_FIELD_BYTES).is_ok());
        let mismatch = NewUsage {
            messages: Some(messages.clone()),
            ..NewUsage::new("first", "two", "m")
        };
        assert_eq!(
            field_of(mismatch.validate(DEFAULT_MAX_FIELD_BYTES).unwrap_err()),
            "query"
        );
        let mismatch = NewUsage {
            messages: Some(messages),
            ..NewUsage::new("second", "one", "m")
        };
        assert_eq!(
            field_of(mismatch.validate(DEFAULT_MAX_FIELD_BYTES).unwrap_err()),
            "response"
        );
    }

    #[test]
    fn conversations_hash_every_turn_and_a_single_exchange_hashes_as_a_pair() {
        use Role::*;
        let single = NewUsage::conversation(turns(&[(User, "q"), (Assistant, "a")]), "m");
        assert_eq!(single.dedupe_hash(), dedupe_hash("q", "a"));
        assert_eq!(single.pair_key(), crate::key::pair_key("q", "a"));
        let one = NewUsage::conversation(
            turns(&[(User, "x"), (Assistant, "y"), (User, "q"), (Assistant, "a")]),
            "m",
        );
        let two = NewUsage::conversation(
            turns(&[(User, "z"), (Assistant, "y"), (User, "q"), (Assistant, "a")]),
            "m",
        );
        let system =
            NewUsage::conversation(turns(&[(System, "s"), (User, "q"), (Assistant, "a")]), "m");
        let hashes = [
            single.dedupe_hash(),
            one.dedupe_hash(),
            two.dedupe_hash(),
            system.dedupe_hash(),
        ];
        let keys = [
            single.pair_key(),
            one.pair_key(),
            two.pair_key(),
            system.pair_key(),
        ];
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(hashes[i], hashes[j]);
                assert_ne!(keys[i], keys[j]);
            }
        }
        // The key normalises like the pair key; the hash is exact.
        let upper = NewUsage::conversation(
            turns(&[(User, "X"), (Assistant, "y"), (User, "q"), (Assistant, "a")]),
            "m",
        );
        assert_eq!(upper.pair_key(), one.pair_key());
        assert_ne!(upper.dedupe_hash(), one.dedupe_hash());
    }

    #[test]
    fn messages_are_stored_as_role_and_content_json() {
        let messages = vec![
            Message::new(Role::User, "q \"1\""),
            Message::new(Role::Assistant, "a"),
        ];
        let json = messages_to_json(&messages);
        assert_eq!(
            json,
            r#"[{"role":"user","content":"q \"1\""},{"role":"assistant","content":"a"}]"#
        );
        assert_eq!(messages_from_json(&json).unwrap(), messages);
        assert!(messages_from_json(r#"[{"role":"robot","content":"x"}]"#).is_err());
    }

    #[test]
    fn dedupe_hash_separates_fields() {
        assert_ne!(dedupe_hash("ab", "c"), dedupe_hash("a", "bc"));
        assert_eq!(dedupe_hash("a", "b"), dedupe_hash("a", "b"));
        assert_eq!(dedupe_hash("a", "b").len(), 64);
    }
}
