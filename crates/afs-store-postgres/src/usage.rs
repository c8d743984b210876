//! [`UsageStore`] on PostgreSQL: the log, its rollups, group commit and `COPY`.
//!
//! # Tables (`src/schema/usage.sql`)
//!
//! `afs_usage` is partitioned by calendar month (module `usage_partitions`): `prune` drops
//! whole months before the cutoff (and before a running experiment's start) and deletes
//! the rest row by row.
//!
//! - **`afs_usage`**, the log: one row per record, times as `bigint` microseconds UTC
//!   (`ts_us`, `feedback_at_us`, `created_at_us`), feedback as -1/0/1, the 32-byte pair key
//!   (`pair_key`, BLAKE3 of the normalised query and response) and the dedupe hash. `seq`
//!   (an identity) is the insertion order and breaks ties within a microsecond: the log's
//!   order is `(ts_us, seq)`, which a unique index holds. Other indexes: the unique `id`, a
//!   partial index on `(ts_us, seq)` of records with feedback (what training data reads),
//!   and a partial index on `(unit_id, ts_us, seq)` (queries by unit, `forget --unit`).
//! - **`afs_usage_minute`** and **`afs_usage_hour`**, the rollups: per (bucket, model) the
//!   record count, feedback counts (positive, negative, neutral; "with feedback" is their
//!   sum), quality count, sum and sum of squares, latency count, sum and sum of squares,
//!   and token sum. `bucket` is minutes (hours) since the epoch.
//! - **`afs_usage_pending`** (schema version 3, `src/schema/pending.sql`): the same sums
//!   per (minute, model), one row per group commit of single-record logging, not yet
//!   folded into the two rollup tables. For every bucket, its rollup row plus the pending
//!   rows of its minutes is the truth of the log.
//!
//! # Rollups: statement-level triggers
//!
//! Every write of `afs_usage` keeps both rollup tables exact in its own transaction, through
//! `AFTER ... FOR EACH STATEMENT` triggers with transition tables, so a statement of any
//! size costs one upsert per touched bucket (not per row). The insert and update triggers
//! are static SQL, which PL/pgSQL plans once per session (dynamic `EXECUTE` was planned
//! again per statement: ~1 ms of server CPU per single-record commit); the schema writes
//! their bodies from `afs_usage_rollup_sql`, the one text of the upsert:
//!
//! - **insert** (`INSERT`, and `COPY`, which fires the same triggers) aggregates the new
//!   rows per (bucket, model) and upserts each bucket once, in key order, so concurrent
//!   writers lock bucket rows in the same order (minutes before hours) and cannot deadlock
//!   on them;
//! - **update** (feedback, quality scores) adds the new contribution and subtracts the old
//!   one of the rows whose counted columns changed, in the same way;
//! - **delete** (dedupe, prune, forget) does not trust subtraction: it locks the touched
//!   minute rows (in key order), then sums those minutes again from the records that remain,
//!   with a snapshot taken after the lock (so a concurrent writer of the same bucket is
//!   either waited for and counted, or adds its delta after us), and the touched hours
//!   again from their minutes. Emptied buckets are removed; float residue never piles up.
//!
//! **Single-record logging defers its rollups.** Upserting the current minute's and hour's
//! rows in every group commit was most of the server's cost of a log call (4 threads: 8.7-9.8k
//! records/s as shipped, 12.8-14.6k without the rollup trigger). The logging connection sets
//! `afs.defer_rollups = on`, so the insert trigger fires in its other form and appends one
//! row per model to `afs_usage_pending` (nothing is locked, several hosts append side by
//! side); the same connection folds the pending rows into the minute and hour rows every
//! 500 ms, in one statement (`afs_usage_fold_pending()`: the rows are deleted and their
//! sums upserted, so any snapshot sees each delta on one side only), and vacuums the table
//! every 2 s. Readers add the pending rows of the minutes their rollup buckets cover; a
//! fold of a quiet process waits for its next log call, which readers do not notice. A
//! delete (which sums its buckets again from the log) first takes a lock that waits out
//! the logging transactions in flight and keeps new ones out until it commits, and folds
//! everything: then nothing it recounts is also pending. Updates add signed deltas to the
//! rollup rows, which commutes with pending deltas.
//!
//! `rebuild_rollups` locks writers out (`SHARE ROW EXCLUSIVE`), drops the pending deltas
//! (the log it sums already counts their records), and re-derives the minutes from the log
//! and the hours from the minutes.
//!
//! # Resolution of a window
//!
//! `stats`, `stats_by_model`, `stats_by_hour` and `count_quality_samples` (module
//! `usage_window`) split `[since, until)` into whole hours read from `afs_usage_hour`, whole
//! minutes at either end from `afs_usage_minute`, and scan the log only for a partial
//! minute at an edge (an edge inside a minute). A window whose end is after the newest
//! record is open: its last buckets are read whole, so only a start (or an end before the
//! newest record) inside a minute costs a scan, of that minute's records. All parts are one
//! `UNION ALL` statement in one read-only repeatable-read snapshot with the look-up of the
//! newest record: a reader never sees half of a commit. The cost grows with the hours
//! (and the edge minutes) of the window, not the records.
//!
//! # Writes
//!
//! - **Group commit** (module `usage_writer`): `log` checks the record and computes its id,
//!   times and keys in the caller's thread, then queues it; a caller that finds nobody
//!   committing becomes the leader, yields a few times to callers already inside `log`
//!   (and, if its last group held several rows, up to 300 us until as many are queued),
//!   and commits every queued row (up to 1,024) with one `INSERT ... SELECT FROM
//!   unnest(column arrays)` in autocommit (one statement is atomic), sent with its
//!   parameter types so it costs one round trip (a prepared statement costs three), on a
//!   logging connection: `synchronous_commit = off` there unless
//!   `PgConfig::fast_log_commits` is false (SQLite's `synchronous = normal` and `full`).
//!   Then it wakes the callers it held. Each caller returns only once its own row
//!   committed. A group that fails on anything but a lost server is retried row by row, so
//!   one caller's failure is not another's.
//! - **Feedback and single quality scores** are one `UPDATE` in autocommit, typed, one round
//!   trip, committed durably.
//! - **Batches** (`log_batch`): one transaction, one statement: `unnest` below 256 rows,
//!   binary `COPY ... FROM STDIN` from 256 on. Ids come back in input order; `seq` follows it.
//! - `update_qualities` is one `UPDATE ... FROM unnest(ids, scores)`: one trigger run for
//!   the whole batch. An unknown id fails the batch with `NotFound`, writing nothing.
//! - `prune` deletes with `DELETE ... RETURNING` and streams the deleted rows, in time
//!   order, into the archive (`afs_store::write_archive`, which syncs it) inside the
//!   transaction: if the archive cannot be written the transaction rolls back and nothing
//!   is deleted; the rows archived are exactly the rows deleted.
//! - Serialisation failures and deadlocks are retried by `PgStore::transaction`; a lost
//!   connection is `Unavailable` (`crate::error`).
//!
//! # Reads
//!
//! `query` (module `usage_stream`) streams in keyset pages on `(ts_us, seq)` (64 rows
//! growing to 2,048, or 2,048 from the start with `Paging::Bulk`), each page a short query
//! on a pooled connection: memory does not grow with the result and no transaction stays
//! open between pages.
//!
//! `forget_unit` deletes the unit's records; the per-unit statistics follow through the
//! delete triggers of `src/units.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use afs_store::{
    validate_feedback_text, validate_qualities, validate_quality, validate_time, Clock,
    DedupeReport, FeedbackValue, NewUsage, PruneReport, RecordFilter, RecordStream, Result,
    StatsWindow, StoreError, UsageRecord, UsageStats, UsageStore,
};
use chrono::{DateTime, Utc};
use postgres::types::{ToSql, Type};

use crate::error::{db, dbe};
use crate::store::PgStore;
use crate::usage_rows as rows;
use crate::usage_window::{stats_grouped, Grouping, HOUR_US};

/// The usage log's in-process state: the group-commit queue of `log`.
#[derive(Debug, Default)]
pub(crate) struct UsageState {
    /// Rows waiting for (or in) a group commit.
    group: crate::usage_writer::LogWriter,
}

impl UsageState {
    /// An empty queue.
    pub(crate) fn new() -> Self {
        UsageState::default()
    }
}

impl PgStore {
    /// Checks a record: its fields, and the clock when the clock will date it.
    fn check_record(&self, record: &NewUsage) -> Result<()> {
        record.validate(self.config.max_field_bytes)?;
        let needs_clock =
            record.timestamp.is_none() || matches!(&record.feedback, Some(f) if f.at.is_none());
        if needs_clock {
            validate_time("timestamp", self.clock.now()).map_err(|e| StoreError::bad_clock(&e))?;
        }
        Ok(())
    }

    /// Runs one `UPDATE` of record `id` in a transaction; `NotFound` when it matched none.
    fn update_one(
        &self,
        what: &str,
        sql: &str,
        id: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<()> {
        // One statement in autocommit (atomic) sent with its types: one round trip. A
        // deadlock or serialisation failure changed nothing: again.
        let mut conn = self.conn()?;
        let mut attempt = 0;
        let changed = loop {
            attempt += 1;
            match conn.execute_typed(sql, params) {
                Ok(changed) => break changed,
                Err(e) if crate::error::is_retryable(&e) && attempt <= 8 => {
                    std::thread::sleep(std::time::Duration::from_millis(attempt * 2));
                }
                Err(e) => return Err(crate::error::db(what, e)),
            }
        };
        if changed == 0 {
            return Err(StoreError::record_not_found(id));
        }
        Ok(())
    }
}

impl UsageStore for PgStore {
    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn log(&self, record: NewUsage) -> Result<String> {
        self.check_record(&record)?;
        self.maintain_partitions()?;
        let row = rows::InsertRow::new(record, self.clock.now());
        self.usage.group.log(self, row)
    }

    fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        for (index, record) in records.iter().enumerate() {
            self.check_record(record)
                .map_err(|e| StoreError::InvalidBatchRecord {
                    index,
                    source: Box::new(e),
                })?;
        }
        self.maintain_partitions()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let rows: Vec<rows::InsertRow> = records
            .into_iter()
            .map(|r| rows::InsertRow::new(r, now))
            .collect();
        self.transaction("log a batch", |tx| {
            rows::insert_rows(tx, &rows).map_err(dbe("log a batch"))
        })?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Two: one connection's work is done by one server process, which was the limit of an
    /// import from one thread (100k records: the server's backend busy ~75% of the time,
    /// ~42k records/s); two connections share it.
    fn batch_writers(&self) -> usize {
        2
    }

    /// 2,000: with two writers, smaller batches keep the parser and both server backends
    /// busy from the first batch to the last (a 100k-record `afs import` on the dev cluster,
    /// interleaved runs: 1.62-1.82 s with 2,000 against 1.83-2.22 s with 5,000, and
    /// 1.71-1.81 s with 1,000), and each `COPY`'s rows for the statement triggers stay small.
    fn batch_rows(&self) -> usize {
        2000
    }

    fn record_feedback(&self, id: &str, value: FeedbackValue, text: Option<&str>) -> Result<()> {
        validate_feedback_text(text, self.config.max_field_bytes)?;
        let now = self.clock.now();
        validate_time("feedback_at", now).map_err(|e| StoreError::bad_clock(&e))?;
        let value = value.as_i64() as i16;
        let at = rows::micros_of(now);
        self.update_one(
            "record feedback",
            "UPDATE afs_usage SET user_feedback = $1, feedback_text = $2, feedback_at_us = $3 \
             WHERE id = $4",
            id,
            &[
                (&value, Type::INT2),
                (&text, Type::TEXT),
                (&at, Type::INT8),
                (&id, Type::TEXT),
            ],
        )
    }

    fn update_quality(&self, id: &str, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        self.update_one(
            "update quality score",
            "UPDATE afs_usage SET quality_score = $1 WHERE id = $2",
            id,
            &[(&quality, Type::FLOAT8), (&id, Type::TEXT)],
        )
    }

    fn update_qualities(&self, scores: &[(String, f64)]) -> Result<()> {
        const WHAT: &str = "update quality scores";
        validate_qualities(scores)?;
        if scores.is_empty() {
            return Ok(());
        }
        // An id given twice takes its last score, as one update after another would.
        let mut last: HashMap<&str, f64> = HashMap::new();
        for (id, quality) in scores {
            last.insert(id, *quality);
        }
        let mut ids: Vec<&str> = Vec::with_capacity(last.len());
        let mut values: Vec<f64> = Vec::with_capacity(last.len());
        for (id, _) in scores {
            if let Some(q) = last.remove(id.as_str()) {
                ids.push(id);
                values.push(q);
            }
        }
        self.transaction(WHAT, |tx| {
            let changed = tx
                .execute(
                    "UPDATE afs_usage u SET quality_score = s.q \
                     FROM unnest($1::text[], $2::float8[]) AS s (id, q) WHERE u.id = s.id",
                    &[&ids, &values],
                )
                .map_err(dbe(WHAT))?;
            if changed as usize != ids.len() {
                let missing: Option<String> = tx
                    .query_opt(
                        "SELECT s.id FROM unnest($1::text[]) WITH ORDINALITY AS s (id, i) \
                         WHERE NOT EXISTS (SELECT 1 FROM afs_usage u WHERE u.id = s.id) \
                         ORDER BY s.i LIMIT 1",
                        &[&ids],
                    )
                    .map_err(dbe(WHAT))?
                    .map(|row| row.get(0));
                // Returning the error rolls the transaction back: nothing is written.
                return Err(StoreError::record_not_found(&missing.unwrap_or_default()));
            }
            Ok(())
        })
    }

    fn get(&self, id: &str) -> Result<UsageRecord> {
        let sql = format!(
            "SELECT {} FROM afs_usage WHERE id = $1",
            rows::RECORD_COLUMNS
        );
        let row = self
            .conn()?
            .query_opt(&sql, &[&id])
            .map_err(dbe("get record"))?
            .ok_or_else(|| StoreError::record_not_found(id))?;
        rows::record_from_row(&row)
    }

    fn query(&self, filter: &RecordFilter) -> Result<RecordStream<'_>> {
        if let Some(q) = filter.min_quality {
            if !q.is_finite() {
                return Err(StoreError::invalid(
                    "min_quality",
                    format!("{q} is not a finite number"),
                ));
            }
        }
        Ok(Box::new(crate::usage_stream::record_pages(
            self,
            filter.clone(),
        )))
    }

    fn stats_by_model(&self, window: &StatsWindow) -> Result<BTreeMap<String, UsageStats>> {
        Ok(stats_grouped(self, window, Grouping::Model)?
            .into_iter()
            .map(|((model, _), stats)| (model, stats))
            .collect())
    }

    fn stats_by_hour(&self, window: &StatsWindow) -> Result<BTreeMap<DateTime<Utc>, UsageStats>> {
        Ok(stats_grouped(self, window, Grouping::Hour)?
            .into_iter()
            .map(|((_, hour), stats)| (rows::time_of_micros(hour * HOUR_US), stats))
            .collect())
    }

    fn dedupe(&self, dry_run: bool) -> Result<DedupeReport> {
        const WHAT: &str = "dedupe";
        // Each pair's rows ranked newest first (time, then insertion order); every row
        // ranked below the first is a duplicate.
        const RANKED: &str =
            "SELECT ts_us, seq, dedupe_hash FROM (SELECT ts_us, seq, dedupe_hash, \
             row_number() OVER (PARTITION BY dedupe_hash ORDER BY ts_us DESC, seq DESC) AS rank \
             FROM afs_usage WHERE dedupe_hash IS NOT NULL) AS r WHERE rank > 1";
        let sql = if dry_run {
            format!("SELECT count(*), count(DISTINCT dedupe_hash) FROM ({RANKED}) AS v")
        } else {
            format!(
                "WITH v AS ({RANKED}), d AS (DELETE FROM afs_usage u USING v \
                 WHERE u.ts_us = v.ts_us AND u.seq = v.seq RETURNING u.dedupe_hash) \
                 SELECT count(*), count(DISTINCT dedupe_hash) FROM d"
            )
        };
        let (removed, groups): (i64, i64) = self.transaction(WHAT, |tx| {
            let row = tx.query_one(&sql, &[]).map_err(dbe(WHAT))?;
            Ok((row.get(0), row.get(1)))
        })?;
        Ok(DedupeReport {
            duplicate_groups: groups as u64,
            removed: removed as u64,
            dry_run,
        })
    }

    fn prune(&self, cutoff: DateTime<Utc>, archive: Option<&Path>) -> Result<PruneReport> {
        const WHAT: &str = "prune old records";
        let cutoff_us = rows::micros_of(cutoff);
        self.transaction(WHAT, |tx| {
            // Whole months are dropped; the rest is deleted row by row (module
            // `usage_partitions`).
            let months = crate::usage_partitions::droppable(tx, cutoff_us)?;
            let oids: Vec<u32> = months.iter().map(|(oid, _)| *oid).collect();
            let oids: Vec<postgres::types::Oid> = oids;
            let report = match archive {
                None => {
                    let mut removed = tx
                        .execute(
                            "DELETE FROM afs_usage WHERE ts_us < $1 AND tableoid <> ALL($2)",
                            &[&cutoff_us, &oids],
                        )
                        .map_err(dbe(WHAT))?;
                    for (_, m) in &months {
                        let n: i64 = tx
                            .query_one(&format!("SELECT count(*) FROM {}", m.name), &[])
                            .map_err(dbe(WHAT))?
                            .get(0);
                        removed += n as u64;
                    }
                    PruneReport {
                        removed,
                        archived: 0,
                    }
                }
                Some(path) => {
                    // The rows deleted are the rows archived, in time order: the months to
                    // drop read whole, the rest deleted and returned, in one statement. The
                    // archive is written and synced before the commit, and an error (of the
                    // file, or of the delete's triggers, which run when the last row has
                    // been read) rolls everything back and removes the partial file.
                    let sql = format!(
                        "WITH d AS (DELETE FROM afs_usage WHERE ts_us < $1 AND tableoid <> ALL($2) \
                         RETURNING {cols}) \
                         SELECT {cols} FROM (SELECT {cols} FROM afs_usage WHERE tableoid = ANY($2) \
                         UNION ALL SELECT {cols} FROM d) x ORDER BY ts_us, seq",
                        cols = rows::RECORD_COLUMNS
                    );
                    let params: [&(dyn ToSql + Sync); 2] = [&cutoff_us, &oids];
                    let mut iter = tx
                        .query_raw(&sql, params.iter().copied())
                        .map_err(dbe(WHAT))?;
                    let records = std::iter::from_fn(|| {
                        use postgres::fallible_iterator::FallibleIterator;
                        match iter.next() {
                            Ok(Some(row)) => Some(rows::record_from_row(&row)),
                            Ok(None) => None,
                            Err(e) => Some(Err(db(WHAT, e))),
                        }
                    });
                    let archived = afs_store::write_archive(path, records)?;
                    PruneReport {
                        removed: archived,
                        archived,
                    }
                }
            };
            for (_, m) in &months {
                crate::usage_partitions::drop_month(tx, m)?;
            }
            Ok(report)
        })
    }

    fn forget_unit(&self, unit_id: &str) -> Result<u64> {
        if unit_id.is_empty() {
            return Err(StoreError::invalid("unit_id", "must not be empty"));
        }
        self.transaction("forget unit", |tx| {
            tx.execute("DELETE FROM afs_usage WHERE unit_id = $1", &[&unit_id])
                .map_err(dbe("forget unit"))
        })
    }

    fn rebuild_rollups(&self) -> Result<()> {
        self.transaction("rebuild rollups", |tx| {
            tx.batch_execute(
                "LOCK TABLE afs_usage IN SHARE ROW EXCLUSIVE MODE; \
                 DELETE FROM afs_usage_pending; \
                 SELECT afs_usage_rollup_rebuild();",
            )
            .map_err(dbe("rebuild rollups"))
        })
    }
}
