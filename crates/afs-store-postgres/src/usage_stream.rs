//! Streaming reads: records fetched in pages with keyset pagination on `(ts_us, seq)`, each
//! page a short query on a pooled connection, so memory stays bounded and no transaction is
//! held open between pages.

use std::collections::VecDeque;

use afs_store::paging::{PageSource, Pages};
use afs_store::{FeedbackFilter, Order, RecordFields, RecordFilter, Result, UsageRecord};
use postgres::types::ToSql;

use crate::error::dbe;
use crate::store::PgStore;
use crate::usage_rows::{
    micros_of, record_from_row, RECORD_COLUMNS, SEQ_COLUMN, TRAINING_COLUMNS, TS_COLUMN,
};

/// A parameter of a page's query.
type Param = Box<dyn ToSql + Sync + Send>;

/// A stream of the records `filter` selects, read in keyset pages.
pub(crate) fn record_pages(store: &PgStore, filter: RecordFilter) -> Pages<PgPages<'_>> {
    let (paging, limit) = (filter.paging, filter.limit);
    Pages::new(
        PgPages {
            store,
            filter,
            after: None,
        },
        paging,
        limit,
    )
}

/// The pages of a stream: the filter's query, continued after the last record read.
pub(crate) struct PgPages<'a> {
    /// Where pages are read from.
    store: &'a PgStore,
    /// The caller's filter.
    filter: RecordFilter,
    /// `(ts_us, seq)` of the last record read.
    after: Option<(i64, i64)>,
}

impl PageSource for PgPages<'_> {
    fn read_page(&mut self, page: u64, into: &mut VecDeque<UsageRecord>) -> Result<bool> {
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
            into.push_back(record);
        }
        Ok(n < page)
    }
}
