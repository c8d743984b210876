//! Statistics over a time window from the rollup tables: whole hours from
//! `afs_usage_hour`, whole minutes at the edges from `afs_usage_minute`, the pending deltas
//! of single-record logging for all those minutes from `afs_usage_pending`, and only the
//! records of a partial minute at an edge scanned from the log. One statement, in one
//! read-only snapshot with the look-up of the newest record.

use std::collections::BTreeMap;

use afs_store::window::{plan_window, RollupLevel, WindowPart};
use afs_store::{Result, StatsWindow, UsageStats};
use postgres::types::ToSql;

use crate::error::dbe;
use crate::store::PgStore;
use crate::usage_rows::micros_of;

/// One minute in microseconds.
pub(crate) const MINUTE_US: i64 = 60_000_000;
/// One hour in microseconds.
pub(crate) const HOUR_US: i64 = 3_600_000_000;

/// A rollup table: its name and the width of its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    /// The table.
    table: &'static str,
    /// Its bucket column.
    key: &'static str,
    /// The width of its buckets, microseconds.
    width_us: i64,
}

/// The hourly rollups.
const HOURLY: Level = Level {
    table: "afs_usage_hour",
    key: "bucket",
    width_us: HOUR_US,
};
/// The per-minute rollups.
const MINUTELY: Level = Level {
    table: "afs_usage_minute",
    key: "bucket",
    width_us: MINUTE_US,
};
/// The rollup deltas of single-record logging not yet folded into the two tables above,
/// per minute (`schema/pending.sql`).
const PENDING: Level = Level {
    table: "afs_usage_pending",
    key: "minute",
    width_us: MINUTE_US,
};

/// The minutes `[first, last)` that the rollup parts of `plan` cover (`None` for an open
/// end), or `None` if it reads no rollups. The parts are contiguous (whole minutes, then
/// whole hours, then whole minutes), and each pending delta belongs in both tables, so
/// adding the pending deltas of exactly these minutes once completes every bucket read.
fn pending_minutes(plan: &[WindowPart<Level>]) -> Option<(Option<i64>, Option<i64>)> {
    let mut span: Option<(Option<i64>, Option<i64>)> = None;
    for part in plan {
        let WindowPart::Buckets(level, first, last) = part else {
            continue;
        };
        let per_minute = level.width_us / MINUTE_US;
        let (first, last) = (first.map(|b| b * per_minute), last.map(|b| b * per_minute));
        span = Some(match span {
            None => (first, last),
            Some((f, l)) => (
                f.zip(first).map(|(a, b)| a.min(b)),
                l.zip(last).map(|(a, b)| a.max(b)),
            ),
        });
    }
    span
}

impl RollupLevel for Level {
    fn width_us(&self) -> i64 {
        self.width_us
    }
}

/// How to group a window's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// Per model.
    Model,
    /// Per hour (hours since the epoch).
    Hour,
}

/// A group: the model (empty when grouped by hour) and the hour (0 when grouped by model).
pub(crate) type GroupKey = (String, i64);

/// The sums every part of the statement yields, in order.
const SUMS: &str = "n, fb_pos, fb_neg, fb_neutral, n_quality, sum_q, sum_q2, n_latency, \
    sum_lat, sum_lat2, tokens";

/// The same sums for one record of the log.
const RECORD_SUMS: &str = "1::int8, coalesce((user_feedback = 1)::int::int8, 0), \
    coalesce((user_feedback = -1)::int::int8, 0), coalesce((user_feedback = 0)::int::int8, 0), \
    (quality_score IS NOT NULL)::int::int8, coalesce(quality_score, 0), \
    coalesce(quality_score * quality_score, 0), (latency_ms IS NOT NULL)::int::int8, \
    coalesce(latency_ms, 0), coalesce(latency_ms * latency_ms, 0), coalesce(token_count, 0)";

/// Statistics of `window`, grouped; groups without records are left out.
pub(crate) fn stats_grouped(
    store: &PgStore,
    window: &StatsWindow,
    grouping: Grouping,
) -> Result<BTreeMap<GroupKey, UsageStats>> {
    const WHAT: &str = "read statistics";
    let mut conn = store.conn()?;
    let mut tx = conn
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(dbe(WHAT))?;
    let since = window.since.map(micros_of);
    let mut until = window.until.map(micros_of);
    // A window that ends after the newest record holds every record from its start on: its
    // end is open, so its last buckets are read whole (the newest record is one step down
    // the time index).
    if let Some(u) = until {
        let newest: Option<i64> = tx
            .query_one("SELECT max(ts_us) FROM afs_usage", &[])
            .map_err(dbe(WHAT))?
            .get(0);
        if newest.is_none_or(|n| n < u) {
            until = None;
        }
    }
    let model_cond = if window.model.is_some() {
        " AND model = $1"
    } else {
        ""
    };
    let plan = plan_window(&[HOURLY, MINUTELY], since, until);
    let pending =
        pending_minutes(&plan).map(|(first, last)| WindowPart::Buckets(PENDING, first, last));
    let mut parts = Vec::new();
    for part in plan.into_iter().chain(pending) {
        let (column, from, to, per_hour, source, sums) = match part {
            WindowPart::Buckets(level, first, last) => (
                level.key,
                first,
                last,
                HOUR_US / level.width_us,
                level.table,
                SUMS,
            ),
            WindowPart::Scan(from, to) => ("ts_us", from, to, HOUR_US, "afs_usage", RECORD_SUMS),
        };
        let group = match grouping {
            Grouping::Model => "model, 0::int8".to_string(),
            Grouping::Hour => format!("''::text, {column} / {per_hour}"),
        };
        let mut conds = vec!["true".to_string()];
        if let Some(from) = from {
            conds.push(format!("{column} >= {from}"));
        }
        if let Some(to) = to {
            conds.push(format!("{column} < {to}"));
        }
        parts.push(format!(
            "SELECT {group}, {sums} FROM {source} WHERE {}{model_cond}",
            conds.join(" AND ")
        ));
    }
    let sql = format!(
        "SELECT g_model, g_hour, sum(n)::int8, sum(fb_pos)::int8, sum(fb_neg)::int8, \
         sum(fb_neutral)::int8, sum(n_quality)::int8, sum(sum_q)::float8, sum(sum_q2)::float8, \
         sum(n_latency)::int8, sum(sum_lat)::float8, sum(sum_lat2)::float8, sum(tokens)::int8 \
         FROM ({}) AS p (g_model, g_hour, {SUMS}) GROUP BY 1, 2",
        parts.join(" UNION ALL ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = match &window.model {
        Some(model) => vec![model],
        None => Vec::new(),
    };
    let rows = tx.query(&sql, &params).map_err(dbe(WHAT))?;
    tx.commit().map_err(dbe(WHAT))?;
    let count = |v: i64| v.max(0) as u64;
    let mut out = BTreeMap::new();
    for row in rows {
        let stats = UsageStats {
            total: count(row.get(2)),
            with_feedback: count(
                row.get::<_, i64>(3) + row.get::<_, i64>(4) + row.get::<_, i64>(5),
            ),
            positive_feedback: count(row.get(3)),
            negative_feedback: count(row.get(4)),
            neutral_feedback: count(row.get(5)),
            n_quality: count(row.get(6)),
            sum_quality: row.get(7),
            sum_quality_sq: row.get(8),
            n_latency: count(row.get(9)),
            sum_latency_ms: row.get(10),
            sum_latency_ms_sq: row.get(11),
            total_tokens: row.get(12),
        };
        if stats.total > 0 {
            out.insert((row.get::<_, String>(0), row.get::<_, i64>(1)), stats);
        }
    }
    Ok(out)
}
