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
use afs_store::window::{plan_window, RollupLevel, WindowPart};
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

impl RollupLevel for RollupTable {
    fn width_us(&self) -> i64 {
        self.width_us
    }
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
        Grouping::Model => plan_window(&[DAILY, HOURLY, MINUTELY], since, until),
        Grouping::Hour => plan_window(&[HOURLY, MINUTELY], since, until),
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
            WindowPart::Buckets(table, first, last) => (table.key, first, last),
            WindowPart::Scan(from, to) => {
                ("rowid", from.map(first_rowid_at), to.map(first_rowid_at))
            }
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
            WindowPart::Buckets(table, ..) => {
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
            WindowPart::Scan(..) => format!(
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
