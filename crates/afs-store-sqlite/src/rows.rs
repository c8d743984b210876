//! Mapping between record types and `usage` rows.

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, Row};

use super::migrations::{parse_legacy_time, N_ROLLUP_COLUMNS};
use super::time::{first_rowid_at, micros_of, rfc3339, time_of_micros, ROWID_SLOTS};
use afs_store::key::TextKey;
use afs_store::new_id;
use afs_store::{messages_from_json, messages_to_json, FeedbackValue, NewUsage, UsageRecord};

/// The columns [`record_from_row`] reads, in order; `rowid` (for keyset paging) is
/// [`ROWID_COLUMN`].
pub(crate) const RECORD_COLUMNS: &str = "id, ts_us, query, response, model, expert, latency_ms, \
    token_count, quality_score, user_feedback, feedback_text, feedback_at, unit_id, context_hash, \
    dedupe_hash, created_at, rowid, pair_key, messages";

/// [`RECORD_COLUMNS`] with `NULL` in place of the fields [`RecordFields::Training`] leaves
/// out, so [`record_from_row`] reads either.
///
/// [`RecordFields::Training`]: afs_store::RecordFields::Training
pub(crate) const TRAINING_COLUMNS: &str = "id, ts_us, query, response, model, NULL, NULL, NULL, \
    quality_score, user_feedback, NULL, NULL, NULL, NULL, NULL, NULL, rowid, pair_key, messages";

/// The position of `ts_us` in [`RECORD_COLUMNS`].
pub(crate) const TS_COLUMN: usize = 1;
/// The position of `rowid` in [`RECORD_COLUMNS`].
pub(crate) const ROWID_COLUMN: usize = 16;

/// A record ready to insert: id, times and hash computed in the caller's thread, so the
/// writer thread only runs SQL.
#[derive(Debug)]
pub(crate) struct InsertRow {
    pub(crate) id: String,
    record: NewUsage,
    ts_us: i64,
    timestamp: String,
    created_at: String,
    dedupe_hash: String,
    pair_key: TextKey,
    feedback_at: Option<String>,
    /// The conversation as the JSON text the `messages` column holds.
    messages: Option<String>,
}

/// A record's contribution to its rollup buckets, in rollup column order: the live insert's
/// and a restore's, from their own kinds of record.
pub(crate) fn rollup_delta(
    feedback: Option<FeedbackValue>,
    quality_score: Option<f64>,
    latency_ms: Option<f64>,
    token_count: Option<i64>,
) -> [f64; N_ROLLUP_COLUMNS] {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let q = quality_score.unwrap_or(0.0);
    let lat = latency_ms.unwrap_or(0.0);
    [
        1.0,
        flag(feedback.is_some()),
        flag(feedback == Some(FeedbackValue::Positive)),
        flag(feedback == Some(FeedbackValue::Negative)),
        flag(feedback == Some(FeedbackValue::Neutral)),
        flag(quality_score.is_some()),
        q,
        q * q,
        flag(latency_ms.is_some()),
        lat,
        lat * lat,
        token_count.unwrap_or(0) as f64,
    ]
}

impl InsertRow {
    pub(crate) fn new(record: NewUsage, now: DateTime<Utc>) -> Self {
        let when = record.timestamp.unwrap_or(now);
        let feedback_at = record
            .feedback
            .as_ref()
            .map(|f| rfc3339(f.at.unwrap_or(now)));
        InsertRow {
            id: new_id(now),
            ts_us: micros_of(when),
            timestamp: rfc3339(when),
            created_at: rfc3339(now),
            dedupe_hash: record.dedupe_hash(),
            pair_key: record.pair_key(),
            messages: record.messages.as_deref().map(messages_to_json),
            feedback_at,
            record,
        }
    }

    /// The model, which with the time [`InsertRow::insert`] returns places this row in its
    /// rollup buckets.
    pub(crate) fn model(&self) -> &str {
        &self.record.model
    }

    /// This row's contribution to its rollup bucket, in rollup column order.
    pub(crate) fn rollup_delta(&self) -> [f64; N_ROLLUP_COLUMNS] {
        let r = &self.record;
        rollup_delta(
            r.feedback.as_ref().map(|f| f.value),
            r.quality_score,
            r.latency_ms,
            r.token_count,
        )
    }

    /// Inserts the row at the first free rowid of its microsecond (see [`ROWID_SLOTS`]) and
    /// returns its time in microseconds: its own, or the next microsecond with room if its
    /// own holds [`ROWID_SLOTS`] records already.
    ///
    /// `top` is the highest rowid of the table (see [`top_rowid`]), kept up to date by
    /// every insert of the transaction: a row at or after the newest one (live logging, a
    /// chronological import) is placed without a lookup.
    pub(crate) fn insert(&self, conn: &Connection, top: &mut Option<i64>) -> rusqlite::Result<i64> {
        let mut ts_us = self.ts_us;
        let rowid = loop {
            let first = first_rowid_at(ts_us);
            let last: Option<i64> = match *top {
                None => None,
                Some(top) if top < first => None,
                Some(top) if top < first + ROWID_SLOTS => Some(top),
                Some(_) => conn
                    .prepare_cached(
                        "SELECT MAX(rowid) FROM usage WHERE rowid >= ?1 AND rowid < ?2",
                    )?
                    .query_row([first, first + ROWID_SLOTS], |row| row.get(0))?,
            };
            match last {
                None => break first,
                Some(last) if last + 1 < first + ROWID_SLOTS => break last + 1,
                Some(_) => ts_us += 1,
            }
        };
        *top = (*top).max(Some(rowid));
        let moved_timestamp;
        let timestamp = if ts_us == self.ts_us {
            &self.timestamp
        } else {
            moved_timestamp = rfc3339(time_of_micros(ts_us));
            &moved_timestamp
        };
        let mut stmt = conn.prepare_cached(
            "INSERT INTO usage (rowid, id, timestamp, query, response, model, expert, latency_ms, \
             token_count, quality_score, user_feedback, feedback_text, context_hash, dedupe_hash, \
             created_at, ts_us, feedback_at, unit_id, pair_key, messages) \
             VALUES (?18, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?19, ?20)",
        )?;
        let r = &self.record;
        stmt.execute(params![
            self.id,
            timestamp,
            r.query,
            r.response,
            r.model,
            r.expert,
            r.latency_ms,
            r.token_count,
            r.quality_score,
            r.feedback.as_ref().map(|f| f.value.as_i64()),
            r.feedback.as_ref().and_then(|f| f.text.as_deref()),
            r.context_hash,
            self.dedupe_hash,
            self.created_at,
            ts_us,
            self.feedback_at,
            r.unit_id,
            rowid,
            &self.pair_key[..],
            self.messages,
        ])?;
        Ok(ts_us)
    }
}

/// The highest rowid of `usage` (`None` when it is empty), for [`InsertRow::insert`].
pub(crate) fn top_rowid(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT MAX(rowid) FROM usage")?
        .query_row([], |row| row.get(0))
}

fn parse_time(text: Option<String>) -> Option<DateTime<Utc>> {
    text.as_deref().and_then(parse_legacy_time)
}

/// Reads a record from a row selected with [`RECORD_COLUMNS`] or [`TRAINING_COLUMNS`].
pub(crate) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    let feedback: Option<i64> = row.get(9)?;
    Ok(UsageRecord {
        id: row.get(0)?,
        timestamp: time_of_micros(row.get::<_, Option<i64>>(1)?.unwrap_or(0)),
        query: row.get(2)?,
        response: row.get(3)?,
        model: row.get(4)?,
        expert: row.get(5)?,
        latency_ms: row.get(6)?,
        token_count: row.get(7)?,
        quality_score: row.get(8)?,
        // Values outside {-1, 0, 1} can only come from a foreign writer; show them as absent
        // rather than failing the whole read.
        feedback: feedback.and_then(|v| FeedbackValue::from_i64(v).ok()),
        feedback_text: row.get(10)?,
        feedback_at: parse_time(row.get(11)?),
        unit_id: row.get(12)?,
        context_hash: row.get(13)?,
        dedupe_hash: row.get(14)?,
        created_at: parse_time(row.get(15)?),
        // Read in place; anything but a 32-byte blob comes from a foreign writer (or from a
        // development build that wrote 16-byte keys) and reads as no key, which readers compute.
        pair_key: match row.get_ref(17)? {
            ValueRef::Blob(key) => key.try_into().ok(),
            _ => None,
        },
        messages: match row.get_ref(18)? {
            ValueRef::Null => None,
            value => Some(messages_from_json(value.as_str()?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(18, value.data_type(), Box::new(e))
            })?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_columns_are_record_columns_with_some_left_out() {
        let all: Vec<&str> = RECORD_COLUMNS.split(',').map(str::trim).collect();
        let training: Vec<&str> = TRAINING_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(all.len(), training.len());
        for (a, t) in all.iter().zip(&training) {
            assert!(*t == "NULL" || t == a, "{t} in the place of {a}");
        }
        assert_eq!(all[TS_COLUMN], "ts_us");
        assert_eq!(training[TS_COLUMN], "ts_us");
        assert_eq!(all[ROWID_COLUMN], "rowid");
        assert_eq!(training[ROWID_COLUMN], "rowid");
        for kept in [
            "id",
            "query",
            "response",
            "model",
            "quality_score",
            "user_feedback",
            "pair_key",
            "messages",
        ] {
            assert!(training.contains(&kept), "{kept}");
        }
    }
}
