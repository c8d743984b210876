//! Statistics over a time window from the hourly rollups, plus exact scans of the partial
//! hours at the window's edges: the cost grows with the hours in the window, not the records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params_from_iter, Connection};

use super::migrations::{
    aggregate_select_list, rollup_column_list, RollupTable, DAILY, HOURLY, HOUR_US, MINUTELY,
    N_ROLLUP_COLUMNS, RECENT,
};
use super::time::{first_rowid_at, micros_of, micros_of_rowid, time_of_micros};
use afs_store::Result;
use afs_store::StatsWindow;
use afs_store::UsageStats;

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

/// Sums of the rollup columns, in order. Pending deltas may be negative (a removal whose
/// addition was folded already), so parts are added as floats and turned into counts last.
type Sums = [f64; N_ROLLUP_COLUMNS];

fn stats_from_sums(sums: &Sums) -> UsageStats {
    let count = |i: usize| sums[i].max(0.0).round() as u64;
    UsageStats {
        total: count(0),
        with_feedback: count(1),
        positive_feedback: count(2),
        negative_feedback: count(3),
        neutral_feedback: count(4),
        n_quality: count(5),
        sum_quality: sums[6],
        sum_quality_sq: sums[7],
        n_latency: count(8),
        sum_latency_ms: sums[9],
        sum_latency_ms_sq: sums[10],
        total_tokens: sums[11].round() as i64,
    }
}

/// A piece of a window: whole buckets `[first, last)` of a rollup table, or a range
/// `[from, to)` of microseconds scanned from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Buckets(RollupTable, Option<i64>, Option<i64>),
    Scan(Option<i64>, Option<i64>),
}

/// Splits `[since, until)` over rollup levels, coarse to fine: whole buckets of the first
/// level, then the rest at either end with the finer levels, and what no level covers
/// whole is scanned from the log.
fn plan(levels: &[RollupTable], since: Option<i64>, until: Option<i64>) -> Vec<Part> {
    let Some((table, finer)) = levels.split_first() else {
        return vec![Part::Scan(since, until)];
    };
    let w = table.width_us;
    let first = since.map(|s| s.div_euclid(w) + i64::from(s.rem_euclid(w) != 0));
    let last = until.map(|u| u.div_euclid(w));
    if let (Some(f), Some(l)) = (first, last) {
        if f >= l {
            return plan(finer, since, until);
        }
    }
    let mut out = vec![Part::Buckets(*table, first, last)];
    if let (Some(s), Some(f)) = (since, first) {
        if s < f * w {
            out.extend(plan(finer, Some(s), Some(f * w)));
        }
    }
    if let (Some(u), Some(l)) = (until, last) {
        if l * w < u {
            out.extend(plan(finer, Some(l * w), Some(u)));
        }
    }
    out
}

/// Statistics of `window`, grouped by model or by hour.
pub(crate) fn stats_grouped(
    conn: &Connection,
    window: &StatsWindow,
    grouping: Grouping,
) -> Result<BTreeMap<GroupKey, UsageStats>> {
    let (since, mut until) = (window.since.map(micros_of), window.until.map(micros_of));
    // A window that ends after the newest record holds every record from its start on: its
    // end is open, so its last buckets are read whole instead of scanning the records of
    // the current minute (all of them, after a burst). The newest record is the table's
    // last rowid, one step down the b-tree.
    if let Some(u) = until {
        let newest: Option<i64> = conn
            .prepare_cached("SELECT MAX(rowid) FROM usage")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(|e| crate::db("read statistics", e))?;
        if newest.is_none_or(|rowid| micros_of_rowid(rowid) < u) {
            until = None;
        }
    }
    let plan = match grouping {
        Grouping::Model => plan(&[DAILY, HOURLY, MINUTELY], since, until),
        Grouping::Hour => plan(&[HOURLY, MINUTELY], since, until),
    };
    let mut out: BTreeMap<GroupKey, Sums> = BTreeMap::new();
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
        // A scan reads a range of the log by rowid, which follows time (see `ROWID_SLOTS`).
        let (column, from, to) = match part {
            Part::Buckets(table, first, last) => (table.key, first, last),
            Part::Scan(from, to) => ("rowid", from.map(first_rowid_at), to.map(first_rowid_at)),
        };
        // The conditions on `column` (the bucket or rowid), and their arguments in order.
        let conditions = |column: &str| {
            let mut conds = Vec::new();
            if from.is_some() {
                conds.push(format!("{column} >= ?"));
            }
            if to.is_some() {
                conds.push(format!("{column} < ?"));
            }
            if window.model.is_some() {
                conds.push("model = ?".to_string());
            }
            conds
        };
        let args: Vec<rusqlite::types::Value> = [from, to]
            .into_iter()
            .flatten()
            .map(Into::into)
            .chain(window.model.clone().map(Into::into))
            .collect();
        let conds = conditions(column);
        let sql = match part {
            Part::Buckets(table, ..) => {
                // A bucket is its row in its table plus its pending delta in RECENT.
                let hour_expr =
                    |key: &str| format!("{key} / {}", HOUR_US / table.width_us.min(HOUR_US));
                let mut pending_conds = conditions("bucket");
                pending_conds.push(format!("level = {}", table.level()));
                let pending = format!(
                    "SELECT {}, {sums} FROM {RECENT} {} GROUP BY 1, 2",
                    group_expr(&hour_expr("bucket")),
                    where_clause(&pending_conds)
                );
                accumulate(conn, &pending, args.clone(), &mut out)?;
                format!(
                    "SELECT {}, {sums} FROM {} {} GROUP BY 1, 2",
                    group_expr(&hour_expr(table.key)),
                    table.name,
                    where_clause(&conds)
                )
            }
            Part::Scan(..) => format!(
                "SELECT {}, {} FROM usage {} GROUP BY 1, 2",
                group_expr(&format!("ts_us / {HOUR_US}")),
                aggregate_select_list(),
                where_clause(&conds)
            ),
        };
        accumulate(conn, &sql, args, &mut out)?;
    }
    Ok(out
        .into_iter()
        .map(|(key, sums)| (key, stats_from_sums(&sums)))
        .filter(|(_, stats)| stats.total > 0)
        .collect())
}

fn where_clause(conds: &[impl AsRef<str>]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        let conds: Vec<&str> = conds.iter().map(AsRef::as_ref).collect();
        format!("WHERE {}", conds.join(" AND "))
    }
}

fn accumulate(
    conn: &Connection,
    sql: &str,
    args: Vec<rusqlite::types::Value>,
    out: &mut BTreeMap<GroupKey, Sums>,
) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(|e| crate::db("read statistics", e))?;
    let mut rows = stmt
        .query(params_from_iter(args))
        .map_err(|e| crate::db("read statistics", e))?;
    while let Some(row) = rows.next().map_err(|e| crate::db("read statistics", e))? {
        let key = GroupKey {
            model: row.get(0).map_err(|e| crate::db("read statistics", e))?,
            hour: row.get(1).map_err(|e| crate::db("read statistics", e))?,
        };
        let sums = out.entry(key).or_insert([0.0; N_ROLLUP_COLUMNS]);
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum += row
                .get::<_, f64>(2 + i)
                .map_err(|e| crate::db("read statistics", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::DAY_US;

    fn hourly(since: Option<i64>, until: Option<i64>) -> Vec<Part> {
        plan(&[HOURLY], since, until)
    }

    #[test]
    fn windows_split_into_whole_hours_and_edges() {
        let h = HOUR_US;
        let hours = |f, l| Part::Buckets(HOURLY, f, l);
        let scan = |f, t| Part::Scan(f, t);
        assert_eq!(hourly(None, None), vec![hours(None, None)]);
        assert_eq!(hourly(Some(2 * h), None), vec![hours(Some(2), None)]);
        assert_eq!(
            hourly(Some(2 * h + 5), None),
            vec![hours(Some(3), None), scan(Some(2 * h + 5), Some(3 * h))]
        );
        assert_eq!(hourly(None, Some(5 * h)), vec![hours(None, Some(5))]);
        assert_eq!(
            hourly(None, Some(5 * h + 1)),
            vec![hours(None, Some(5)), scan(Some(5 * h), Some(5 * h + 1))]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(3 * h + 1)),
            vec![
                hours(Some(2), Some(3)),
                scan(Some(h + 1), Some(2 * h)),
                scan(Some(3 * h), Some(3 * h + 1))
            ]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(h + 7)),
            vec![scan(Some(h + 1), Some(h + 7))]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(2 * h + 7)),
            vec![scan(Some(h + 1), Some(2 * h + 7))]
        );
        assert_eq!(
            hourly(Some(-h - 1), Some(0)),
            vec![hours(Some(-1), Some(0)), scan(Some(-h - 1), Some(-h))]
        );
    }

    #[test]
    fn long_windows_read_days_then_hours_then_minutes_then_the_log() {
        let (d, h, m) = (DAY_US, HOUR_US, MINUTELY.width_us);
        let levels = [DAILY, HOURLY, MINUTELY];
        assert_eq!(
            plan(&levels, None, None),
            vec![Part::Buckets(DAILY, None, None)]
        );
        assert_eq!(
            plan(
                &levels,
                Some(d + 2 * h + 3 * m + 5),
                Some(5 * d + 3 * h + 7 * m)
            ),
            vec![
                Part::Buckets(DAILY, Some(2), Some(5)),
                Part::Buckets(HOURLY, Some(27), Some(48)),
                Part::Buckets(MINUTELY, Some(26 * 60 + 4), Some(27 * 60)),
                Part::Scan(Some(d + 2 * h + 3 * m + 5), Some(d + 2 * h + 4 * m)),
                Part::Buckets(HOURLY, Some(120), Some(123)),
                Part::Buckets(MINUTELY, Some(123 * 60), Some(123 * 60 + 7)),
            ]
        );
        // Within one minute: a scan alone.
        assert_eq!(
            plan(&levels, Some(d + 5), Some(d + 9)),
            vec![Part::Scan(Some(d + 5), Some(d + 9))]
        );
    }
}
