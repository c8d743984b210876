//! Per-unit experiment statistics for SQLite (schema version 7): what
//! [`ExperimentStore::unit_stats`](afs_store::ExperimentStore::unit_stats) reads and
//! [`ExperimentStore::record_unit_covariates`](afs_store::ExperimentStore::record_unit_covariates)
//! writes. Definitions are in [`afs_store::units`]; this module keeps them current on every write.
//!
//! Tables (all `WITHOUT ROWID`):
//!
//! * `experiment_live`: the champion and challenger of the running experiment, by model name
//!   (arm 0 champion, 1 challenger) with the experiment's start. Written by deploy, emptied by
//!   promote and rollback in the same transaction; the triggers on `usage` look a record's
//!   model up here, which is all they cost for models not in an experiment.
//! * `experiment_unit`: per experiment, unit and arm, the sums of the unit's records
//!   ([`afs_store::UnitTally`]), its first record's time `first_us`, its cohort `period`
//!   (the period containing `first_us`), `moved` (its row in the other arm has an earlier
//!   `first_us`) and its covariate means `x_*` (copied from `experiment_unit_pre`).
//! * `experiment_loose`: per experiment, period and arm, the sums (and sums of squares) of
//!   the records without a unit id, each a unit of its own.
//! * `experiment_unit_pre`: per experiment and unit, the sums of its records in the
//!   covariate look-back window (any model).
//! * `experiment_cohort`: per experiment, period and arm, every sum of a [`UnitCohort`] over
//!   the unit rows, as of the last *fold*. Reading the statistics is then a read of a few
//!   rows, whatever the number of units.
//!
//! Triggers on `usage` keep `experiment_unit` and `experiment_loose` exact under inserts
//! (afs's writer and the Python module's rows, which get their `ts_us` through an update),
//! feedback and quality updates, and deletes (prune, dedupe, forget). Triggers on
//! `experiment_unit` keep `period` and `moved` consistent with the rows and mark a changed
//! row `dirty` (a partial index lists the dirty rows). Cohort sums are not touched on the
//! logging path: the writer *folds* the dirty rows about once a minute (with the pending
//! rollup deltas), by subtracting each one's contribution as of its last fold (kept in its
//! `f_*` columns) and adding its current one, and every batch folds the rows it changed in
//! its own transaction. `unit_stats` writes nothing: it reads the cohort rows and adds the
//! same changes of the dirty rows in its read transaction (`dirty_sums_sql`). So a logged
//! record writes its usage pages and its unit's row (plus a partial-index entry the first
//! time the unit changes after a fold), and a look costs one pass over at most a minute of
//! changed units, without the write lock. Deleting a unit row removes its
//! folded contribution at once. Every change to `experiment_cohort` is an additive upsert; a
//! cohort row whose units fall to zero is kept (and skipped when read).
//!
//! Removing a unit's earliest record moves its `first_us` to its next record, found by
//! walking the log forward from the removed record's time (the log is in time order); the
//! walk stops at that next record.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::time::{first_rowid_at, micros_of, ROWID_SLOTS};
use afs_store::units::{period_at, LooseTally, UnitCohort, UnitMoments};
use afs_store::Experiment;
use afs_store::FeedbackValue;
use afs_store::Result;

/// The value columns of `experiment_unit` and what one `usage` row (`{r}` stands for `NEW.`,
/// `OLD.` or a table alias) adds to each. The last flag says whether the column is REAL.
const UNIT_VALUES: &[(&str, &str, bool)] = &[
    ("n", "1", false),
    ("n_q", "({r}quality_score IS NOT NULL)", false),
    ("sum_q", "COALESCE({r}quality_score, 0.0)", true),
    ("n_lat", "({r}latency_ms IS NOT NULL)", false),
    ("sum_lat", "COALESCE({r}latency_ms, 0.0)", true),
    (
        "n_fb",
        "({r}user_feedback IS NOT NULL AND {r}user_feedback IN (-1, 0, 1))",
        false,
    ),
    ("n_pos", "({r}user_feedback IS 1)", false),
    ("n_neg", "({r}user_feedback IS -1)", false),
];

/// The value columns of `experiment_loose` (records without a unit id), as [`UNIT_VALUES`].
const LOOSE_VALUES: &[(&str, &str, bool)] = &[
    ("n", "1", false),
    ("n_q", "({r}quality_score IS NOT NULL)", false),
    ("sum_q", "COALESCE({r}quality_score, 0.0)", true),
    (
        "sum_q2",
        "COALESCE({r}quality_score * {r}quality_score, 0.0)",
        true,
    ),
    ("n_lat", "({r}latency_ms IS NOT NULL)", false),
    ("sum_lat", "COALESCE({r}latency_ms, 0.0)", true),
    (
        "sum_lat2",
        "COALESCE({r}latency_ms * {r}latency_ms, 0.0)",
        true,
    ),
    ("n_pos", "({r}user_feedback IS 1)", false),
    ("n_neg", "({r}user_feedback IS -1)", false),
    (
        "n_fb",
        "({r}user_feedback IS NOT NULL AND {r}user_feedback IN (-1, 0, 1))",
        false,
    ),
];

/// One per-unit metric: its column prefix in `experiment_cohort`, the `experiment_unit`
/// columns holding its sum y and count n, its covariate column, and the covariate's
/// definition over an `experiment_unit_pre` row (`{p}` its alias).
struct Metric {
    prefix: &'static str,
    y: &'static str,
    n: &'static str,
    x: &'static str,
    x_of_pre: &'static str,
}

/// The four metrics, in the order of [`afs_store::UnitMetric::ALL`].
const METRICS: [Metric; 4] = [
    Metric {
        prefix: "q",
        y: "sum_q",
        n: "n_q",
        x: "x_q",
        x_of_pre: "CASE WHEN {p}n_q > 0 THEN {p}sum_q / {p}n_q END",
    },
    Metric {
        prefix: "lat",
        y: "sum_lat",
        n: "n_lat",
        x: "x_lat",
        x_of_pre: "CASE WHEN {p}n_lat > 0 THEN {p}sum_lat / {p}n_lat END",
    },
    Metric {
        prefix: "pos",
        y: "n_pos",
        n: "n_fb",
        x: "x_pos",
        x_of_pre: "CASE WHEN {p}n_fb > 0 THEN CAST({p}n_pos AS REAL) / {p}n_fb END",
    },
    Metric {
        prefix: "neg",
        y: "n_neg",
        n: "n_fb",
        x: "x_neg",
        x_of_pre: "CASE WHEN {p}n_fb > 0 THEN CAST({p}n_neg AS REAL) / {p}n_fb END",
    },
];

/// The sums of [`UnitMoments`], in field order, and one unit's contribution to each: `{y}`,
/// `{n}` and `{x}` are the unit row's columns, `{m}` its mean. A unit with n = 0 adds nothing.
const MOMENTS: [(&str, &str); 13] = [
    ("units", "({n} > 0)"),
    ("sum_mean", "CASE WHEN {n} > 0 THEN {m} ELSE 0.0 END"),
    (
        "sum_mean_sq",
        "CASE WHEN {n} > 0 THEN {m} * {m} ELSE 0.0 END",
    ),
    (
        "sum_y",
        "CASE WHEN {n} > 0 THEN CAST({y} AS REAL) ELSE 0.0 END",
    ),
    ("sum_n", "CAST({n} AS REAL)"),
    (
        "sum_y_sq",
        "CASE WHEN {n} > 0 THEN CAST({y} AS REAL) * {y} ELSE 0.0 END",
    ),
    ("sum_n_sq", "CAST({n} AS REAL) * {n}"),
    (
        "sum_yn",
        "CASE WHEN {n} > 0 THEN CAST({y} AS REAL) * {n} ELSE 0.0 END",
    ),
    ("cov_units", "({n} > 0 AND {x} IS NOT NULL)"),
    (
        "sum_x",
        "CASE WHEN {n} > 0 AND {x} IS NOT NULL THEN {x} ELSE 0.0 END",
    ),
    (
        "sum_x_sq",
        "CASE WHEN {n} > 0 AND {x} IS NOT NULL THEN {x} * {x} ELSE 0.0 END",
    ),
    (
        "sum_x_mean",
        "CASE WHEN {n} > 0 AND {x} IS NOT NULL THEN {x} * {m} ELSE 0.0 END",
    ),
    (
        "sum_mean_cov",
        "CASE WHEN {n} > 0 AND {x} IS NOT NULL THEN {m} ELSE 0.0 END",
    ),
];

/// Whether moment `i` of [`MOMENTS`] is a count.
fn moment_is_count(i: usize) -> bool {
    i == 0 || i == 8
}

/// The columns of `experiment_cohort` after its key, each with one `experiment_unit` row's
/// contribution (row prefix `r`: `NEW.` or `OLD.`), and whether the column is a count.
fn cohort_columns(r: &str) -> Vec<(String, String, bool)> {
    let mut columns = vec![
        ("units".to_string(), "1".to_string(), true),
        ("assigned".to_string(), format!("({r}moved = 0)"), true),
        ("records".to_string(), format!("{r}n"), true),
    ];
    for metric in &METRICS {
        let y = format!("{r}{}", metric.y);
        let n = format!("{r}{}", metric.n);
        let x = format!("{r}{}", metric.x);
        let m = format!("(CAST({y} AS REAL) / {n})");
        for (i, (name, expr)) in MOMENTS.iter().enumerate() {
            columns.push((
                format!("{}_{name}", metric.prefix),
                expr.replace("{m}", &m)
                    .replace("{y}", &y)
                    .replace("{n}", &n)
                    .replace("{x}", &x),
                moment_is_count(i),
            ));
        }
    }
    columns
}

fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

fn values_of(columns: &[(&str, &str, bool)], r: &str, sign: &str) -> String {
    columns
        .iter()
        .map(|(_, e, _)| format!("{sign}({})", e.replace("{r}", r)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn add_excluded(names: impl IntoIterator<Item = String>) -> String {
    names
        .into_iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The period of experiment `exp` containing time `ts` (SQL expressions).
fn period_of(exp: &str, ts: &str) -> String {
    format!(
        "COALESCE((SELECT p.idx FROM experiment_period p WHERE p.experiment_id = {exp} \
         AND p.started_us <= {ts} ORDER BY p.idx DESC LIMIT 1), 0)"
    )
}

/// `experiment_live` rows `L` that record `r` belongs to.
fn live(r: &str) -> String {
    format!("L.model = {r}model AND {r}ts_us >= L.started_us")
}

fn experiment_of(r: &str) -> String {
    format!(
        "(SELECT L.experiment_id FROM experiment_live L WHERE {})",
        live(r)
    )
}

fn arm_of(r: &str) -> String {
    format!("(SELECT L.arm FROM experiment_live L WHERE {})", live(r))
}

fn x_of_pre(p: &str) -> String {
    METRICS
        .iter()
        .map(|m| m.x_of_pre.replace("{p}", p))
        .collect::<Vec<_>>()
        .join(", ")
}

fn x_columns() -> String {
    list(METRICS.iter().map(|m| m.x))
}

fn unit_names() -> String {
    list(UNIT_VALUES.iter().map(|c| c.0))
}

fn loose_names() -> String {
    list(LOOSE_VALUES.iter().map(|c| c.0))
}

/// Adds record `r` to its unit's row (records with a unit id). A new row gets its covariates
/// from the insert trigger of `experiment_unit`.
fn add_unit_sql(r: &str) -> String {
    format!(
        "INSERT INTO experiment_unit (experiment_id, unit, arm, period, first_us, {names})
    SELECT L.experiment_id, {r}unit_id, L.arm, {period}, {r}ts_us, {values}
    FROM experiment_live L
    WHERE {live} AND {r}unit_id IS NOT NULL
    ON CONFLICT (experiment_id, unit, arm) DO UPDATE SET {set}, first_us = MIN(first_us, excluded.first_us);\n    ",
        names = unit_names(),
        period = period_of("L.experiment_id", &format!("{r}ts_us")),
        values = values_of(UNIT_VALUES, r, ""),
        live = live(r),
        set = add_excluded(UNIT_VALUES.iter().map(|c| c.0.to_string())),
    )
}

/// The key of record `r`'s unit row.
fn unit_key(r: &str) -> String {
    format!(
        "experiment_id = {} AND unit = {r}unit_id AND arm = {}",
        experiment_of(r),
        arm_of(r)
    )
}

/// Removes record `r` from its unit's row: subtracts it, deletes a row left without
/// records, and moves `first_us` to the unit's next record when `r` was its first.
fn remove_unit_sql(r: &str) -> String {
    let set = UNIT_VALUES
        .iter()
        .map(|(c, e, _)| format!("{c} = {c} - ({})", e.replace("{r}", r)))
        .collect::<Vec<_>>()
        .join(", ");
    let key = unit_key(r);
    format!(
        "UPDATE experiment_unit SET {set} WHERE {key};
    DELETE FROM experiment_unit WHERE {key} AND n <= 0;
    UPDATE experiment_unit SET first_us = COALESCE((SELECT u.ts_us FROM usage u
        WHERE u.rowid >= {r}ts_us * {slots} AND u.unit_id = {r}unit_id AND u.model = {r}model
          AND u.ts_us IS NOT NULL ORDER BY u.rowid LIMIT 1), first_us)
    WHERE {key} AND first_us = {r}ts_us;\n    ",
        slots = ROWID_SLOTS,
    )
}

/// Adds (`sign` `""`) or removes (`"-"`) record `r` to or from its period's loose row
/// (records without a unit id).
fn loose_delta_sql(r: &str, sign: &str) -> String {
    let mut sql = format!(
        "INSERT INTO experiment_loose (experiment_id, period, arm, {names})
    SELECT L.experiment_id, {period}, L.arm, {values}
    FROM experiment_live L WHERE {live} AND {r}unit_id IS NULL
    ON CONFLICT (experiment_id, period, arm) DO UPDATE SET {set};\n    ",
        names = loose_names(),
        period = period_of("L.experiment_id", &format!("{r}ts_us")),
        values = values_of(LOOSE_VALUES, r, sign),
        live = live(r),
        set = add_excluded(LOOSE_VALUES.iter().map(|c| c.0.to_string())),
    );
    if sign == "-" {
        sql.push_str(&format!(
            "DELETE FROM experiment_loose WHERE {r}unit_id IS NULL AND experiment_id = {} AND n <= 0;\n    ",
            experiment_of(r)
        ));
    }
    sql
}

/// Sets `moved` of unit `{r}unit`'s rows in experiment `{r}experiment_id`: a row is moved
/// when the unit's row in the other arm has an earlier `first_us`.
fn moved_fix_sql(r: &str) -> String {
    format!(
        "UPDATE experiment_unit SET moved = 1 - moved
    WHERE experiment_id = {r}experiment_id AND unit = {r}unit
      AND moved IS NOT (first_us > (SELECT MIN(o.first_us) FROM experiment_unit o
                                    WHERE o.experiment_id = {r}experiment_id AND o.unit = {r}unit));\n    "
    )
}

/// The columns of `experiment_unit` a cohort sum depends on: each has a copy `f_{name}`
/// holding its value when the row was last folded into `experiment_cohort`.
const FOLDED: [&str; 14] = [
    "period", "moved", "n", "n_q", "sum_q", "n_lat", "sum_lat", "n_pos", "n_neg", "n_fb", "x_q",
    "x_lat", "x_pos", "x_neg",
];

/// Reads the dirty unit rows through their partial index. Without it SQLite's planner took
/// the primary key (its `experiment_id` prefix is an equality too) and read every unit row
/// of the experiment: an experiment check summing the few dirty rows, and every batch
/// asking whether any row was dirty, cost O(units) (`bench --only burst`: the in-process
/// check took ~5 ms with 20k units, whatever the records).
const DIRTY_ROWS: &str = "INDEXED BY experiment_unit_dirty";

/// The cohort sums of the dirty `experiment_unit` rows, grouped by period and arm, in the
/// column order of `experiment_cohort` after its key: with `old`, minus the folded
/// contributions (`f_` columns) of dirty rows folded before, grouped by their folded period;
/// else plus the current contributions of dirty rows, grouped by their period. `?1` is the
/// experiment. Adding both to the cohort rows gives the cohort sums as of now.
fn dirty_sums_sql(old: bool) -> String {
    let columns = cohort_columns(if old { "f_" } else { "" });
    let sign = if old { "-" } else { "" };
    let sums = columns
        .iter()
        .map(|(_, e, count)| {
            if *count {
                format!("{sign}SUM({e})")
            } else {
                format!("{sign}TOTAL({e})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let (period, extra) = if old {
        ("f_period", " AND folded = 1")
    } else {
        ("period", "")
    };
    format!(
        "SELECT experiment_id, {period}, arm, {sums} FROM experiment_unit {DIRTY_ROWS}
    WHERE experiment_id = ?1 AND dirty = 1{extra} GROUP BY {period}, arm"
    )
}

/// `INSERT ... SELECT` of [`dirty_sums_sql`] into `experiment_cohort`, adding to its rows.
fn fold_sql(old: bool) -> String {
    let columns = cohort_columns("");
    format!(
        "INSERT INTO experiment_cohort (experiment_id, period, arm, {names})
    {select}
    ON CONFLICT (experiment_id, period, arm) DO UPDATE SET {set}",
        names = list(columns.iter().map(|c| c.0.as_str())),
        select = dirty_sums_sql(old),
        set = add_excluded(columns.iter().map(|c| c.0.clone())),
    )
}

/// The delete trigger's removal of a folded row's contribution from its cohort.
fn folded_removal_sql() -> String {
    let columns = cohort_columns("OLD.f_");
    format!(
        "INSERT INTO experiment_cohort (experiment_id, period, arm, {names})
    SELECT OLD.experiment_id, OLD.f_period, OLD.arm, {values} WHERE OLD.folded = 1
    ON CONFLICT (experiment_id, period, arm) DO UPDATE SET {set};\n    ",
        names = list(columns.iter().map(|c| c.0.as_str())),
        values = columns
            .iter()
            .map(|(_, e, _)| format!("-({e})"))
            .collect::<Vec<_>>()
            .join(", "),
        set = add_excluded(columns.iter().map(|c| c.0.clone())),
    )
}

/// Folds the rows of experiment `id` changed since the last fold into `experiment_cohort`:
/// their old contributions out, their current ones in, then marks them clean. Costs one
/// pass over the dirty rows (through their partial index). Must run in a write transaction.
pub(crate) fn fold(conn: &Connection, id: i64) -> Result<()> {
    let err = |e: rusqlite::Error| crate::db(format!("fold unit statistics of experiment {id}"), e);
    for old in [true, false] {
        conn.prepare_cached(&fold_sql(old))
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(err)?;
    }
    conn.prepare_cached(&mark_folded_sql())
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(err)?;
    Ok(())
}

/// Marks experiment `?1`'s dirty unit rows clean, keeping what was folded of each.
fn mark_folded_sql() -> String {
    let snapshot = FOLDED
        .iter()
        .map(|c| format!("f_{c} = {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE experiment_unit {DIRTY_ROWS} SET dirty = 0, folded = 1, {snapshot} \
         WHERE experiment_id = ?1 AND dirty = 1"
    )
}

/// Whether experiment `?1` has dirty unit rows.
fn any_dirty_sql() -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM experiment_unit {DIRTY_ROWS} \
         WHERE experiment_id = ?1 AND dirty = 1)"
    )
}

/// Folds the dirty unit rows of the running experiment, if any (the writer calls it about
/// once a minute, so a look rarely has much to fold).
pub(crate) fn fold_running(conn: &Connection) -> Result<()> {
    let running: Option<i64> = conn
        .prepare_cached("SELECT MIN(experiment_id) FROM experiment_live")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(|e| crate::db("find the running experiment", e))?;
    match running {
        Some(id) if needs_fold(conn, id)? => fold(conn, id),
        _ => Ok(()),
    }
}

/// Whether experiment `id` has rows to fold.
pub(crate) fn needs_fold(conn: &Connection, id: i64) -> Result<bool> {
    conn.prepare_cached(&any_dirty_sql())
        .and_then(|mut stmt| stmt.query_row([id], |r| r.get(0)))
        .map_err(|e| crate::db(format!("read unit statistics of experiment {id}"), e))
}

/// The schema of version 7: tables and triggers.
fn v7_schema() -> String {
    // `name TYPE NOT NULL DEFAULT 0` lines for value columns, skipping the first `skip`.
    let decl = |values: &[(&str, &str, bool)], skip: usize| {
        values
            .iter()
            .skip(skip)
            .map(|(c, _, real)| {
                format!(
                    "    {c} {} NOT NULL DEFAULT 0,\n",
                    if *real { "REAL" } else { "INTEGER" }
                )
            })
            .collect::<String>()
    };
    let unit_decl = decl(UNIT_VALUES, 0);
    let x_decl = METRICS
        .iter()
        .map(|m| format!("    {} REAL,\n", m.x))
        .collect::<String>();
    let loose_decl = decl(LOOSE_VALUES, 0);
    let pre_decl = decl(UNIT_VALUES, 1);
    let cohort_decl = cohort_columns("")
        .iter()
        .map(|(c, _, count)| {
            format!(
                "    {c} {} NOT NULL DEFAULT 0,\n",
                if *count { "INTEGER" } else { "REAL" }
            )
        })
        .collect::<String>();
    let folded_decl = FOLDED
        .iter()
        .map(|c| format!("    f_{c},\n"))
        .collect::<String>();
    let live_new = "EXISTS (SELECT 1 FROM experiment_live WHERE model = NEW.model)";
    let live_old = "EXISTS (SELECT 1 FROM experiment_live WHERE model = OLD.model)";
    // `c = c + NEW's value - OLD's value` for every column but the record count.
    let value_delta_set = |values: &[(&str, &str, bool)]| {
        values
            .iter()
            .skip(1)
            .map(|(c, e, _)| {
                format!(
                    "{c} = {c} + ({}) - ({})",
                    e.replace("{r}", "NEW."),
                    e.replace("{r}", "OLD.")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let value_set_unit = value_delta_set(UNIT_VALUES);
    let value_set_loose = value_delta_set(LOOSE_VALUES);
    format!(
        "
ALTER TABLE experiment_period ADD COLUMN started_us INTEGER;
CREATE TABLE experiment_live (
    model TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL,
    arm INTEGER NOT NULL,
    started_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE experiment_unit (
    experiment_id INTEGER NOT NULL,
    unit TEXT NOT NULL,
    arm INTEGER NOT NULL,
    period INTEGER NOT NULL,
    first_us INTEGER NOT NULL,
    moved INTEGER NOT NULL DEFAULT 0,
{unit_decl}{x_decl}    dirty INTEGER NOT NULL DEFAULT 1,
    folded INTEGER NOT NULL DEFAULT 0,
{folded_decl}    PRIMARY KEY (experiment_id, unit, arm)
) WITHOUT ROWID;
-- Rows changed since their contribution was last folded into experiment_cohort. Partial: a
-- row enters it once after each fold, so logging into a unit that is already dirty writes
-- only the unit's own row.
CREATE INDEX experiment_unit_dirty ON experiment_unit (experiment_id) WHERE dirty = 1;
CREATE TABLE experiment_loose (
    experiment_id INTEGER NOT NULL,
    period INTEGER NOT NULL,
    arm INTEGER NOT NULL,
{loose_decl}    PRIMARY KEY (experiment_id, period, arm)
) WITHOUT ROWID;
CREATE TABLE experiment_unit_pre (
    experiment_id INTEGER NOT NULL,
    unit TEXT NOT NULL,
{pre_decl}    PRIMARY KEY (experiment_id, unit)
) WITHOUT ROWID;
CREATE TABLE experiment_cohort (
    experiment_id INTEGER NOT NULL,
    period INTEGER NOT NULL,
    arm INTEGER NOT NULL,
{cohort_decl}    PRIMARY KEY (experiment_id, period, arm)
) WITHOUT ROWID;

-- usage -> experiment_unit, experiment_loose (records of the running experiment's models).
CREATE TRIGGER experiment_usage_insert AFTER INSERT ON usage
WHEN NEW.ts_us IS NOT NULL AND {live_new} BEGIN
    {add_unit_new}{add_loose_new}
END;
CREATE TRIGGER experiment_usage_delete AFTER DELETE ON usage
WHEN OLD.ts_us IS NOT NULL AND {live_old} BEGIN
    {remove_unit_old}{remove_loose_old}
END;
CREATE TRIGGER experiment_usage_values
AFTER UPDATE OF user_feedback, quality_score, latency_ms ON usage
WHEN NEW.ts_us IS NOT NULL AND OLD.ts_us IS NEW.ts_us AND OLD.model IS NEW.model
     AND OLD.unit_id IS NEW.unit_id AND {live_new} BEGIN
    UPDATE experiment_unit SET {value_set_unit} WHERE {unit_key_new};
    UPDATE experiment_loose SET {value_set_loose}
    WHERE NEW.unit_id IS NULL AND experiment_id = {exp_new} AND arm = {arm_new}
      AND period = {period_new};
END;
CREATE TRIGGER experiment_usage_move AFTER UPDATE OF model, ts_us, unit_id ON usage
WHEN (OLD.model IS NOT NEW.model OR OLD.ts_us IS NOT NEW.ts_us OR OLD.unit_id IS NOT NEW.unit_id)
     AND ({live_old} OR {live_new}) BEGIN
    {remove_unit_old}{remove_loose_old}{add_unit_new}{add_loose_new}
END;

-- experiment_unit -> period, moved, covariates; changes mark the row dirty, and
-- `unit_stats` folds dirty rows into experiment_cohort (see `fold`).
CREATE TRIGGER experiment_unit_insert AFTER INSERT ON experiment_unit BEGIN
    {moved_new}
    UPDATE experiment_unit SET ({xs}) = (SELECT {x_pre} FROM experiment_unit_pre c
        WHERE c.experiment_id = NEW.experiment_id AND c.unit = NEW.unit)
    WHERE experiment_id = NEW.experiment_id AND unit = NEW.unit AND arm = NEW.arm
      AND EXISTS (SELECT 1 FROM experiment_unit_pre c
                  WHERE c.experiment_id = NEW.experiment_id AND c.unit = NEW.unit);
END;
CREATE TRIGGER experiment_unit_delete AFTER DELETE ON experiment_unit BEGIN
    {cohort_delete}{moved_old}
END;
CREATE TRIGGER experiment_unit_dirty AFTER UPDATE OF {folded_sources} ON experiment_unit
WHEN NEW.dirty = 0 BEGIN
    UPDATE experiment_unit SET dirty = 1
    WHERE experiment_id = NEW.experiment_id AND unit = NEW.unit AND arm = NEW.arm;
END;
CREATE TRIGGER experiment_unit_first AFTER UPDATE OF first_us ON experiment_unit
WHEN OLD.first_us IS NOT NEW.first_us BEGIN
    UPDATE experiment_unit SET period = {period_first}
    WHERE experiment_id = NEW.experiment_id AND unit = NEW.unit AND arm = NEW.arm
      AND period IS NOT {period_first};
    {moved_new}
END;
",
        add_unit_new = add_unit_sql("NEW."),
        add_loose_new = loose_delta_sql("NEW.", ""),
        remove_unit_old = remove_unit_sql("OLD."),
        remove_loose_old = loose_delta_sql("OLD.", "-"),
        unit_key_new = unit_key("NEW."),
        exp_new = experiment_of("NEW."),
        arm_new = arm_of("NEW."),
        period_new = period_of(&experiment_of("NEW."), "NEW.ts_us"),
        cohort_delete = folded_removal_sql(),
        folded_sources = list(FOLDED.iter().copied()),
        moved_new = moved_fix_sql("NEW."),
        xs = x_columns(),
        x_pre = x_of_pre("c."),
        moved_old = moved_fix_sql("OLD."),
        period_first = period_of("NEW.experiment_id", "NEW.first_us"),
    )
}

/// Migration 7: per-unit experiment statistics. Adds `experiment_period.started_us`
/// (back-filled from `started_at`), the tables and triggers described in the module
/// documentation, and fills them for an experiment already running.
pub(crate) fn migrate_v7(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let err = |e: rusqlite::Error| crate::db("migration 7", e);
    tx.execute_batch(&v7_schema()).map_err(err)?;
    let periods: Vec<(i64, i64, String)> = tx
        .prepare("SELECT experiment_id, idx, started_at FROM experiment_period")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(err)?;
    for (experiment_id, idx, started_at) in periods {
        let started = DateTime::parse_from_rfc3339(&started_at).map_err(|e| {
            crate::db(
                format!("migration 7: read start of period {idx} of experiment {experiment_id}"),
                e,
            )
        })?;
        tx.execute(
            "UPDATE experiment_period SET started_us = ?3 WHERE experiment_id = ?1 AND idx = ?2",
            params![experiment_id, idx, micros_of(started.with_timezone(&Utc))],
        )
        .map_err(err)?;
    }
    let running: Option<(i64, String, String, String)> = tx
        .query_row(
            "SELECT e.id, c.name, h.name, e.started_at FROM experiment e \
             JOIN model_version c ON c.id = e.champion_id \
             JOIN model_version h ON h.id = e.challenger_id WHERE e.status = 'running'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(err)?;
    if let Some((id, champion, challenger, started_at)) = running {
        let started = DateTime::parse_from_rfc3339(&started_at)
            .map_err(|e| crate::db(format!("migration 7: read start of experiment {id}"), e))?;
        start_experiment(
            tx,
            id,
            &champion,
            &challenger,
            micros_of(started.with_timezone(&Utc)),
        )?;
    }
    Ok(())
}

/// Marks experiment `id` (champion and challenger models, started at `started_us`) as
/// running for the triggers, and adds the records already in the log at or after its start
/// (normally none; read as a rowid range). Runs in the caller's transaction.
pub(crate) fn start_experiment(
    conn: &Connection,
    id: i64,
    champion: &str,
    challenger: &str,
    started_us: i64,
) -> Result<()> {
    let err =
        |e: rusqlite::Error| crate::db(format!("start unit statistics of experiment {id}"), e);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO experiment_live (model, experiment_id, arm, started_us) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(err)?;
    insert
        .execute(params![champion, id, 0, started_us])
        .map_err(err)?;
    insert
        .execute(params![challenger, id, 1, started_us])
        .map_err(err)?;
    let aggregate = |columns: &[(&str, &str, bool)]| {
        columns
            .iter()
            .map(|(c, e, real)| {
                format!(
                    "{}({}) AS {c}",
                    if *real { "TOTAL" } else { "SUM" },
                    e.replace("{r}", "R.")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let from = "FROM usage R JOIN experiment_live L ON L.model = R.model \
                WHERE R.rowid >= ?2 AND L.experiment_id = ?1 AND R.ts_us IS NOT NULL \
                AND R.ts_us >= L.started_us";
    // Units: their sums, then their cohort and covariates (the triggers on experiment_unit
    // set `moved` and add them to their cohorts).
    conn.execute(
        &format!(
            "INSERT INTO experiment_unit (experiment_id, unit, arm, period, first_us, {names}, {xs})
             SELECT g.experiment_id, g.unit, g.arm, {period}, g.first_us, {g_names}, {x}
             FROM (SELECT L.experiment_id AS experiment_id, R.unit_id AS unit, L.arm AS arm,
                          MIN(R.ts_us) AS first_us, {sums}
                   {from} AND R.unit_id IS NOT NULL GROUP BY R.unit_id, L.arm) g
             LEFT JOIN experiment_unit_pre c ON c.experiment_id = g.experiment_id AND c.unit = g.unit",
            names = unit_names(),
            xs = x_columns(),
            period = period_of("g.experiment_id", "g.first_us"),
            g_names = UNIT_VALUES
                .iter()
                .map(|c| format!("g.{}", c.0))
                .collect::<Vec<_>>()
                .join(", "),
            x = x_of_pre("c."),
            sums = aggregate(UNIT_VALUES),
        ),
        params![id, first_rowid_at(started_us)],
    )
    .map_err(err)?;
    conn.execute(
        &format!(
            "INSERT INTO experiment_loose (experiment_id, period, arm, {names})
             SELECT experiment_id, period, arm, {sums}
             FROM (SELECT L.experiment_id AS experiment_id, {period} AS period, L.arm AS arm,
                          R.quality_score, R.latency_ms, R.user_feedback
                   {from} AND R.unit_id IS NULL) R
             GROUP BY experiment_id, period, arm",
            names = loose_names(),
            sums = aggregate(LOOSE_VALUES),
            period = period_of("L.experiment_id", "R.ts_us"),
        ),
        params![id, first_rowid_at(started_us)],
    )
    .map_err(err)?;
    Ok(())
}

/// Ends the maintenance of experiment `id`'s statistics (promote, rollback): they stay as
/// they stand. Runs in the caller's transaction.
pub(crate) fn end_experiment(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("DELETE FROM experiment_live WHERE experiment_id = ?1", [id])
        .map_err(|e| crate::db(format!("end unit statistics of experiment {id}"), e))?;
    Ok(())
}

/// After period `new` (starting at `started_us`, following period `previous`) was added to
/// running experiment `id`: units first seen at or after its start, and records without a
/// unit id logged at or after it, move to it (normally none: records are logged at the
/// clock's time). Costs one pass over the experiment's unit rows and a rowid range of the
/// log from the period's start.
pub(crate) fn start_period(
    conn: &Connection,
    id: i64,
    previous: u32,
    new: u32,
    started_us: i64,
) -> Result<()> {
    let err = |e: rusqlite::Error| crate::db(format!("start period {new} of experiment {id}"), e);
    conn.execute(
        "UPDATE experiment_unit SET period = ?2 WHERE experiment_id = ?1 AND first_us >= ?3 AND period <> ?2",
        params![id, new, started_us],
    )
    .map_err(err)?;
    for (period, sign) in [(previous, "-"), (new, "")] {
        let sums = LOOSE_VALUES
            .iter()
            .map(|(_, e, real)| {
                format!(
                    "{sign}{}({})",
                    if *real { "TOTAL" } else { "SUM" },
                    e.replace("{r}", "R.")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute(
            &format!(
                "INSERT INTO experiment_loose (experiment_id, period, arm, {names})
                 SELECT L.experiment_id, ?2, L.arm, {sums}
                 FROM usage R JOIN experiment_live L ON L.model = R.model
                 WHERE R.rowid >= ?3 AND L.experiment_id = ?1 AND R.unit_id IS NULL
                   AND R.ts_us IS NOT NULL AND R.ts_us >= L.started_us
                 GROUP BY L.experiment_id, L.arm
                 ON CONFLICT (experiment_id, period, arm) DO UPDATE SET {set}",
                names = loose_names(),
                set = add_excluded(LOOSE_VALUES.iter().map(|c| c.0.to_string())),
            ),
            params![id, period, first_rowid_at(started_us)],
        )
        .map_err(err)?;
    }
    conn.execute(
        "DELETE FROM experiment_loose WHERE experiment_id = ?1 AND n <= 0",
        [id],
    )
    .map_err(err)?;
    Ok(())
}

/// Replaces experiment `id`'s covariates with each unit's sums over the log in
/// `[since_us, started_us)` (any model) and copies their means into the unit rows; returns
/// the number of units with such history. Runs in the caller's (write) transaction.
pub(crate) fn record_covariates(
    conn: &Connection,
    id: i64,
    since_us: i64,
    started_us: i64,
) -> Result<u64> {
    let err = |e: rusqlite::Error| crate::db(format!("record covariates of experiment {id}"), e);
    conn.execute(
        "DELETE FROM experiment_unit_pre WHERE experiment_id = ?1",
        [id],
    )
    .map_err(err)?;
    let columns = &UNIT_VALUES[1..];
    let sums = columns
        .iter()
        .map(|(_, e, real)| {
            format!(
                "{}({})",
                if *real { "TOTAL" } else { "SUM" },
                e.replace("{r}", "")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let units = conn
        .execute(
            &format!(
                "INSERT INTO experiment_unit_pre (experiment_id, unit, {names})
                 SELECT ?1, unit_id, {sums} FROM usage
                 WHERE rowid >= ?2 AND rowid < ?3 AND unit_id IS NOT NULL AND ts_us IS NOT NULL
                 GROUP BY unit_id",
                names = list(columns.iter().map(|c| c.0)),
            ),
            params![id, first_rowid_at(since_us), first_rowid_at(started_us)],
        )
        .map_err(err)?;
    conn.execute(
        &format!(
            "UPDATE experiment_unit SET ({xs}) = (SELECT {x} FROM experiment_unit_pre c
                 WHERE c.experiment_id = experiment_unit.experiment_id AND c.unit = experiment_unit.unit)
             WHERE experiment_id = ?1",
            xs = x_columns(),
            x = x_of_pre("c."),
        ),
        [id],
    )
    .map_err(err)?;
    Ok(units as u64)
}

/// Removes every trace of `unit` from the unit statistics of all experiments (ended ones
/// included) and from the covariates. Runs in the caller's transaction, after the unit's
/// records were deleted.
pub(crate) fn forget_unit(conn: &Connection, unit: &str) -> Result<()> {
    let err = |e: rusqlite::Error| crate::db("forget unit statistics", e);
    conn.execute("DELETE FROM experiment_unit WHERE unit = ?1", [unit])
        .map_err(err)?;
    conn.execute("DELETE FROM experiment_unit_pre WHERE unit = ?1", [unit])
        .map_err(err)?;
    Ok(())
}

/// Feedback counts to take out of a unit or loose row: (with feedback, positive, negative).
type Immature = (u64, u64, u64);

fn count(v: i64) -> u64 {
    v.max(0) as u64
}

/// The error of a failed read of experiment `id`'s unit statistics.
fn stats_err(id: i64) -> impl Fn(rusqlite::Error) -> afs_store::StoreError + Copy {
    move |e| crate::db(format!("read unit statistics of experiment {id}"), e)
}

/// The error of a failed read of experiment `id`'s immature feedback.
fn immature_err(id: i64) -> impl Fn(rusqlite::Error) -> afs_store::StoreError + Copy {
    move |e| crate::db(format!("read immature feedback of experiment {id}"), e)
}

/// The unit statistics of `experiment` as stored, with feedback on records logged at or
/// after `feedback_before` taken out. Reads the experiment's cohort and loose rows (a few
/// per period), plus, with a maturity cut, the records with feedback after the cut (from
/// the partial index `usage_feedback_ts`) and the unit row of each unit they belong to.
pub(crate) fn unit_stats(
    conn: &Connection,
    experiment: &Experiment,
    feedback_before: Option<DateTime<Utc>>,
) -> Result<Vec<UnitCohort>> {
    let id = experiment.id;
    let mut cohorts: BTreeMap<(u32, bool), UnitCohort> = cohort_sums(conn, id)?
        .into_iter()
        .filter_map(|((period, challenger), f)| {
            cohort_of(period, challenger, &f).map(|c| ((period, challenger), c))
        })
        .collect();
    let mut loose = read_loose(conn, id)?;
    if let Some(cut) = feedback_before {
        mature(conn, experiment, cut, &mut cohorts, &mut loose)?;
    }
    add_loose(&mut cohorts, loose);
    Ok(cohorts.into_values().filter(|c| c.units > 0).collect())
}

/// The sums of the cohort columns of experiment `id` per (period, arm).
///
/// The cohort rows as of the last fold, plus what the unit rows changed since (the dirty
/// rows: their folded contributions out, their current ones in), read in this one
/// snapshot. A look writes nothing: the writer folds about once a minute, so the dirty rows
/// are at most a minute's worth of changed units, and a look never waits for the write
/// lock behind a burst of logging.
///
/// The dirty rows' contributions are computed here from their raw columns
/// ([`UnitMoments::add_unit`]), not in SQL: SQLite evaluated the 55 moment expressions of
/// each row twice (current and folded) at ~4 us a row, so a look beside a service logging
/// for 5,000 distinct users took ~40 ms.
fn cohort_sums(conn: &Connection, id: i64) -> Result<BTreeMap<(u32, bool), Vec<f64>>> {
    let err = stats_err(id);
    let columns = cohort_columns("");
    let width = columns.len();
    let mut sums: BTreeMap<(u32, bool), Vec<f64>> = BTreeMap::new();
    let cohort_sql = format!(
        "SELECT period, arm, {} FROM experiment_cohort WHERE experiment_id = ?1",
        list(columns.iter().map(|c| c.0.as_str()))
    );
    let mut stmt = conn.prepare_cached(&cohort_sql).map_err(err)?;
    let mut rows = stmt.query([id]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let period: u32 = row.get(0).map_err(err)?;
        let challenger = row.get::<_, i64>(1).map_err(err)? != 0;
        let acc = sums
            .entry((period, challenger))
            .or_insert_with(|| vec![0.0; width]);
        for (k, slot) in acc.iter_mut().enumerate() {
            *slot += row
                .get::<_, Option<f64>>(2 + k)
                .map_err(err)?
                .unwrap_or(0.0);
        }
    }
    let mut stmt = conn.prepare_cached(&dirty_rows_sql()).map_err(err)?;
    let mut rows = stmt.query([id]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let challenger = row.get::<_, i64>(0).map_err(err)? != 0;
        let folded = row.get::<_, i64>(1).map_err(err)? != 0;
        let mut add = |at: usize, sign: f64| -> Result<()> {
            let period = row.get::<_, Option<i64>>(at).map_err(err)?.unwrap_or(0);
            let period = u32::try_from(period).unwrap_or(u32::MAX);
            let acc = sums
                .entry((period, challenger))
                .or_insert_with(|| vec![0.0; width]);
            add_unit_row(row, at, sign, acc).map_err(err)
        };
        add(2, 1.0)?;
        if folded {
            add(2 + FOLDED.len(), -1.0)?;
        }
    }
    Ok(sums)
}

/// Experiment `?1`'s dirty unit rows: arm, whether folded, the [`FOLDED`] columns, then
/// the same with their values as of the last fold (`f_`).
fn dirty_rows_sql() -> String {
    format!(
        "SELECT arm, folded, {}, {} FROM experiment_unit {DIRTY_ROWS} \
         WHERE experiment_id = ?1 AND dirty = 1",
        list(FOLDED),
        FOLDED
            .iter()
            .map(|c| format!("f_{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Adds `sign` times the cohort-column contribution (in [`cohort_columns`] order) of the
/// unit row whose [`FOLDED`] columns start at column `at` of `row` to `acc`.
fn add_unit_row(
    row: &rusqlite::Row<'_>,
    at: usize,
    sign: f64,
    acc: &mut [f64],
) -> rusqlite::Result<()> {
    let int = |k: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, Option<i64>>(at + k)?.unwrap_or(0).max(0) as u64)
    };
    let real = |k: usize| -> rusqlite::Result<f64> {
        Ok(row.get::<_, Option<f64>>(at + k)?.unwrap_or(0.0))
    };
    let covariate = |k: usize| row.get::<_, Option<f64>>(at + k);
    // FOLDED: period, moved, n, n_q, sum_q, n_lat, sum_lat, n_pos, n_neg, n_fb, x_q, x_lat,
    // x_pos, x_neg; METRICS: quality, latency, positive, negative.
    let n_fb = int(9)?;
    let metrics = [
        (real(4)?, int(3)?, covariate(10)?),
        (real(6)?, int(5)?, covariate(11)?),
        (int(7)? as f64, n_fb, covariate(12)?),
        (int(8)? as f64, n_fb, covariate(13)?),
    ];
    acc[0] += sign;
    acc[1] += sign * f64::from(u8::from(int(1)? == 0));
    acc[2] += sign * int(2)? as f64;
    for ((y, n, x), slots) in metrics
        .into_iter()
        .zip(acc[3..].chunks_exact_mut(MOMENTS.len()))
    {
        let mut m = UnitMoments::default();
        m.add_unit(y, n, x);
        for (slot, v) in slots.iter_mut().zip(moment_values(&m)) {
            *slot += sign * v;
        }
    }
    Ok(())
}

/// The moments of one metric in [`MOMENTS`] order: what [`moments_of`] reads back.
fn moment_values(m: &UnitMoments) -> [f64; MOMENTS.len()] {
    [
        m.units as f64,
        m.sum_mean,
        m.sum_mean_sq,
        m.sum_y,
        m.sum_n,
        m.sum_y_sq,
        m.sum_n_sq,
        m.sum_yn,
        m.cov_units as f64,
        m.sum_x,
        m.sum_x_sq,
        m.sum_x_mean,
        m.sum_mean_cov,
    ]
}

/// One metric's moments from their column sums in [`MOMENTS`] order (counts are sums of
/// integers, exact in an f64 below 2^53).
fn moments_of(m: &[f64]) -> UnitMoments {
    let whole = |v: f64| v.round().max(0.0) as u64;
    UnitMoments {
        units: whole(m[0]),
        sum_mean: m[1],
        sum_mean_sq: m[2],
        sum_y: m[3],
        sum_n: m[4],
        sum_y_sq: m[5],
        sum_n_sq: m[6],
        sum_yn: m[7],
        cov_units: whole(m[8]),
        sum_x: m[9],
        sum_x_sq: m[10],
        sum_x_mean: m[11],
        sum_mean_cov: m[12],
    }
}

/// The cohort of `period` and arm `challenger` from its column sums `f` (in the order of
/// [`cohort_columns`]); `None` when it has no units.
fn cohort_of(period: u32, challenger: bool, f: &[f64]) -> Option<UnitCohort> {
    // Counts are sums of integers, exact in an f64 below 2^53.
    let whole = |v: f64| v.round().max(0.0) as u64;
    if whole(f[0]) == 0 {
        return None;
    }
    let mut cohort = UnitCohort {
        period,
        challenger,
        units: whole(f[0]),
        assigned: whole(f[1]),
        records: whole(f[2]),
        ..UnitCohort::default()
    };
    let mut i = 3;
    for moments in [
        &mut cohort.quality,
        &mut cohort.latency,
        &mut cohort.positive,
        &mut cohort.negative,
    ] {
        *moments = moments_of(&f[i..i + MOMENTS.len()]);
        i += MOMENTS.len();
    }
    Some(cohort)
}

/// The loose rows (records without a unit id) of experiment `id` per (period, arm).
fn read_loose(conn: &Connection, id: i64) -> Result<BTreeMap<(u32, bool), LooseTally>> {
    let err = stats_err(id);
    let mut loose: BTreeMap<(u32, bool), LooseTally> = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT period, arm, {} FROM experiment_loose WHERE experiment_id = ?1 AND n > 0",
            loose_names()
        ))
        .map_err(err)?;
    let mut rows = stmt.query([id]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let key: (u32, bool) = (
            row.get(0).map_err(err)?,
            row.get::<_, i64>(1).map_err(err)? != 0,
        );
        loose.insert(
            key,
            LooseTally {
                n: count(row.get(2).map_err(err)?),
                n_q: count(row.get(3).map_err(err)?),
                sum_q: row.get(4).map_err(err)?,
                sum_q2: row.get(5).map_err(err)?,
                n_lat: count(row.get(6).map_err(err)?),
                sum_lat: row.get(7).map_err(err)?,
                sum_lat2: row.get(8).map_err(err)?,
                n_pos: count(row.get(9).map_err(err)?),
                n_neg: count(row.get(10).map_err(err)?),
                n_fb: count(row.get(11).map_err(err)?),
            },
        );
    }
    Ok(loose)
}

/// Adds each non-empty loose row to its cohort in `cohorts` (creating the cohort if needed).
fn add_loose(
    cohorts: &mut BTreeMap<(u32, bool), UnitCohort>,
    loose: BTreeMap<(u32, bool), LooseTally>,
) {
    for ((period, challenger), l) in loose {
        if l.n == 0 {
            continue;
        }
        cohorts
            .entry((period, challenger))
            .or_insert_with(|| UnitCohort {
                period,
                challenger,
                ..UnitCohort::default()
            })
            .add(&l.cohort(period, challenger));
    }
}

/// Immature feedback per (unit id, arm) and, for records without a unit id, per
/// (period, arm).
type ImmatureByKey = (
    HashMap<(String, bool), Immature>,
    HashMap<(u32, bool), Immature>,
);

/// Takes the feedback on records logged at or after `cut` out of `cohorts` and `loose`.
fn mature(
    conn: &Connection,
    experiment: &Experiment,
    cut: DateTime<Utc>,
    cohorts: &mut BTreeMap<(u32, bool), UnitCohort>,
    loose: &mut BTreeMap<(u32, bool), LooseTally>,
) -> Result<()> {
    let lo = micros_of(cut).max(micros_of(experiment.started_at));
    let hi = experiment.ended_at.map_or(i64::MAX, micros_of);
    if lo >= hi {
        return Ok(());
    }
    let (units, loose_immature) = immature_feedback(conn, experiment, lo, hi)?;
    for (key, (f, p, m)) in loose_immature {
        if let Some(l) = loose.get_mut(&key) {
            l.n_fb = l.n_fb.saturating_sub(f);
            l.n_pos = l.n_pos.saturating_sub(p);
            l.n_neg = l.n_neg.saturating_sub(m);
        }
    }
    mature_units(conn, experiment.id, units, cohorts)
}

/// The feedback on the experiment's records logged in `lo..hi` (microseconds), by unit
/// and arm and, for records without a unit id, by period and arm.
fn immature_feedback(
    conn: &Connection,
    experiment: &Experiment,
    lo: i64,
    hi: i64,
) -> Result<ImmatureByKey> {
    let err = immature_err(experiment.id);
    let mut units: HashMap<(String, bool), Immature> = HashMap::new();
    let mut loose_immature: HashMap<(u32, bool), Immature> = HashMap::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT model, unit_id, user_feedback, ts_us FROM usage INDEXED BY usage_feedback_ts
             WHERE user_feedback IS NOT NULL AND ts_us >= ?1 AND ts_us < ?2 AND model IN (?3, ?4)",
        )
        .map_err(err)?;
    let mut rows = stmt
        .query(params![lo, hi, experiment.champion, experiment.challenger])
        .map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let model: String = row.get(0).map_err(err)?;
        let unit: Option<String> = row.get(1).map_err(err)?;
        let value = row
            .get::<_, Option<i64>>(2)
            .ok()
            .flatten()
            .and_then(|v| FeedbackValue::from_i64(v).ok());
        let Some(value) = value else { continue };
        let ts_us: i64 = row.get(3).map_err(err)?;
        let challenger = model == experiment.challenger;
        let slot = match unit {
            Some(unit) => units.entry((unit, challenger)).or_default(),
            None => {
                let at = super::time::time_of_micros(ts_us);
                loose_immature
                    .entry((period_at(experiment, at), challenger))
                    .or_default()
            }
        };
        slot.0 += 1;
        slot.1 += u64::from(value == FeedbackValue::Positive);
        slot.2 += u64::from(value == FeedbackValue::Negative);
    }
    Ok((units, loose_immature))
}

/// Takes each unit's immature feedback in `units` out of its cohort's feedback moments in
/// `cohorts`, reading the unit's row of experiment `id` (units without one are skipped).
fn mature_units(
    conn: &Connection,
    id: i64,
    units: HashMap<(String, bool), Immature>,
    cohorts: &mut BTreeMap<(u32, bool), UnitCohort>,
) -> Result<()> {
    let err = immature_err(id);
    let mut read = conn
        .prepare_cached(
            "SELECT period, n_fb, n_pos, n_neg, x_pos, x_neg FROM experiment_unit
             WHERE experiment_id = ?1 AND unit = ?2 AND arm = ?3",
        )
        .map_err(err)?;
    for ((unit, challenger), (f, p, m)) in units {
        let row = read
            .query_row(params![id, unit, i64::from(challenger)], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    count(r.get(1)?),
                    count(r.get(2)?),
                    count(r.get(3)?),
                    r.get::<_, Option<f64>>(4)?,
                    r.get::<_, Option<f64>>(5)?,
                ))
            })
            .optional()
            .map_err(err)?;
        let Some((period, n_fb, n_pos, n_neg, x_pos, x_neg)) = row else {
            continue;
        };
        let Some(cohort) = cohorts.get_mut(&(period, challenger)) else {
            continue;
        };
        let matured_n = n_fb.saturating_sub(f);
        for (moments, y, y_removed, x) in [
            (&mut cohort.positive, n_pos, p, x_pos),
            (&mut cohort.negative, n_neg, m, x_neg),
        ] {
            let mut old = UnitMoments::default();
            old.add_unit(y as f64, n_fb, x);
            let mut new = UnitMoments::default();
            new.add_unit(y.saturating_sub(y_removed) as f64, matured_n, x);
            moments.subtract(&old);
            moments.add(&new);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory database with the tables the unit schema refers to, and that schema.
    fn with_unit_schema() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE usage (id TEXT PRIMARY KEY, model TEXT, ts_us INTEGER, unit_id TEXT,
             quality_score REAL, latency_ms REAL, user_feedback INTEGER);
             CREATE TABLE experiment_period (experiment_id INTEGER, idx INTEGER, started_at TEXT,
             PRIMARY KEY (experiment_id, idx)) WITHOUT ROWID;",
        )
        .unwrap();
        conn.execute_batch(&v7_schema()).unwrap();
        conn
    }

    #[test]
    fn schema_parses() {
        with_unit_schema();
    }

    #[test]
    fn dirty_rows_are_read_through_their_partial_index() {
        let conn = with_unit_schema();
        // Many clean unit rows and a few dirty ones. No ANALYZE, as in an afs database: with
        // its statistics the planner finds the partial index by itself.
        conn.execute_batch(
            "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < 2000)
             INSERT INTO experiment_unit (experiment_id, unit, arm, period, first_us, dirty)
             SELECT 1, 'u' || i, i % 2, 0, 0, i % 500 = 0 FROM k;",
        )
        .unwrap();
        for sql in [
            dirty_rows_sql(),
            dirty_sums_sql(true),
            dirty_sums_sql(false),
            fold_sql(true),
            mark_folded_sql(),
            any_dirty_sql(),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([1], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("experiment_unit_dirty"), "{sql}\n{plan}");
            assert!(!plan.contains("PRIMARY KEY"), "{sql}\n{plan}");
        }
    }
}
