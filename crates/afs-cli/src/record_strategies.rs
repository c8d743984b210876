//! Property-test strategies for the one record parser (`crate::record_json`), shared by its
//! own tests (both dialects) and by its callers' (`afs serve`'s HTTP bodies, alone and in
//! batches): the same records must read the same way everywhere.

use afs_store::{NewUsage, MAX_LATENCY_MS, MAX_NAME_BYTES, MAX_TOKEN_COUNT};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

/// Non-blank text of any Unicode, with quotes, backslashes and control characters likely.
pub(crate) fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z \"\\\\\t\n\u{0}-\u{1f}\u{e9}\u{65e5}\u{1F600}]{1,40}")
        .unwrap()
        .prop_filter("non-blank", |s| !s.trim().is_empty())
}

/// A record within every documented range, as a JSON object, and the record it stands for.
pub(crate) fn valid_record() -> impl Strategy<Value = (Value, NewUsage)> {
    (
        (text(), text(), "[a-zA-Z0-9._-]{1,64}"),
        proptest::option::of(0.0..=MAX_LATENCY_MS),
        proptest::option::of(0..=MAX_TOKEN_COUNT),
        proptest::option::of(0.0..=1.0f64),
        proptest::option::of(-1..=1i64),
        proptest::option::of("[a-z0-9@.-]{1,30}"),
        0i64..7_000_000_000,
    )
        .prop_map(
            |((query, response, model), latency, tokens, quality, feedback, unit, seconds)| {
                let at = DateTime::<Utc>::from_timestamp(seconds, 0).unwrap();
                let mut line = json!({
                    "query": query, "response": response, "model": model,
                    "timestamp": at.to_rfc3339(),
                });
                let object = line.as_object_mut().unwrap();
                let mut put = |key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        object.insert(key.into(), value);
                    }
                };
                put("latency_ms", latency.map(|v| json!(v)));
                put("token_count", tokens.map(|v| json!(v)));
                put("quality_score", quality.map(|v| json!(v)));
                put("feedback", feedback.map(|v| json!(v)));
                put("unit", unit.clone().map(|v| json!(v)));
                let record = NewUsage {
                    latency_ms: latency,
                    token_count: tokens,
                    quality_score: quality,
                    unit_id: unit,
                    timestamp: Some(at),
                    feedback: feedback.map(|v| afs_store::Feedback {
                        value: afs_store::FeedbackValue::from_i64(v).unwrap(),
                        text: None,
                        at: None,
                    }),
                    ..NewUsage::new(query, response, model)
                };
                (line, record)
            },
        )
}

/// A key and a value outside the key's documented range.
pub(crate) fn out_of_range() -> impl Strategy<Value = (&'static str, Value)> {
    (0..5usize, 1.0..1e300f64).prop_map(|(which, over)| match which {
        0 => ("latency_ms", json!(MAX_LATENCY_MS + over)),
        1 => ("latency_ms", json!(-over)),
        2 => (
            "token_count",
            json!(MAX_TOKEN_COUNT.saturating_add(over.min(9e18) as i64)),
        ),
        3 => ("quality_score", json!(1.0 + over)),
        _ => (
            "model",
            json!("m".repeat(MAX_NAME_BYTES + 1 + (over as usize % 100))),
        ),
    })
}

/// Fails unless `got` is `want`.
pub(crate) fn same(got: &NewUsage, want: &NewUsage) -> Result<(), TestCaseError> {
    prop_assert_eq!(got, want);
    Ok(())
}
