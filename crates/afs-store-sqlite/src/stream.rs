//! Streaming reads: records are fetched in keyset-paginated pages, so memory stays bounded
//! and no read transaction is held open between pages.

use std::collections::VecDeque;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::rows::{record_from_row, RECORD_COLUMNS, ROWID_COLUMN, TRAINING_COLUMNS, TS_COLUMN};
use super::time::{first_rowid_at, micros_of};
use super::SqliteStore;
use afs_store::paging::{PageSource, Pages};
use afs_store::Result;
use afs_store::UsageRecord;
use afs_store::{FeedbackFilter, Order, RecordFields, RecordFilter};

/// Pages of at least this many rows are read through a memory map of the database file
/// instead of copying each 8 KiB page from the kernel into SQLite's page cache (records
/// with feedback lie about one per page). With pages growing from 64 rows the map made a
/// generation run ~10% faster; with bulk pages the two cost about the same, and the map
/// still keeps no cached copies (peak RSS of a generation run fell from about 50 to 30 MB).
/// The map is dropped when the page has been read, so the file's pages never pile up in
/// the process's resident memory. Smaller reads, such as a `limit 1` lookup, are not worth
/// mapping the file for.
const MAPPED_PAGE: u64 = 64;
/// How much of the file a mapped page may map; SQLite caps it at its own limit (2 GB).
const MAP_LIMIT: &str = "PRAGMA mmap_size = 2147418112";
const UNMAP: &str = "PRAGMA mmap_size = 0";

/// A stream of the records `filter` selects, read in keyset pages.
pub(crate) fn record_pages(store: &SqliteStore, filter: RecordFilter) -> Pages<SqlitePages<'_>> {
    let (paging, limit) = (filter.paging, filter.limit);
    Pages::new(
        SqlitePages {
            store,
            filter,
            after: None,
        },
        paging,
        limit,
    )
}

/// The pages of a stream: the filter's query, continued after the last record read.
pub(crate) struct SqlitePages<'a> {
    store: &'a SqliteStore,
    filter: RecordFilter,
    /// `(ts_us, rowid)` of the last record read; the next page starts after its time
    /// (through the feedback index) or after its rowid (through the table).
    after: Option<(i64, i64)>,
}

impl PageSource for SqlitePages<'_> {
    fn read_page(&mut self, page: u64, into: &mut VecDeque<UsageRecord>) -> Result<bool> {
        self.fetch_page(page, into)
    }
}

impl SqlitePages<'_> {
    /// Reads a page of about `page` records into `into`; returns whether it was the last.
    fn fetch_page(&mut self, page: u64, into: &mut VecDeque<UsageRecord>) -> Result<bool> {
        let f = &self.filter;
        // Records with feedback are read through their partial index on `ts_us`; any other
        // filter walks the table itself, whose rowids are in time order.
        let by_feedback_index = matches!(
            f.feedback,
            FeedbackFilter::Present | FeedbackFilter::AtLeast(_)
        );
        let (mut conds, mut args) = filter_conditions(f, by_feedback_index);
        let (keyset, order) = keyset_and_order(f.order, by_feedback_index);
        if let Some((ts, rowid)) = self.after {
            conds.push(&keyset);
            args.push(if by_feedback_index { ts } else { rowid }.into());
        }
        let sql = page_sql(f.fields, &conds, &order, by_feedback_index, page);
        let conn = self.store.conn()?;
        let mapped = page >= MAPPED_PAGE;
        if mapped {
            set_map(&conn, MAP_LIMIT)?;
        }
        let read = self.read_rows(&conn, &sql, args, page, by_feedback_index, into);
        if mapped {
            set_map(&conn, UNMAP)?;
        }
        read
    }

    /// Runs one page's query and appends its records to `into`; returns whether the page
    /// was the last. See `fetch_page`.
    fn read_rows(
        &mut self,
        conn: &Connection,
        sql: &str,
        args: Vec<Value>,
        page: u64,
        by_feedback_index: bool,
        into: &mut VecDeque<UsageRecord>,
    ) -> Result<bool> {
        let mut stmt = conn
            .prepare_cached(sql)
            .map_err(|e| crate::db("query records", e))?;
        let mut rows = stmt
            .query(params_from_iter(args))
            .map_err(|e| crate::db("query records", e))?;
        let mut n = 0u64;
        let mut full = false;
        // The index path's rows, with their keys, until sorted into insertion order.
        let mut keyed: Vec<(i64, i64, UsageRecord)> = Vec::new();
        while let Some(row) = rows.next().map_err(|e| crate::db("query records", e))? {
            let ts: Option<i64> = row
                .get(TS_COLUMN)
                .map_err(|e| crate::db("read record", e))?;
            let ts = ts.unwrap_or(0);
            // Only a query without LIMIT (the index path, not on its last page) gets here past
            // `page` rows: it stops at the first row of a later microsecond.
            if n >= page && self.after.map(|a| a.0) != Some(ts) {
                full = true;
                break;
            }
            let record = record_from_row(row).map_err(|e| crate::db("read record", e))?;
            let rowid: i64 = row
                .get(ROWID_COLUMN)
                .map_err(|e| crate::db("read record", e))?;
            self.after = Some((ts, rowid));
            if by_feedback_index {
                keyed.push((ts, rowid, record));
            } else {
                into.push_back(record);
            }
            n += 1;
        }
        if by_feedback_index {
            // Whole microseconds only, so sorting the page sorts the stream.
            match self.filter.order {
                Order::OldestFirst => keyed.sort_unstable_by_key(|&(ts, rowid, _)| (ts, rowid)),
                Order::NewestFirst => {
                    keyed.sort_unstable_by_key(|&(ts, rowid, _)| std::cmp::Reverse((ts, rowid)))
                }
            }
            into.extend(keyed.into_iter().map(|(_, _, record)| record));
        }
        // The table path's LIMIT ends a page; only a short one is the last.
        Ok(if by_feedback_index { !full } else { n < page })
    }
}

/// The conditions of the `WHERE` clause that select `f`'s records, with their arguments in
/// order. The time bounds are on `ts_us` when read `by_feedback_index`, else on the rowid.
fn filter_conditions(f: &RecordFilter, by_feedback_index: bool) -> (Vec<&'static str>, Vec<Value>) {
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let time_bound = |t| -> Value {
        let us = micros_of(t);
        if by_feedback_index {
            us.into()
        } else {
            first_rowid_at(us).into()
        }
    };
    let (lower, upper) = if by_feedback_index {
        ("ts_us >= ?", "ts_us < ?")
    } else {
        ("rowid >= ?", "rowid < ?")
    };
    if let Some(since) = f.since {
        conds.push(lower);
        args.push(time_bound(since));
    }
    if let Some(until) = f.until {
        conds.push(upper);
        args.push(time_bound(until));
    }
    if let Some(model) = &f.model {
        conds.push("model = ?");
        args.push(model.clone().into());
    }
    if let Some(expert) = &f.expert {
        conds.push("expert = ?");
        args.push(expert.clone().into());
    }
    if let Some(unit) = &f.unit_id {
        conds.push("unit_id = ?");
        args.push(unit.clone().into());
    }
    if let Some(q) = f.min_quality {
        conds.push(if f.keep_unscored {
            "(quality_score >= ? OR quality_score IS NULL)"
        } else {
            "quality_score >= ?"
        });
        args.push(q.into());
    }
    match f.feedback {
        FeedbackFilter::Any => {}
        FeedbackFilter::Present => conds.push("user_feedback IS NOT NULL"),
        FeedbackFilter::Absent => conds.push("user_feedback IS NULL"),
        FeedbackFilter::AtLeast(v) => {
            conds.push("user_feedback >= ?");
            args.push(v.into());
        }
    }
    (conds, args)
}

/// The keyset condition that continues after the last record read, and the `ORDER BY`
/// terms, for reading in `order`.
///
/// Through the feedback index the order is the index's, by `ts_us` (rows of one
/// microsecond in the index's order, by feedback and quality): ordering by anything more
/// would sort every page in a temporary b-tree. A page therefore ends only where the time
/// changes, the next one starts after that time, and each page is put in insertion (rowid)
/// order within its microseconds once read. Through the table the order is the rowid's.
fn keyset_and_order(order: Order, by_feedback_index: bool) -> (String, String) {
    let (cmp, dir) = match order {
        Order::OldestFirst => (">", "ASC"),
        Order::NewestFirst => ("<", "DESC"),
    };
    if by_feedback_index {
        (format!("ts_us {cmp} ?"), format!("ts_us {dir}"))
    } else {
        (format!("rowid {cmp} ?"), format!("rowid {dir}"))
    }
}

/// The query of a page of about `page` records: `fields`' columns, selected by `conds`, in
/// `order`.
fn page_sql(
    fields: RecordFields,
    conds: &[&str],
    order: &str,
    by_feedback_index: bool,
    page: u64,
) -> String {
    let where_sql = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    // The index path reads on past `page` rows to the end of the last microsecond, so it
    // has no LIMIT, not even on the last page wanted: a LIMIT could cut a microsecond
    // in index order and keep rows that come after the cut in insertion order.
    let limit = if by_feedback_index {
        String::new()
    } else {
        format!(" LIMIT {page}")
    };
    let columns = match fields {
        RecordFields::All => RECORD_COLUMNS,
        RecordFields::Training => TRAINING_COLUMNS,
    };
    format!("SELECT {columns} FROM usage {where_sql} ORDER BY {order}{limit}")
}

/// Sets the connection's memory-map limit (`MAP_LIMIT` or `UNMAP`).
fn set_map(conn: &Connection, pragma: &str) -> Result<()> {
    let set = || -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(pragma)?;
        let mut rows = stmt.query([])?;
        // The pragma takes effect when stepped; it answers with the limit now in force.
        while rows.next()?.is_some() {}
        Ok(())
    };
    set().map_err(|e| crate::db("set the memory-map limit", e))
}
