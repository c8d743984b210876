//! Streaming reads: records fetched in pages with keyset pagination on `(ts_us, seq)`, each
//! page a short query on a pooled connection, so memory stays bounded and no transaction is
//! held open between pages.

use std::collections::VecDeque;

use afs_store::{FeedbackFilter, Order, Paging, RecordFields, RecordFilter, Result, UsageRecord};
use postgres::types::ToSql;

use crate::error::dbe;
use crate::store::PgStore;
use crate::usage_rows::{
    micros_of, record_from_row, RECORD_COLUMNS, SEQ_COLUMN, TRAINING_COLUMNS, TS_COLUMN,
};

/// The first page is small so the first record arrives quickly; later pages grow
/// ([`Paging::Growing`]). [`Paging::Bulk`] starts at the largest.
const FIRST_PAGE: u64 = 64;
/// The largest page.
const MAX_PAGE: u64 = 2048;

/// A parameter of a page's query.
type Param = Box<dyn ToSql + Sync + Send>;

/// A stream of records read in keyset pages.
pub(crate) struct RecordPages<'a> {
    /// Where pages are read from.
    store: &'a PgStore,
    /// The caller's filter.
    filter: RecordFilter,
    /// `(ts_us, seq)` of the last record returned.
    after: Option<(i64, i64)>,
    /// Records read and not yet returned.
    buffer: VecDeque<UsageRecord>,
    /// Rows the next page asks for.
    page_size: u64,
    /// Records still to return under the filter's limit.
    remaining: Option<u64>,
    /// Whether the last page has been read.
    exhausted: bool,
}

impl<'a> RecordPages<'a> {
    /// A stream of the records `filter` selects.
    pub(crate) fn new(store: &'a PgStore, filter: RecordFilter) -> Self {
        let page_size = match filter.paging {
            Paging::Growing => FIRST_PAGE,
            Paging::Bulk => MAX_PAGE,
        };
        RecordPages {
            store,
            remaining: filter.limit,
            filter,
            after: None,
            buffer: VecDeque::new(),
            page_size,
            exhausted: false,
        }
    }

    /// Reads the next page into the buffer.
    fn fetch_page(&mut self) -> Result<()> {
        const WHAT: &str = "query records";
        let f = &self.filter;
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Param> = Vec::new();
        let mut arg = |conds: &mut Vec<String>, cond: &str, value: Param| {
            args.push(value);
            conds.push(cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(since) = f.since {
            arg(&mut conds, "ts_us >= ?", Box::new(micros_of(since)));
        }
        if let Some(until) = f.until {
            arg(&mut conds, "ts_us < ?", Box::new(micros_of(until)));
        }
        if let Some(model) = &f.model {
            arg(&mut conds, "model = ?", Box::new(model.clone()));
        }
        if let Some(expert) = &f.expert {
            arg(&mut conds, "expert = ?", Box::new(expert.clone()));
        }
        if let Some(unit) = &f.unit_id {
            // Through the unit's index (unit_id, ts_us, seq).
            arg(&mut conds, "unit_id = ?", Box::new(unit.clone()));
        }
        if let Some(min) = f.min_quality {
            let cond = if f.keep_unscored {
                "(quality_score >= ? OR quality_score IS NULL)"
            } else {
                "quality_score >= ?"
            };
            arg(&mut conds, cond, Box::new(min));
        }
        // Any condition on present feedback reads through the partial index of records
        // with feedback (its predicate is repeated so the planner may use it).
        match f.feedback {
            FeedbackFilter::Any => {}
            FeedbackFilter::Present => conds.push("user_feedback IS NOT NULL".into()),
            FeedbackFilter::Absent => conds.push("user_feedback IS NULL".into()),
            FeedbackFilter::AtLeast(v) => {
                conds.push("user_feedback IS NOT NULL".into());
                arg(&mut conds, "user_feedback >= ?::int8", Box::new(v));
            }
        }
        let (cmp, dir) = match f.order {
            Order::OldestFirst => (">", "ASC"),
            Order::NewestFirst => ("<", "DESC"),
        };
        if let Some((ts, seq)) = self.after {
            args.push(Box::new(ts));
            args.push(Box::new(seq));
            conds.push(format!(
                "(ts_us, seq) {cmp} (${}, ${})",
                args.len() - 1,
                args.len()
            ));
        }
        let page = match self.remaining {
            Some(left) => left.min(self.page_size),
            None => self.page_size,
        };
        let last_page = self.remaining.is_some_and(|left| left <= self.page_size);
        let columns = match f.fields {
            RecordFields::All => RECORD_COLUMNS,
            RecordFields::Training => TRAINING_COLUMNS,
        };
        let where_sql = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {columns} FROM afs_usage {where_sql} ORDER BY ts_us {dir}, seq {dir} \
             LIMIT {page}"
        );
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = self.store.conn()?.query(&sql, &params).map_err(dbe(WHAT))?;
        let n = rows.len() as u64;
        for row in &rows {
            let record = record_from_row(row)?;
            self.after = Some((row.get(TS_COLUMN), row.get(SEQ_COLUMN)));
            self.buffer.push_back(record);
        }
        if n < page || last_page {
            self.exhausted = true;
        }
        self.page_size = (self.page_size * 4).min(MAX_PAGE);
        Ok(())
    }
}

impl Iterator for RecordPages<'_> {
    type Item = Result<UsageRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            return None;
        }
        if self.buffer.is_empty() && !self.exhausted {
            if let Err(e) = self.fetch_page() {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        let record = self.buffer.pop_front()?;
        if let Some(left) = self.remaining.as_mut() {
            *left -= 1;
        }
        Some(Ok(record))
    }
}
