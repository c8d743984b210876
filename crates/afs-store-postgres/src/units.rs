//! Per-unit experiment statistics on PostgreSQL: what
//! [`ExperimentStore::unit_stats`](afs_store::ExperimentStore::unit_stats) reads and
//! [`ExperimentStore::record_unit_covariates`](afs_store::ExperimentStore::record_unit_covariates)
//! writes. The definitions are afs-store's ([`afs_store::units`]); the reference is
//! [`afs_store::unit_cohorts_from_records`], which these statistics equal without scanning
//! the log.
//!
//! # Tables (`src/schema/experiments.sql`)
//!
//! * `afs_experiment_live`: the running experiment's two models (arm `false` champion,
//!   `true` challenger) and its start. Written when an experiment starts, emptied when it
//!   ends, in the same transaction; the triggers on `afs_usage` look a record's model up
//!   here, which is all they cost while no experiment runs or for other models.
//! * `afs_experiment_unit`: per experiment, unit and arm, the sums of the unit's records
//!   ([`UnitTally`]) and its first record's time `first_us`. The unit's cohort (the period
//!   containing `first_us`) and whether it *moved* (its row in the other arm starts earlier)
//!   are worked out when read, so a change of period or of a unit's first record never
//!   rewrites other rows.
//! * `afs_experiment_loose`: per experiment, period and arm, the sums and sums of squares of
//!   the records without a unit id, each a unit of its own.
//! * `afs_experiment_unit_pre`: per experiment and unit, the sums of its records in the
//!   covariate look-back window (any model), written by `record_unit_covariates`.
//!
//! # Keeping them current
//!
//! Triggers on `afs_usage` (defined in the schema, so they act for every writer of the
//! table: afs's own inserts, multi-row inserts, `COPY`, other programs) keep the unit and
//! loose rows exact while an experiment runs:
//!
//! * **insert**: a statement-level trigger with a transition table sums the statement's new
//!   records per unit (or period) and arm and adds them with one upsert per table, in key
//!   order (so concurrent writers lock rows in the same order); a statement whose records
//!   are of no running experiment's models costs one lookup of `afs_experiment_live`.
//! * **update** (feedback, quality, a batch of scores): a statement-level trigger pairs the
//!   old and new rows (by `seq`) and adds, per unit (or period) and arm, the change of the
//!   values the statistics read, with one update per group. A record whose time, model or
//!   unit changed (afs never does that) leaves and comes back one by one
//!   (`afs_units_adjust`).
//! * **delete** (one record, prune, dedupe, forget): a statement-level trigger takes the
//!   deleted records out, per unit (or period) and arm; a unit row whose first record went
//!   starts at its next record in that arm (one lookup in usage.sql's `afs_usage_unit_ts`
//!   per such unit, not per record), and a row left with no records goes. It then removes
//!   every unit that has no record left in the log (it was forgotten) from the statistics
//!   of every experiment, ended ones included, and from the covariates.
//!
//! The insert and update triggers are enabled only while an experiment runs: the
//! transactions that start and end one switch them (`afs_units_follow_live`, schema version
//! 5), so while none runs, writes of the log pay nothing for them (enabled, they cost a
//! single-record insert ~20 us of server CPU to find no experiment). Switching a trigger is
//! `ALTER TABLE`, so the role that starts and ends experiments must own the tables, as the
//! role that created them does.
//!
//! Statement-level triggers with transition tables also work on a partitioned `afs_usage`
//! (PostgreSQL 13 and later).
//!
//! All changes are additive upserts, so concurrent writers never lose one another's sums
//! (a row lock orders them), and the triggers run in the writer's transaction: a rolled
//! back write leaves no trace.
//!
//! Starting an experiment, starting a period and ending an experiment take a `SHARE ROW
//! EXCLUSIVE` lock on `afs_usage` (writers in flight finish first, new ones wait for the
//! commit, and they see the triggers as the transaction left them), so no record
//! is counted twice or missed at the boundary: the start adds the records already logged at
//! or after its start time (normally none), a new period moves the loose records logged at
//! or after its start into it, and the end freezes the statistics. An ended experiment keeps
//! its statistics as they stood, except that forgetting a unit removes it everywhere.
//!
//! # Reading
//!
//! `unit_stats` reads, in one snapshot, the experiment's unit rows (with their covariates),
//! its loose rows and, with a maturity cut, the records with feedback logged at or after the
//! cut (usage.sql's partial index `afs_usage_feedback_ts`), and builds
//! the cohorts with [`CohortBuilder`]: its cost grows with the experiment's units, not with
//! the log.

use std::collections::{BTreeMap, HashMap};

use afs_store::{CohortBuilder, Experiment, LooseTally, Result, UnitCohort, UnitTally};
use chrono::{DateTime, Utc};
use postgres::Transaction;

use crate::error::dbe;
use crate::experiments::micros;

/// Waits for the log's writers in flight and keeps new ones out until the transaction
/// ends, so the statistics' boundaries (start, period, end) are exact. `SHARE ROW
/// EXCLUSIVE`, the lock that enabling or disabling a trigger takes (see
/// [`follow_live`]): taken at once, two such transactions queue instead of both holding a
/// weaker lock and deadlocking on the upgrade.
fn hold_log_writers(tx: &mut Transaction<'_>) -> Result<()> {
    tx.batch_execute("LOCK TABLE afs_usage IN SHARE ROW EXCLUSIVE MODE")
        .map_err(dbe("waiting for writers of the log"))
}

/// Enables the per-unit triggers of inserts and updates if an experiment is live, and
/// disables them if none is (`afs_units_follow_live`, schema version 5), after this
/// transaction wrote `afs_experiment_live`; [`hold_log_writers`] keeps every write of the
/// log out until it commits.
fn follow_live(tx: &mut Transaction<'_>) -> Result<()> {
    tx.batch_execute("SELECT afs_units_follow_live()")
        .map_err(dbe("switching the per-unit triggers"))
}

/// The sums of one group of records, as SQL select-list items over `afs_usage` alias `r`
/// (the value columns of `afs_experiment_unit` after `n`).
const UNIT_SUMS: &str = "count(*), count(r.quality_score), COALESCE(sum(r.quality_score), 0.0), \
     count(r.latency_ms), COALESCE(sum(r.latency_ms), 0.0), \
     count(*) FILTER (WHERE r.user_feedback IN (-1, 0, 1)), \
     count(*) FILTER (WHERE r.user_feedback = 1), count(*) FILTER (WHERE r.user_feedback = -1)";

/// Starts the statistics of experiment `id` (champion and challenger by name) at
/// `started_us`: the live rows, and the records already logged at or after the start.
pub(crate) fn start_experiment(
    tx: &mut Transaction<'_>,
    id: i64,
    champion: &str,
    challenger: &str,
    started_us: i64,
) -> Result<()> {
    hold_log_writers(tx)?;
    let err = dbe("start unit statistics");
    tx.execute(
        "INSERT INTO afs_experiment_live (model, experiment_id, arm, started_us) \
         VALUES ($1, $3, false, $4), ($2, $3, true, $4)",
        &[&champion, &challenger, &id, &started_us],
    )
    .map_err(err)?;
    follow_live(tx)?;
    tx.execute(
        &format!(
            "INSERT INTO afs_experiment_unit \
             SELECT $1, r.unit_id, l.arm, min(r.ts_us), {UNIT_SUMS} \
             FROM afs_usage r JOIN afs_experiment_live l ON l.model = r.model \
             WHERE l.experiment_id = $1 AND r.ts_us >= $2 AND r.unit_id IS NOT NULL \
             GROUP BY r.unit_id, l.arm"
        ),
        &[&id, &started_us],
    )
    .map_err(dbe("start unit statistics"))?;
    tx.execute(
        "INSERT INTO afs_experiment_loose \
         SELECT $1, 0, l.arm, count(*), count(r.quality_score), \
         COALESCE(sum(r.quality_score), 0.0), COALESCE(sum(r.quality_score * r.quality_score), 0.0), \
         count(r.latency_ms), COALESCE(sum(r.latency_ms), 0.0), \
         COALESCE(sum(r.latency_ms * r.latency_ms), 0.0), \
         count(*) FILTER (WHERE r.user_feedback IN (-1, 0, 1)), \
         count(*) FILTER (WHERE r.user_feedback = 1), count(*) FILTER (WHERE r.user_feedback = -1) \
         FROM afs_usage r JOIN afs_experiment_live l ON l.model = r.model \
         WHERE l.experiment_id = $1 AND r.ts_us >= $2 AND r.unit_id IS NULL \
         GROUP BY l.arm",
        &[&id, &started_us],
    )
    .map_err(dbe("start unit statistics"))?;
    Ok(())
}

/// Period `next` of experiment `id` started at `started_us` (period `last` ended): the
/// records without a unit id logged at or after that time (normally none) move to it. A
/// unit's cohort follows from its first record when read, so unit rows do not change.
pub(crate) fn start_period(
    tx: &mut Transaction<'_>,
    id: i64,
    last: i32,
    next: i32,
    started_us: i64,
) -> Result<()> {
    hold_log_writers(tx)?;
    let err = || dbe("move records to the new period");
    tx.execute(
        "WITH moving AS ( \
             SELECT l.arm, count(*) AS n, count(r.quality_score) AS n_q, \
             COALESCE(sum(r.quality_score), 0.0) AS sum_q, \
             COALESCE(sum(r.quality_score * r.quality_score), 0.0) AS sum_q2, \
             count(r.latency_ms) AS n_lat, COALESCE(sum(r.latency_ms), 0.0) AS sum_lat, \
             COALESCE(sum(r.latency_ms * r.latency_ms), 0.0) AS sum_lat2, \
             count(*) FILTER (WHERE r.user_feedback IN (-1, 0, 1)) AS n_fb, \
             count(*) FILTER (WHERE r.user_feedback = 1) AS n_pos, \
             count(*) FILTER (WHERE r.user_feedback = -1) AS n_neg \
             FROM afs_usage r JOIN afs_experiment_live l ON l.model = r.model \
             WHERE l.experiment_id = $1 AND r.ts_us >= $4 AND r.unit_id IS NULL \
             GROUP BY l.arm \
         ), taken AS ( \
             UPDATE afs_experiment_loose t SET n = t.n - m.n, n_q = t.n_q - m.n_q, \
             sum_q = t.sum_q - m.sum_q, sum_q2 = t.sum_q2 - m.sum_q2, \
             n_lat = t.n_lat - m.n_lat, sum_lat = t.sum_lat - m.sum_lat, \
             sum_lat2 = t.sum_lat2 - m.sum_lat2, n_fb = t.n_fb - m.n_fb, \
             n_pos = t.n_pos - m.n_pos, n_neg = t.n_neg - m.n_neg \
             FROM moving m WHERE t.experiment_id = $1 AND t.period = $2 AND t.arm = m.arm \
         ) \
         INSERT INTO afs_experiment_loose AS t \
         SELECT $1, $3, m.arm, m.n, m.n_q, m.sum_q, m.sum_q2, m.n_lat, m.sum_lat, m.sum_lat2, \
         m.n_fb, m.n_pos, m.n_neg FROM moving m \
         ON CONFLICT (experiment_id, period, arm) DO UPDATE SET \
         n = t.n + excluded.n, n_q = t.n_q + excluded.n_q, sum_q = t.sum_q + excluded.sum_q, \
         sum_q2 = t.sum_q2 + excluded.sum_q2, n_lat = t.n_lat + excluded.n_lat, \
         sum_lat = t.sum_lat + excluded.sum_lat, sum_lat2 = t.sum_lat2 + excluded.sum_lat2, \
         n_fb = t.n_fb + excluded.n_fb, n_pos = t.n_pos + excluded.n_pos, \
         n_neg = t.n_neg + excluded.n_neg",
        &[&id, &last, &next, &started_us],
    )
    .map_err(err())?;
    tx.execute(
        "DELETE FROM afs_experiment_loose WHERE experiment_id = $1 AND period = $2 AND n <= 0",
        &[&id, &last],
    )
    .map_err(err())?;
    Ok(())
}

/// Freezes the statistics of experiment `id`: records logged from now on change nothing.
pub(crate) fn end_experiment(tx: &mut Transaction<'_>, id: i64) -> Result<()> {
    hold_log_writers(tx)?;
    tx.execute(
        "DELETE FROM afs_experiment_live WHERE experiment_id = $1",
        &[&id],
    )
    .map_err(dbe("end unit statistics"))?;
    follow_live(tx)
}

/// Replaces the covariates of experiment `id` with each unit's sums over its records in
/// `[since_us, started_us)` (one grouped read of that time range of the log); returns how
/// many units have some.
pub(crate) fn record_covariates(
    tx: &mut Transaction<'_>,
    id: i64,
    since_us: i64,
    started_us: i64,
) -> Result<u64> {
    let err = || dbe("record unit covariates");
    tx.execute(
        "DELETE FROM afs_experiment_unit_pre WHERE experiment_id = $1",
        &[&id],
    )
    .map_err(err())?;
    if since_us >= started_us {
        return Ok(0);
    }
    tx.execute(
        &format!(
            "INSERT INTO afs_experiment_unit_pre \
             SELECT $1, r.unit_id, {UNIT_SUMS} FROM afs_usage r \
             WHERE r.ts_us >= $2 AND r.ts_us < $3 AND r.unit_id IS NOT NULL \
             GROUP BY r.unit_id"
        ),
        &[&id, &since_us, &started_us],
    )
    .map_err(err())
}

/// A [`UnitTally`] from eight columns starting at `at`: n, n_q, sum_q, n_lat, sum_lat,
/// n_fb, n_pos, n_neg.
fn tally_at(row: &postgres::Row, at: usize) -> UnitTally {
    let count = |i: usize| row.get::<_, i64>(at + i).max(0) as u64;
    UnitTally {
        n: count(0),
        n_quality: count(1),
        sum_quality: row.get(at + 2),
        n_latency: count(3),
        sum_latency_ms: row.get(at + 4),
        n_feedback: count(5),
        n_positive: count(6),
        n_negative: count(7),
    }
}

/// Feedback counted on records that are not mature: what a maturity cut takes out.
#[derive(Debug, Clone, Copy, Default)]
struct Immature {
    /// Records with feedback.
    n_fb: u64,
    /// Thumbs up.
    n_pos: u64,
    /// Thumbs down.
    n_neg: u64,
}

impl Immature {
    /// Adds one record's feedback (-1, 0 or 1; anything else is no feedback).
    fn add(&mut self, feedback: i16) {
        if (-1..=1).contains(&feedback) {
            self.n_fb += 1;
        }
        self.n_pos += u64::from(feedback == 1);
        self.n_neg += u64::from(feedback == -1);
    }
}

/// The period, among those starting at `starts` (by index), that contains microsecond `us`
/// (the first one for times before it).
fn period_of(starts: &[i64], us: i64) -> u32 {
    starts.iter().rposition(|&s| s <= us).unwrap_or(0) as u32
}

/// Feedback on records logged at or after a maturity cut: per unit and arm, and per period
/// and arm for the records without a unit id.
#[derive(Default)]
struct ImmatureFeedback {
    /// Per (unit id, arm).
    units: HashMap<(String, bool), Immature>,
    /// Per (period, arm), for records without a unit id.
    loose: BTreeMap<(u32, bool), Immature>,
}

/// A unit row of an experiment with its covariates.
struct Unit {
    /// The unit's first record's time, in microseconds.
    first_us: i64,
    /// The sums of the unit's records.
    tally: UnitTally,
    /// The sums of its records in the covariate look-back window, if recorded.
    pre: Option<UnitTally>,
}

/// The cohorts of `experiment` (see
/// [`ExperimentStore::unit_stats`](afs_store::ExperimentStore::unit_stats)), read in the
/// caller's snapshot.
pub(crate) fn unit_stats(
    tx: &mut Transaction<'_>,
    experiment: &Experiment,
    feedback_before: Option<DateTime<Utc>>,
) -> Result<Vec<UnitCohort>> {
    let starts: Vec<i64> = experiment
        .periods
        .iter()
        .map(|p| micros(p.started_at))
        .collect();
    let immature = match feedback_before {
        Some(cut) => immature_feedback(tx, experiment, &starts, cut)?,
        None => ImmatureFeedback::default(),
    };
    let units = read_units(tx, experiment.id)?;
    let mut builder = CohortBuilder::new();
    add_units(&mut builder, &units, &immature.units, &starts);
    add_loose(tx, experiment.id, &immature.loose, &mut builder)?;
    Ok(builder
        .finish()
        .into_iter()
        .filter(|c| c.units > 0)
        .collect())
}

/// Feedback on records logged at or after `cut` (and within the experiment).
fn immature_feedback(
    tx: &mut Transaction<'_>,
    experiment: &Experiment,
    starts: &[i64],
    cut: DateTime<Utc>,
) -> Result<ImmatureFeedback> {
    let mut immature = ImmatureFeedback::default();
    let lo = micros(cut).max(micros(experiment.started_at));
    let hi = experiment.ended_at.map_or(i64::MAX, micros);
    if lo >= hi {
        return Ok(immature);
    }
    let rows = tx
        .query(
            "SELECT model = $4, unit_id, ts_us, user_feedback FROM afs_usage \
             WHERE user_feedback IS NOT NULL AND ts_us >= $1 AND ts_us < $2 \
             AND model IN ($3, $4)",
            &[&lo, &hi, &experiment.champion, &experiment.challenger],
        )
        .map_err(dbe("read unit statistics"))?;
    for row in rows {
        let arm: bool = row.get(0);
        let feedback: i16 = row.get(3);
        match row.get::<_, Option<String>>(1) {
            Some(unit) => immature.units.entry((unit, arm)).or_default().add(feedback),
            None => immature
                .loose
                .entry((period_of(starts, row.get(2)), arm))
                .or_default()
                .add(feedback),
        }
    }
    Ok(immature)
}

/// The unit rows of experiment `id` with their covariates, by (unit id, arm).
fn read_units(tx: &mut Transaction<'_>, id: i64) -> Result<HashMap<(String, bool), Unit>> {
    let rows = tx
        .query(
            "SELECT u.unit_id, u.arm, u.first_us, \
             u.n, u.n_q, u.sum_q, u.n_lat, u.sum_lat, u.n_fb, u.n_pos, u.n_neg, \
             p.n, p.n_q, p.sum_q, p.n_lat, p.sum_lat, p.n_fb, p.n_pos, p.n_neg \
             FROM afs_experiment_unit u LEFT JOIN afs_experiment_unit_pre p \
             ON p.experiment_id = u.experiment_id AND p.unit_id = u.unit_id \
             WHERE u.experiment_id = $1",
            &[&id],
        )
        .map_err(dbe("read unit statistics"))?;
    let mut units: HashMap<(String, bool), Unit> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let pre = row
            .get::<_, Option<i64>>(11)
            .is_some()
            .then(|| tally_at(row, 11));
        units.insert(
            (row.get(0), row.get(1)),
            Unit {
                first_us: row.get(2),
                tally: tally_at(row, 3),
                pre,
            },
        );
    }
    Ok(units)
}

/// Adds each unit to `builder` in the cohort of its first record's period, with the
/// immature feedback taken out; a unit whose row in the other arm starts earlier moved.
fn add_units(
    builder: &mut CohortBuilder,
    units: &HashMap<(String, bool), Unit>,
    immature: &HashMap<(String, bool), Immature>,
    starts: &[i64],
) {
    for ((unit, arm), row) in units {
        let moved = units
            .get(&(unit.clone(), !arm))
            .is_some_and(|other| other.first_us < row.first_us);
        let mut tally = row.tally;
        if let Some(out) = immature.get(&(unit.clone(), *arm)) {
            tally.n_feedback = tally.n_feedback.saturating_sub(out.n_fb);
            tally.n_positive = tally.n_positive.saturating_sub(out.n_pos);
            tally.n_negative = tally.n_negative.saturating_sub(out.n_neg);
        }
        builder.add_unit(
            period_of(starts, row.first_us),
            *arm,
            &tally,
            !moved,
            false,
            row.pre.as_ref(),
        );
    }
}

/// Adds the loose rows (records without a unit id) of experiment `id` to `builder`, with
/// the immature feedback taken out.
fn add_loose(
    tx: &mut Transaction<'_>,
    id: i64,
    immature: &BTreeMap<(u32, bool), Immature>,
    builder: &mut CohortBuilder,
) -> Result<()> {
    let rows = tx
        .query(
            "SELECT period, arm, n, n_q, sum_q, sum_q2, n_lat, sum_lat, sum_lat2, n_fb, n_pos, \
             n_neg FROM afs_experiment_loose WHERE experiment_id = $1 AND n > 0",
            &[&id],
        )
        .map_err(dbe("read unit statistics"))?;
    for row in &rows {
        let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        let period = row.get::<_, i32>(0).max(0) as u32;
        let arm: bool = row.get(1);
        let mut loose = LooseTally {
            n: count(2),
            n_q: count(3),
            sum_q: row.get(4),
            sum_q2: row.get(5),
            n_lat: count(6),
            sum_lat: row.get(7),
            sum_lat2: row.get(8),
            n_fb: count(9),
            n_pos: count(10),
            n_neg: count(11),
        };
        if let Some(out) = immature.get(&(period, arm)) {
            loose.n_fb = loose.n_fb.saturating_sub(out.n_fb);
            loose.n_pos = loose.n_pos.saturating_sub(out.n_pos);
            loose.n_neg = loose.n_neg.saturating_sub(out.n_neg);
        }
        builder.add_cohort(&loose.cohort(period, arm));
    }
    Ok(())
}
