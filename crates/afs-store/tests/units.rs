//! Per-unit experiment statistics of the SQLite store (schema version 7) against the
//! scan-based reference `unit_cohorts_from_records`: random sequences of every kind of write,
//! a database migrated from version 6 with an experiment running, ended experiments and
//! forgetting a unit.

use std::sync::Arc;

use afs_store::{
    unit_cohorts_from_records, Clock, EventNote, Experiment, ExperimentStore, Feedback,
    FeedbackValue, ManualClock, NewModelVersion, NewUsage, RecordFilter, SqliteConfig, SqliteStore,
    UnitCohort, UnitMoments, UsageRecord, UsageStore, WeightSource, SCHEMA_VERSION,
};
use chrono::{DateTime, Duration, Local, TimeZone, Utc};
use rusqlite::{params, Connection};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap()
}

/// xorshift64*: a small seeded generator, so a failing sequence can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path), clock).unwrap()
}

fn all_records(store: &SqliteStore) -> Vec<UsageRecord> {
    store
        .query(&RecordFilter::default())
        .unwrap()
        .collect::<afs_store::Result<Vec<_>>>()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn moments_match(a: &UnitMoments, b: &UnitMoments) -> bool {
    a.units == b.units
        && a.cov_units == b.cov_units
        && [
            (a.sum_mean, b.sum_mean),
            (a.sum_mean_sq, b.sum_mean_sq),
            (a.sum_y, b.sum_y),
            (a.sum_n, b.sum_n),
            (a.sum_y_sq, b.sum_y_sq),
            (a.sum_n_sq, b.sum_n_sq),
            (a.sum_yn, b.sum_yn),
            (a.sum_x, b.sum_x),
            (a.sum_x_sq, b.sum_x_sq),
            (a.sum_x_mean, b.sum_x_mean),
            (a.sum_mean_cov, b.sum_mean_cov),
        ]
        .iter()
        .all(|&(x, y)| close(x, y))
}

/// Counts exactly, float sums within 1e-9 (relative, or absolute below 1).
fn assert_cohorts_match(got: &[UnitCohort], want: &[UnitCohort], context: &str) {
    let same = got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            (
                g.period,
                g.challenger,
                g.units,
                g.assigned,
                g.records,
                g.loose_records,
            ) == (
                w.period,
                w.challenger,
                w.units,
                w.assigned,
                w.records,
                w.loose_records,
            ) && moments_match(&g.quality, &w.quality)
                && moments_match(&g.latency, &w.latency)
                && moments_match(&g.positive, &w.positive)
                && moments_match(&g.negative, &w.negative)
        });
    assert!(same, "{context}\n got: {got:#?}\nwant: {want:#?}");
}

/// The reference over the whole log, as `unit_stats` must return it.
fn reference(
    store: &SqliteStore,
    experiment: &Experiment,
    cut: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
) -> Vec<UnitCohort> {
    let records = all_records(store);
    unit_cohorts_from_records(experiment, &records, cut, since)
}

fn check(
    store: &SqliteStore,
    id: i64,
    cut: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    context: &str,
) {
    let experiment = store.experiment(id).unwrap();
    let got = store.unit_stats(id, cut).unwrap();
    let want = reference(store, &experiment, cut, since);
    assert_cohorts_match(&got, &want, &format!("{context} (cut {cut:?})"));
}

const UNITS: [&str; 9] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
const TEXTS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// A random record: model among the two arms and another, a unit or none, a time around
/// `now` (earlier, sometimes before the experiment, sometimes a little ahead), optional
/// values and feedback; some share their query and response, so dedupe has work.
fn random_record(rng: &mut Rng, now: DateTime<Utc>, n: u64) -> NewUsage {
    let model = *rng.pick(&["v1", "v2", "v2", "v1", "other"]);
    let (query, response) = if rng.chance(20) {
        (rng.pick(&TEXTS).to_string(), rng.pick(&TEXTS).to_string())
    } else {
        (format!("query {n}"), format!("response {n}"))
    };
    let mut r = NewUsage::new(query, response, model);
    if rng.chance(80) {
        r.unit_id = Some(rng.pick(&UNITS).to_string());
    }
    if rng.chance(70) {
        r.quality_score = Some((rng.below(1000) as f64 + 0.5) / 1000.0);
    }
    if rng.chance(70) {
        r.latency_ms = Some(5.0 + rng.unit() * 900.0);
    }
    if rng.chance(30) {
        r.feedback = Some(Feedback {
            value: *rng.pick(&[
                FeedbackValue::Positive,
                FeedbackValue::Negative,
                FeedbackValue::Neutral,
            ]),
            text: None,
            at: None,
        });
    }
    let offset_s = rng.below(5400) as i64 - 4800; // 80 minutes back .. 10 minutes ahead
    if rng.chance(60) {
        r.timestamp = Some(
            now + Duration::seconds(offset_s) + Duration::microseconds(rng.below(1_000_000) as i64),
        );
    }
    r
}

/// A row as the Python module writes it: local-time ISO timestamp and no `ts_us`.
fn python_insert(path: &std::path::Path, rng: &mut Rng, now: DateTime<Utc>, n: u64) -> String {
    let id = format!("py{n:010}");
    let at = now - Duration::seconds(rng.below(600) as i64);
    let timestamp = at
        .with_timezone(&Local)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let unit = rng.chance(70).then(|| rng.pick(&UNITS).to_string());
    let model = *rng.pick(&["v1", "v2"]);
    Connection::open(path)
        .unwrap()
        .execute(
            "INSERT INTO usage (id, timestamp, query, response, model, quality_score, unit_id, created_at)
             VALUES (?1, ?2, ?3, 'r', ?4, ?5, ?6, ?2)",
            params![id, timestamp, format!("py {n}"), model, 0.25 + rng.unit() / 2.0, unit],
        )
        .unwrap();
    id
}

fn run_sequence(seed: u64) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let store = open(&path, clock.clone());
    store
        .set_champion(&NewModelVersion::new("v1", "/m/v1"), &EventNote::default())
        .unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut n = 0u64;
    // History before the experiment, for covariates.
    for _ in 0..30 {
        n += 1;
        let mut r = random_record(&mut rng, clock.now(), n);
        r.timestamp = Some(clock.now() - Duration::minutes(rng.below(120) as i64));
        ids.push(store.log(r).unwrap());
    }
    clock.advance(Duration::minutes(30));
    let experiment = store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.5,
            seed,
            &EventNote::default(),
        )
        .unwrap();
    let id = experiment.id;
    let since = experiment.started_at - Duration::minutes(90);
    let mut covariates = false;
    // Whether records of the covariate window changed since covariates were recorded.
    let mut window_dirty = false;
    let steps = 60 + rng.below(60);
    for step in 0..steps {
        let now = clock.now();
        match rng.below(100) {
            0..=29 => {
                n += 1;
                let r = random_record(&mut rng, now, n);
                window_dirty |= r.timestamp.is_some_and(|t| t < experiment.started_at);
                ids.push(store.log(r).unwrap());
            }
            30..=39 => {
                let k = 1 + rng.below(5);
                let batch: Vec<NewUsage> = (0..k)
                    .map(|_| {
                        n += 1;
                        random_record(&mut rng, now, n)
                    })
                    .collect();
                window_dirty |= batch
                    .iter()
                    .any(|r| r.timestamp.is_some_and(|t| t < experiment.started_at));
                ids.extend(store.log_batch(batch).unwrap());
            }
            40..=49 => clock.advance(Duration::seconds(rng.below(900) as i64)),
            50..=54 => {
                let weight = rng.below(101) as f64 / 100.0;
                store
                    .set_challenger_weight(id, weight, WeightSource::Bandit, &EventNote::default())
                    .unwrap();
            }
            55..=66 => {
                let target = rng.pick(&ids).clone();
                let value = *rng.pick(&[
                    FeedbackValue::Positive,
                    FeedbackValue::Negative,
                    FeedbackValue::Neutral,
                ]);
                let _ = store.record_feedback(&target, value, None);
                window_dirty = true;
            }
            67..=74 => {
                let target = rng.pick(&ids).clone();
                let _ = store.update_quality(&target, rng.below(1001) as f64 / 1000.0);
                window_dirty = true;
            }
            75..=78 => {
                let live: Vec<String> = all_records(&store).into_iter().map(|r| r.id).collect();
                if !live.is_empty() {
                    let scores: Vec<(String, f64)> = (0..1 + rng.below(3))
                        .map(|_| (rng.pick(&live).clone(), rng.unit()))
                        .collect();
                    store.update_qualities(&scores).unwrap();
                    window_dirty = true;
                }
            }
            79..=80 => {
                store
                    .forget_unit(UNITS[rng.below(UNITS.len() as u64) as usize])
                    .unwrap();
                window_dirty = true;
            }
            81..=82 => {
                // Sometimes into the experiment: units lose their first records.
                let cutoff = experiment.started_at - Duration::minutes(60)
                    + Duration::seconds(rng.below(7200) as i64);
                store.prune(cutoff, None).unwrap();
                window_dirty = true;
            }
            83..=85 => {
                store.dedupe(false).unwrap();
                window_dirty = true;
            }
            86..=88 => {
                n += 1;
                ids.push(python_insert(&path, &mut rng, now, n));
            }
            89..=91 => {
                store.record_unit_covariates(id, since).unwrap();
                covariates = true;
                window_dirty = false;
            }
            _ => {
                if covariates && window_dirty {
                    store.record_unit_covariates(id, since).unwrap();
                    window_dirty = false;
                }
                let context = format!("seed {seed} step {step}");
                let since = covariates.then_some(since);
                check(&store, id, None, since, &context);
                let cut = experiment.started_at - Duration::minutes(5)
                    + Duration::seconds(rng.below(6000) as i64);
                check(&store, id, Some(cut), since, &context);
            }
        }
    }
    if covariates && window_dirty {
        store.record_unit_covariates(id, since).unwrap();
    }
    let since = covariates.then_some(since);
    let context = format!("seed {seed} end");
    check(&store, id, None, since, &context);
    check(
        &store,
        id,
        Some(clock.now() - Duration::minutes(20)),
        since,
        &context,
    );
}

#[test]
fn unit_stats_equal_the_reference_over_random_sequences() {
    for seed in 1..=40 {
        run_sequence(seed);
    }
}

/// A store with champion `v1`, challenger `v2` and some records of both arms.
fn running_with_records(path: &std::path::Path, clock: Arc<ManualClock>) -> (SqliteStore, i64) {
    let store = open(path, clock.clone());
    store
        .set_champion(&NewModelVersion::new("v1", "/m/v1"), &EventNote::default())
        .unwrap();
    let mut rng = Rng::new(99);
    for n in 0..20 {
        let mut r = random_record(&mut rng, clock.now(), n);
        r.timestamp = Some(clock.now() - Duration::minutes(1 + n as i64));
        store.log(r).unwrap();
    }
    clock.advance(Duration::hours(1));
    let id = store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.3,
            7,
            &EventNote::default(),
        )
        .unwrap()
        .id;
    for n in 20..120 {
        if n == 70 {
            store
                .set_challenger_weight(id, 0.6, WeightSource::Manual, &EventNote::default())
                .unwrap();
        }
        clock.advance(Duration::seconds(30));
        let mut r = random_record(&mut rng, clock.now(), n);
        r.timestamp = None;
        store.log(r).unwrap();
    }
    (store, id)
}

/// Migration 7 from a version-6 file with an experiment running. The version-6 file is made
/// by opening a new store (version 7), dropping every table, trigger and column version 7
/// added, and setting `user_version` back to 6: the same schema version 6 wrote, with the
/// records and the running experiment already in it.
#[test]
fn migration_from_version_6_builds_the_statistics_of_a_running_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let (store, id) = running_with_records(&path, clock.clone());
    let before = store.unit_stats(id, None).unwrap();
    drop(store);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TRIGGER experiment_usage_insert;
             DROP TRIGGER experiment_usage_delete;
             DROP TRIGGER experiment_usage_values;
             DROP TRIGGER experiment_usage_move;
             DROP TABLE experiment_live;
             DROP TABLE experiment_unit;
             DROP TABLE experiment_loose;
             DROP TABLE experiment_unit_pre;
             DROP TABLE experiment_cohort;
             ALTER TABLE experiment_period DROP COLUMN started_us;
             PRAGMA user_version = 6;",
        )
        .unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name LIKE 'experiment_unit%' OR name LIKE 'experiment_live%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            tables, 0,
            "the version-6 file has none of version 7's objects"
        );
    }
    let store = open(&path, clock.clone());
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 8);
    let migrated = store.unit_stats(id, None).unwrap();
    assert_cohorts_match(&migrated, &before, "after migration, as before");
    check(&store, id, None, None, "after migration");
    check(
        &store,
        id,
        Some(clock.now() - Duration::minutes(20)),
        None,
        "after migration",
    );
    // And kept current afterwards.
    let mut rng = Rng::new(5);
    for n in 0..30 {
        store
            .log(random_record(&mut rng, clock.now(), 1000 + n))
            .unwrap();
    }
    store.forget_unit("u3").unwrap();
    check(&store, id, None, None, "after migration and more writes");
}

#[test]
fn an_ended_experiment_keeps_its_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let (store, id) = running_with_records(&path, clock.clone());
    store
        .record_unit_covariates(id, start() - Duration::hours(1))
        .unwrap();
    let before = store.unit_stats(id, None).unwrap();
    assert!(!before.is_empty());
    clock.advance(Duration::minutes(1));
    store.promote(id, &EventNote::default()).unwrap();
    let after = store.unit_stats(id, None).unwrap();
    assert_cohorts_match(&after, &before, "right after promotion");
    check(
        &store,
        id,
        None,
        Some(start() - Duration::hours(1)),
        "ended",
    );
    // Records of the (former) arms logged after the end change nothing.
    let mut rng = Rng::new(3);
    for n in 0..20 {
        let mut r = random_record(&mut rng, clock.now(), 500 + n);
        r.timestamp = None;
        store.log(r).unwrap();
    }
    let later = store.unit_stats(id, None).unwrap();
    assert_cohorts_match(&later, &before, "after more logging");
    // The next experiment starts from nothing.
    clock.advance(Duration::minutes(1));
    let next = store
        .deploy_challenger(
            &NewModelVersion::new("v3", "/m/v3"),
            0.5,
            1,
            &EventNote::default(),
        )
        .unwrap();
    assert!(store.unit_stats(next.id, None).unwrap().is_empty());
    assert_eq!(
        store.unit_stats(9999, None).unwrap_err().kind(),
        afs_store::ErrorKind::NotFound
    );
    assert_eq!(
        store
            .record_unit_covariates(9999, start())
            .unwrap_err()
            .kind(),
        afs_store::ErrorKind::NotFound
    );
}

#[test]
fn forgetting_a_unit_leaves_no_row_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let (store, id) = running_with_records(&path, clock.clone());
    store
        .record_unit_covariates(id, start() - Duration::hours(1))
        .unwrap();
    let count = |unit: &str| -> i64 {
        let conn = Connection::open(&path).unwrap();
        conn.query_row(
            "SELECT (SELECT COUNT(*) FROM experiment_unit WHERE unit = ?1)
                  + (SELECT COUNT(*) FROM experiment_unit_pre WHERE unit = ?1)",
            [unit],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(count("u1") > 0, "u1 has statistics before it is forgotten");
    assert!(count("u2") > 0);
    store.forget_unit("u1").unwrap();
    assert_eq!(count("u1"), 0);
    check(
        &store,
        id,
        None,
        Some(start() - Duration::hours(1)),
        "after forgetting u1",
    );
    // In an ended experiment too.
    store.rollback(id, &EventNote::default()).unwrap();
    store.forget_unit("u2").unwrap();
    assert_eq!(count("u2"), 0);
}

#[test]
fn covariates_count_units_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afs.db");
    let clock = Arc::new(ManualClock::new(start()));
    let store = open(&path, clock.clone());
    store
        .set_champion(&NewModelVersion::new("v1", "/m/v1"), &EventNote::default())
        .unwrap();
    for (i, unit) in ["a", "b", "b", "c"].iter().enumerate() {
        let mut r = NewUsage::new(format!("q{i}"), "r", "v1");
        r.unit_id = Some(unit.to_string());
        r.quality_score = Some(0.5);
        r.timestamp = Some(start() - Duration::minutes(10 * (i as i64 + 1)));
        store.log(r).unwrap();
    }
    clock.advance(Duration::minutes(1));
    let id = store
        .deploy_challenger(
            &NewModelVersion::new("v2", "/m/v2"),
            0.5,
            1,
            &EventNote::default(),
        )
        .unwrap()
        .id;
    assert_eq!(
        store
            .record_unit_covariates(id, start() - Duration::minutes(25))
            .unwrap(),
        2,
        "a and b have records in the window, c's is before it"
    );
    assert_eq!(
        store
            .record_unit_covariates(id, start() + Duration::hours(1))
            .unwrap(),
        0
    );
}
