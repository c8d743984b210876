//! Statistics over a time window from the hourly rollups, plus exact scans of the partial
//! hours at the window's edges: the cost grows with the hours in the window, not the records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params_from_iter, Connection, Row};

use super::migrations::{aggregate_select_list, rollup_column_list, HOUR_US};
use super::time::{micros_of, time_of_micros};
use crate::error::{Result, StoreError};
use crate::query::StatsWindow;
use crate::stats::UsageStats;

/// How to group the window's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouping {
    Model,
    Hour,
}

/// A group key: the model, or the hour index (hours since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey {
    pub(crate) model: String,
    hour: i64,
}

impl GroupKey {
    pub(crate) fn hour_start(&self) -> DateTime<Utc> {
        time_of_micros(self.hour * HOUR_US)
    }
}

/// The parts of a window: whole hours `[first, last)` read from the rollup table, and
/// partial ranges `[from, to)` in microseconds scanned from the log.
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    whole_hours: Option<(Option<i64>, Option<i64>)>,
    edges: Vec<(Option<i64>, Option<i64>)>,
}

fn split(since: Option<i64>, until: Option<i64>) -> Parts {
    let first = since.map(|s| s.div_euclid(HOUR_US) + i64::from(s.rem_euclid(HOUR_US) != 0));
    let last = until.map(|u| u.div_euclid(HOUR_US));
    if let (Some(f), Some(l)) = (first, last) {
        if f >= l {
            // The window lies within (at most) two partial hours: scan it whole.
            return Parts {
                whole_hours: None,
                edges: vec![(since, until)],
            };
        }
    }
    let mut edges = Vec::new();
    if let (Some(s), Some(f)) = (since, first) {
        if s < f * HOUR_US {
            edges.push((Some(s), Some(f * HOUR_US)));
        }
    }
    if let (Some(u), Some(l)) = (until, last) {
        if l * HOUR_US < u {
            edges.push((Some(l * HOUR_US), Some(u)));
        }
    }
    Parts {
        whole_hours: Some((first, last)),
        edges,
    }
}

fn stats_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<UsageStats> {
    let count = |i: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, f64>(offset + i)?.max(0.0).round() as u64)
    };
    Ok(UsageStats {
        total: count(0)?,
        with_feedback: count(1)?,
        positive_feedback: count(2)?,
        negative_feedback: count(3)?,
        neutral_feedback: count(4)?,
        n_quality: count(5)?,
        sum_quality: row.get(offset + 6)?,
        sum_quality_sq: row.get(offset + 7)?,
        n_latency: count(8)?,
        sum_latency_ms: row.get(offset + 9)?,
        sum_latency_ms_sq: row.get(offset + 10)?,
        total_tokens: row.get::<_, f64>(offset + 11)?.round() as i64,
    })
}

/// Statistics of `window`, grouped by model or by hour.
pub(crate) fn stats_grouped(
    conn: &Connection,
    window: &StatsWindow,
    grouping: Grouping,
) -> Result<BTreeMap<GroupKey, UsageStats>> {
    let parts = split(window.since.map(micros_of), window.until.map(micros_of));
    let mut out: BTreeMap<GroupKey, UsageStats> = BTreeMap::new();
    let group_expr = |hour_expr: &str| match grouping {
        Grouping::Model => "model, 0".to_string(),
        Grouping::Hour => format!("'', {hour_expr}"),
    };

    if let Some((first, last)) = parts.whole_hours {
        let sums = rollup_column_list()
            .split(", ")
            .map(|c| format!("TOTAL({c})"))
            .collect::<Vec<_>>()
            .join(", ");
        let (mut conds, mut args) = (Vec::new(), Vec::<rusqlite::types::Value>::new());
        if let Some(f) = first {
            conds.push("hour >= ?");
            args.push(f.into());
        }
        if let Some(l) = last {
            conds.push("hour < ?");
            args.push(l.into());
        }
        if let Some(m) = &window.model {
            conds.push("model = ?");
            args.push(m.clone().into());
        }
        let group = group_expr("hour");
        let sql = format!(
            "SELECT {group}, {sums} FROM usage_rollup {} GROUP BY 1, 2",
            where_clause(&conds)
        );
        accumulate(conn, &sql, args, &mut out)?;
    }
    for (from, to) in parts.edges {
        let (mut conds, mut args) = (Vec::new(), Vec::<rusqlite::types::Value>::new());
        if let Some(f) = from {
            conds.push("ts_us >= ?");
            args.push(f.into());
        }
        if let Some(t) = to {
            conds.push("ts_us < ?");
            args.push(t.into());
        }
        if let Some(m) = &window.model {
            conds.push("model = ?");
            args.push(m.clone().into());
        }
        let group = group_expr(&format!("ts_us / {HOUR_US}"));
        let sql = format!(
            "SELECT {group}, {} FROM usage {} GROUP BY 1, 2",
            aggregate_select_list(),
            where_clause(&conds)
        );
        accumulate(conn, &sql, args, &mut out)?;
    }
    out.retain(|_, stats| stats.total > 0);
    Ok(out)
}

fn where_clause(conds: &[&str]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    }
}

fn accumulate(
    conn: &Connection,
    sql: &str,
    args: Vec<rusqlite::types::Value>,
    out: &mut BTreeMap<GroupKey, UsageStats>,
) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(|e| StoreError::db("read statistics", e))?;
    let mut rows = stmt
        .query(params_from_iter(args))
        .map_err(|e| StoreError::db("read statistics", e))?;
    while let Some(row) = rows
        .next()
        .map_err(|e| StoreError::db("read statistics", e))?
    {
        let key = GroupKey {
            model: row
                .get(0)
                .map_err(|e| StoreError::db("read statistics", e))?,
            hour: row
                .get(1)
                .map_err(|e| StoreError::db("read statistics", e))?,
        };
        let stats = stats_from_row(row, 2).map_err(|e| StoreError::db("read statistics", e))?;
        out.entry(key).or_default().add(&stats);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        since: Option<i64>,
        until: Option<i64>,
        whole: Option<(Option<i64>, Option<i64>)>,
        edges: &[(Option<i64>, Option<i64>)],
    ) {
        assert_eq!(
            split(since, until),
            Parts {
                whole_hours: whole,
                edges: edges.to_vec()
            }
        );
    }

    #[test]
    fn windows_split_into_whole_hours_and_edges() {
        let h = HOUR_US;
        check(None, None, Some((None, None)), &[]);
        check(Some(2 * h), None, Some((Some(2), None)), &[]);
        check(
            Some(2 * h + 5),
            None,
            Some((Some(3), None)),
            &[(Some(2 * h + 5), Some(3 * h))],
        );
        check(None, Some(5 * h), Some((None, Some(5))), &[]);
        check(
            None,
            Some(5 * h + 1),
            Some((None, Some(5))),
            &[(Some(5 * h), Some(5 * h + 1))],
        );
        check(
            Some(h + 1),
            Some(3 * h + 1),
            Some((Some(2), Some(3))),
            &[(Some(h + 1), Some(2 * h)), (Some(3 * h), Some(3 * h + 1))],
        );
        check(
            Some(h + 1),
            Some(h + 7),
            None,
            &[(Some(h + 1), Some(h + 7))],
        );
        check(
            Some(h + 1),
            Some(2 * h + 7),
            None,
            &[(Some(h + 1), Some(2 * h + 7))],
        );
        check(
            Some(-h - 1),
            Some(0),
            Some((Some(-1), Some(0))),
            &[(Some(-h - 1), Some(-h))],
        );
    }
}
