//! Statistics over a time window from the hourly rollups, plus exact scans of the partial
//! hours at the window's edges: the cost grows with the hours in the window, not the records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params_from_iter, Connection, Row};

use super::migrations::{
    aggregate_select_list, rollup_column_list, RollupTable, DAILY, DAY_US, HOURLY, HOUR_US,
};
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
/// A piece of a window: whole buckets `[first, last)` of a rollup table, or a range
/// `[from, to)` of microseconds scanned from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Buckets(RollupTable, Option<i64>, Option<i64>),
    Scan(Option<i64>, Option<i64>),
}

/// Hourly plan: whole hours from the hourly rollups, partial hours scanned.
fn hourly_plan(since: Option<i64>, until: Option<i64>) -> Vec<Part> {
    let parts = split(since, until);
    let mut plan: Vec<Part> = parts
        .whole_hours
        .map(|(first, last)| Part::Buckets(HOURLY, first, last))
        .into_iter()
        .collect();
    plan.extend(
        parts
            .edges
            .into_iter()
            .map(|(from, to)| Part::Scan(from, to)),
    );
    plan
}

/// Plan for totals: whole days from the daily rollups, then the hourly plan for what is
/// left at either end, so a long window reads a few hundred rows at most.
fn daily_plan(since: Option<i64>, until: Option<i64>) -> Vec<Part> {
    let first = since.map(|s| s.div_euclid(DAY_US) + i64::from(s.rem_euclid(DAY_US) != 0));
    let last = until.map(|u| u.div_euclid(DAY_US));
    if let (Some(f), Some(l)) = (first, last) {
        if f >= l {
            return hourly_plan(since, until);
        }
    }
    let mut plan = vec![Part::Buckets(DAILY, first, last)];
    if let (Some(s), Some(f)) = (since, first) {
        if s < f * DAY_US {
            plan.extend(hourly_plan(Some(s), Some(f * DAY_US)));
        }
    }
    if let (Some(u), Some(l)) = (until, last) {
        if l * DAY_US < u {
            plan.extend(hourly_plan(Some(l * DAY_US), Some(u)));
        }
    }
    plan
}

/// Statistics of `window`, grouped by model or by hour.
pub(crate) fn stats_grouped(
    conn: &Connection,
    window: &StatsWindow,
    grouping: Grouping,
) -> Result<BTreeMap<GroupKey, UsageStats>> {
    let (since, until) = (window.since.map(micros_of), window.until.map(micros_of));
    let plan = match grouping {
        Grouping::Model => daily_plan(since, until),
        Grouping::Hour => hourly_plan(since, until),
    };
    let mut out: BTreeMap<GroupKey, UsageStats> = BTreeMap::new();
    let group_expr = |hour_expr: &str| match grouping {
        Grouping::Model => "model, 0".to_string(),
        Grouping::Hour => format!("'', {hour_expr}"),
    };
    let sums = rollup_column_list()
        .split(", ")
        .map(|c| format!("TOTAL({c})"))
        .collect::<Vec<_>>()
        .join(", ");
    for part in plan {
        let (mut conds, mut args) = (Vec::new(), Vec::<rusqlite::types::Value>::new());
        let (column, from, to) = match part {
            Part::Buckets(table, first, last) => (table.key, first, last),
            Part::Scan(from, to) => ("ts_us", from, to),
        };
        let lower = format!("{column} >= ?");
        let upper = format!("{column} < ?");
        if let Some(f) = from {
            conds.push(lower.as_str());
            args.push(f.into());
        }
        if let Some(t) = to {
            conds.push(upper.as_str());
            args.push(t.into());
        }
        if let Some(m) = &window.model {
            conds.push("model = ?");
            args.push(m.clone().into());
        }
        let sql = match part {
            Part::Buckets(table, ..) => format!(
                "SELECT {}, {sums} FROM {} {} GROUP BY 1, 2",
                group_expr(table.key),
                table.name,
                where_clause(&conds)
            ),
            Part::Scan(..) => format!(
                "SELECT {}, {} FROM usage {} GROUP BY 1, 2",
                group_expr(&format!("ts_us / {HOUR_US}")),
                aggregate_select_list(),
                where_clause(&conds)
            ),
        };
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
    fn long_windows_read_whole_days_then_hours_then_edges() {
        let (d, h) = (DAY_US, HOUR_US);
        assert_eq!(
            daily_plan(None, None),
            vec![Part::Buckets(DAILY, None, None)]
        );
        assert_eq!(
            daily_plan(Some(d + 2 * h + 5), Some(5 * d + 3 * h)),
            vec![
                Part::Buckets(DAILY, Some(2), Some(5)),
                Part::Buckets(HOURLY, Some(27), Some(48)),
                Part::Scan(Some(d + 2 * h + 5), Some(d + 3 * h)),
                Part::Buckets(HOURLY, Some(120), Some(123)),
            ]
        );
        // Within one day: the hourly plan alone.
        assert_eq!(
            daily_plan(Some(d + h), Some(d + 5 * h)),
            hourly_plan(Some(d + h), Some(d + 5 * h))
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
