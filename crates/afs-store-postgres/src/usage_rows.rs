//! Rows of `afs_usage`: records prepared for insertion, inserted in one statement (`unnest`
//! of column arrays, or binary `COPY` for large batches), and read back.

use afs_store::key::TextKey;
use afs_store::{
    messages_from_json, messages_to_json, new_id, FeedbackValue, NewUsage, StoreError, UsageRecord,
};
use chrono::{DateTime, Utc};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

/// The columns [`record_from_row`] reads, in order (`seq` last, for keyset paging).
pub(crate) const RECORD_COLUMNS: &str = "id, ts_us, query, response, model, expert, latency_ms, \
    token_count, quality_score, user_feedback, feedback_text, feedback_at_us, unit_id, \
    context_hash, dedupe_hash, created_at_us, pair_key, messages, seq";

/// [`RECORD_COLUMNS`] with `NULL` in place of the fields `RecordFields::Training` leaves out.
pub(crate) const TRAINING_COLUMNS: &str = "id, ts_us, query, response, model, NULL::text, \
    NULL::float8, NULL::int8, quality_score, user_feedback, NULL::text, NULL::int8, NULL::text, \
    NULL::text, NULL::text, NULL::int8, pair_key, messages, seq";

/// The position of `ts_us` in [`RECORD_COLUMNS`].
pub(crate) const TS_COLUMN: usize = 1;
/// The position of `seq` in [`RECORD_COLUMNS`].
pub(crate) const SEQ_COLUMN: usize = 18;

/// The columns an insert writes, in the order of [`InsertRow::values`].
pub(crate) const INSERT_COLUMNS: &str = "id, ts_us, query, response, model, expert, latency_ms, \
    token_count, quality_score, user_feedback, feedback_text, feedback_at_us, unit_id, \
    context_hash, dedupe_hash, created_at_us, pair_key, messages";

/// The types of [`INSERT_COLUMNS`], for binary `COPY`.
pub(crate) const INSERT_TYPES: [Type; 18] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT8,
    Type::FLOAT8,
    Type::INT2,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::BYTEA,
    Type::TEXT,
];

/// Batches of at least this many rows are written with binary `COPY`; smaller ones with
/// one `INSERT ... SELECT FROM unnest(...)` (one round trip, no per-row statement).
const COPY_ROWS: usize = 256;

/// Microseconds since the epoch of `t`.
pub(crate) fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time at `us` microseconds since the epoch (clamped to chrono's range).
pub(crate) fn time_of_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A checked record ready to insert: id, times and keys computed in the caller's thread.
#[derive(Debug)]
pub(crate) struct InsertRow {
    /// The new record's id.
    pub(crate) id: String,
    /// The checked record.
    record: NewUsage,
    /// Its time.
    ts_us: i64,
    /// When it was logged.
    created_at_us: i64,
    /// When its feedback (if any) was given.
    feedback_at_us: Option<i64>,
    /// `afs_store::record_dedupe_hash` of its query and response (or conversation).
    dedupe_hash: String,
    /// The normalised key of its query and response (or conversation).
    pair_key: TextKey,
    /// Its conversation as the JSON text the `messages` column holds.
    messages: Option<String>,
}

impl InsertRow {
    /// The stored form of a checked record, stamped at `now` where it has no time.
    pub(crate) fn new(record: NewUsage, now: DateTime<Utc>) -> Self {
        InsertRow {
            id: new_id(now),
            ts_us: micros_of(record.timestamp.unwrap_or(now)),
            created_at_us: micros_of(now),
            feedback_at_us: record
                .feedback
                .as_ref()
                .map(|f| micros_of(f.at.unwrap_or(now))),
            dedupe_hash: record.dedupe_hash(),
            pair_key: record.pair_key(),
            messages: record.messages.as_deref().map(messages_to_json),
            record,
        }
    }

    /// The feedback value as stored.
    fn feedback(&self) -> Option<i16> {
        self.record
            .feedback
            .as_ref()
            .map(|f| f.value.as_i64() as i16)
    }

    /// The feedback text, if any.
    fn feedback_text(&self) -> Option<&str> {
        self.record
            .feedback
            .as_ref()
            .and_then(|f| f.text.as_deref())
    }
}

/// Inserts `rows` in order (their `seq` follows it) in one statement; returns how many.
pub(crate) fn insert_rows(
    tx: &mut impl postgres::GenericClient,
    rows: &[InsertRow],
) -> Result<u64, postgres::Error> {
    if rows.len() >= COPY_ROWS {
        copy_rows(tx, rows)
    } else {
        unnest_rows(tx, rows, None)
    }
}

/// [`insert_rows`] with the insert prepared on this connection by [`prepare_insert`]: the
/// server plans it once per connection instead of once per statement (for single-record
/// logging, planning was about a third of the statement's server time).
pub(crate) fn insert_rows_prepared(
    client: &mut postgres::Client,
    insert: &postgres::Statement,
    rows: &[InsertRow],
) -> Result<u64, postgres::Error> {
    if rows.len() >= COPY_ROWS {
        copy_rows(client, rows)
    } else {
        unnest_rows(client, rows, Some(insert))
    }
}

/// Prepares [`unnest_rows`]'s insert on `client`, for [`insert_rows_prepared`].
pub(crate) fn prepare_insert(
    client: &mut postgres::Client,
) -> Result<postgres::Statement, postgres::Error> {
    client.prepare_typed(&unnest_sql(), &UNNEST_TYPES)
}

/// The types of [`unnest_sql`]'s parameters: [`INSERT_TYPES`] as arrays.
const UNNEST_TYPES: [Type; 18] = [
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::INT8_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::INT2_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::TEXT_ARRAY,
];

/// `INSERT ... SELECT * FROM unnest(arrays)`: a multi-row insert of any size with 18
/// parameters.
fn unnest_sql() -> String {
    format!(
        "INSERT INTO afs_usage ({INSERT_COLUMNS}) SELECT * FROM unnest($1::text[], \
         $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::int8[], \
         $9::float8[], $10::int2[], $11::text[], $12::int8[], $13::text[], $14::text[], \
         $15::text[], $16::int8[], $17::bytea[], $18::text[])"
    )
}

/// One [`unnest_sql`] insert of `rows`: with `prepared`, that statement; without, sent with
/// its types in one round trip (no prepared statement).
fn unnest_rows(
    tx: &mut impl postgres::GenericClient,
    rows: &[InsertRow],
    prepared: Option<&postgres::Statement>,
) -> Result<u64, postgres::Error> {
    let texts = |f: &dyn Fn(&InsertRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let opt_texts =
        |f: &dyn Fn(&InsertRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
    let id = texts(&|r| &r.id);
    let ts: Vec<i64> = rows.iter().map(|r| r.ts_us).collect();
    let query = texts(&|r| &r.record.query);
    let response = texts(&|r| &r.record.response);
    let model = texts(&|r| &r.record.model);
    let expert = opt_texts(&|r| r.record.expert.as_deref());
    let latency: Vec<Option<f64>> = rows.iter().map(|r| r.record.latency_ms).collect();
    let tokens: Vec<Option<i64>> = rows.iter().map(|r| r.record.token_count).collect();
    let quality: Vec<Option<f64>> = rows.iter().map(|r| r.record.quality_score).collect();
    let feedback: Vec<Option<i16>> = rows.iter().map(InsertRow::feedback).collect();
    let feedback_text = opt_texts(&|r| r.feedback_text());
    let feedback_at: Vec<Option<i64>> = rows.iter().map(|r| r.feedback_at_us).collect();
    let unit = opt_texts(&|r| r.record.unit_id.as_deref());
    let context = opt_texts(&|r| r.record.context_hash.as_deref());
    let dedupe = texts(&|r| &r.dedupe_hash);
    let created: Vec<i64> = rows.iter().map(|r| r.created_at_us).collect();
    let keys: Vec<&[u8]> = rows.iter().map(|r| &r.pair_key[..]).collect();
    let messages = opt_texts(&|r| r.messages.as_deref());
    let params: [&(dyn ToSql + Sync); 18] = [
        &id,
        &ts,
        &query,
        &response,
        &model,
        &expert,
        &latency,
        &tokens,
        &quality,
        &feedback,
        &feedback_text,
        &feedback_at,
        &unit,
        &context,
        &dedupe,
        &created,
        &keys,
        &messages,
    ];
    match prepared {
        Some(statement) => tx.execute(statement, &params),
        None => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                params.into_iter().zip(UNNEST_TYPES).collect();
            tx.execute_typed(&unnest_sql(), &typed)
        }
    }
}

/// Binary `COPY ... FROM STDIN`: the fastest way in for a large batch. `COPY` fires the
/// insert triggers, so the rollups follow as they do for an `INSERT`.
fn copy_rows(
    tx: &mut impl postgres::GenericClient,
    rows: &[InsertRow],
) -> Result<u64, postgres::Error> {
    let sink = tx.copy_in(&format!(
        "COPY afs_usage ({INSERT_COLUMNS}) FROM STDIN (FORMAT binary)"
    ))?;
    let mut writer = BinaryCopyInWriter::new(sink, &INSERT_TYPES);
    for r in rows {
        let key: &[u8] = &r.pair_key;
        let values: [&(dyn ToSql + Sync); 18] = [
            &r.id,
            &r.ts_us,
            &r.record.query,
            &r.record.response,
            &r.record.model,
            &r.record.expert,
            &r.record.latency_ms,
            &r.record.token_count,
            &r.record.quality_score,
            &r.feedback(),
            &r.feedback_text(),
            &r.feedback_at_us,
            &r.record.unit_id,
            &r.record.context_hash,
            &r.dedupe_hash,
            &r.created_at_us,
            &key,
            &r.messages,
        ];
        writer.write(&values)?;
    }
    writer.finish()
}

/// Reads a record from a row selected with [`RECORD_COLUMNS`] or [`TRAINING_COLUMNS`].
pub(crate) fn record_from_row(row: &postgres::Row) -> afs_store::Result<UsageRecord> {
    let record = record_columns(row).map_err(crate::error::dbe("read record"))?;
    let messages: Option<&str> = row.try_get(17).map_err(crate::error::dbe("read record"))?;
    let messages = match messages {
        None => None,
        Some(text) => Some(messages_from_json(text).map_err(|e| StoreError::Database {
            context: format!("read the messages of record {}", record.id),
            source: Box::new(e),
        })?),
    };
    Ok(UsageRecord { messages, ..record })
}

/// The columns of [`record_from_row`] but `messages`, which are plain values.
fn record_columns(row: &postgres::Row) -> Result<UsageRecord, postgres::Error> {
    let feedback: Option<i16> = row.try_get(9)?;
    let key: Option<&[u8]> = row.try_get(16)?;
    Ok(UsageRecord {
        id: row.try_get(0)?,
        timestamp: time_of_micros(row.try_get(TS_COLUMN)?),
        query: row.try_get(2)?,
        response: row.try_get(3)?,
        model: row.try_get(4)?,
        expert: row.try_get(5)?,
        latency_ms: row.try_get(6)?,
        token_count: row.try_get(7)?,
        quality_score: row.try_get(8)?,
        // Values outside {-1, 0, 1} can only come from a foreign writer: shown as absent.
        feedback: feedback.and_then(|v| FeedbackValue::from_i64(i64::from(v)).ok()),
        feedback_text: row.try_get(10)?,
        feedback_at: row.try_get::<_, Option<i64>>(11)?.map(time_of_micros),
        unit_id: row.try_get(12)?,
        context_hash: row.try_get(13)?,
        dedupe_hash: row.try_get(14)?,
        created_at: row.try_get::<_, Option<i64>>(15)?.map(time_of_micros),
        pair_key: key.and_then(|k| k.try_into().ok()),
        messages: None,
    })
}
