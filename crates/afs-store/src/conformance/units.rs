//! The per-unit experiment statistics checks (`unit_stats`, `record_unit_covariates`)
//! against the scan-based reference [`unit_cohorts_from_records`]: random sequences of every
//! kind of write, ended experiments, forgetting a unit and covariates.

use chrono::{DateTime, Duration, Utc};

use super::{all_records, fresh, utc, Check, Factory, TestStore};
use crate::{
    unit_cohorts_from_records, Clock, ErrorKind, EventNote, Experiment, Feedback, FeedbackValue,
    ManualClock, NewModelVersion, NewUsage, RecordFilter, UnitCohort, WeightSource,
};

/// The checks of this area.
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "units::unit_stats_equal_the_reference_over_random_sequences",
            unit_stats_equal_the_reference_over_random_sequences,
        ),
        (
            "units::an_ended_experiment_keeps_its_statistics",
            an_ended_experiment_keeps_its_statistics,
        ),
        (
            "units::forgetting_a_unit_removes_it_from_the_statistics",
            forgetting_a_unit_removes_it_from_the_statistics,
        ),
        (
            "units::covariates_count_units_with_history",
            covariates_count_units_with_history,
        ),
    ]
}

fn start() -> DateTime<Utc> {
    utc(2026, 4, 1, 9, 0, 0)
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

/// Asserts that two lists of cohorts are equal: counts exactly, float sums within 1e-9
/// (relative, or absolute below 1); `context` starts the panic message.
pub fn assert_unit_cohorts_close(got: &[UnitCohort], want: &[UnitCohort], context: &str) {
    let same = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.approx_eq(w, 1e-9));
    assert!(same, "{context}\n got: {got:#?}\nwant: {want:#?}");
}

/// The reference over the whole log, as `unit_stats` must return it.
fn reference(
    store: &dyn TestStore,
    experiment: &Experiment,
    cut: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
) -> Vec<UnitCohort> {
    let records = all_records(store, &RecordFilter::default());
    unit_cohorts_from_records(experiment, &records, cut, since)
}

/// Asserts that the store's per-unit statistics of experiment `experiment_id` (with
/// maturity cut `cut`) equal [`unit_cohorts_from_records`] over every record of the log,
/// with covariates from `covariate_since` (the `since` the store's covariates were last
/// recorded with, or `None` if never): counts exactly, sums within 1e-9. `context` starts
/// the panic message.
pub fn assert_unit_stats_match_scan(
    store: &dyn TestStore,
    experiment_id: i64,
    cut: Option<DateTime<Utc>>,
    covariate_since: Option<DateTime<Utc>>,
    context: &str,
) {
    let experiment = store.experiment(experiment_id).unwrap();
    let got = store.unit_stats(experiment_id, cut).unwrap();
    let want = reference(store, &experiment, cut, covariate_since);
    assert_unit_cohorts_close(&got, &want, &format!("{context} (cut {cut:?})"));
}

fn check(
    store: &dyn TestStore,
    id: i64,
    cut: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    context: &str,
) {
    assert_unit_stats_match_scan(store, id, cut, since, context);
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

/// A random sequence of every kind of write (records singly and in batches, at times around
/// now and before the experiment, weight changes, feedback, quality updates, forgetting a
/// unit, prune, dedupe, covariates) on a fresh `store` driven by `clock`, with an experiment
/// running; at random steps and at the end its per-unit statistics, with and without a
/// maturity cut, must equal [`unit_cohorts_from_records`] over the log
/// ([`assert_unit_stats_match_scan`]). The same seed gives the same sequence.
///
/// `foreign_insert`, when given, is called at some steps instead of logging a record
/// through the store: it adds a record by another way the backend supports (the SQLite
/// store's tests insert rows as the Python module does) given the record's number and the
/// time, and returns its id.
pub fn unit_stats_sequence(
    store: &dyn TestStore,
    clock: &ManualClock,
    seed: u64,
    foreign_insert: Option<&dyn Fn(u64, DateTime<Utc>) -> String>,
) {
    let mut rng = Rng::new(seed);
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
                let live: Vec<String> = all_records(store, &RecordFilter::default())
                    .into_iter()
                    .map(|r| r.id)
                    .collect();
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
                match foreign_insert {
                    Some(insert) => ids.push(insert(n, now)),
                    None => ids.push(store.log(random_record(&mut rng, now, n)).unwrap()),
                }
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
                check(store, id, None, since, &context);
                let cut = experiment.started_at - Duration::minutes(5)
                    + Duration::seconds(rng.below(6000) as i64);
                check(store, id, Some(cut), since, &context);
            }
        }
    }
    if covariates && window_dirty {
        store.record_unit_covariates(id, since).unwrap();
    }
    let since = covariates.then_some(since);
    let context = format!("seed {seed} end");
    check(store, id, None, since, &context);
    check(
        store,
        id,
        Some(clock.now() - Duration::minutes(20)),
        since,
        &context,
    );
}

fn unit_stats_equal_the_reference_over_random_sequences(factory: &dyn Factory) {
    // Forty independent sequences, each on a fresh store, shared by two threads: a server's
    // round trips overlap (on PostgreSQL the check took 24-31 s on one thread).
    std::thread::scope(|scope| {
        for first in 1..=2 {
            scope.spawn(move || {
                for seed in (first..=40).step_by(2) {
                    let f = fresh(factory, start());
                    unit_stats_sequence(f.store.as_ref(), &f.clock, seed, None);
                }
            });
        }
    });
}

/// Sets champion `v1` on a fresh `store` driven by `clock`, logs some records, starts an
/// experiment with challenger `v2` an hour later and logs records of both arms (changing the
/// weight midway), moving the clock 30 s per record; returns the experiment's id.
pub fn running_experiment_with_records(store: &dyn TestStore, clock: &ManualClock) -> i64 {
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
    id
}

fn an_ended_experiment_keeps_its_statistics(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let (store, clock) = (f.store.as_ref(), &f.clock);
    let id = running_experiment_with_records(store, clock);
    store
        .record_unit_covariates(id, start() - Duration::hours(1))
        .unwrap();
    let before = store.unit_stats(id, None).unwrap();
    assert!(!before.is_empty());
    clock.advance(Duration::minutes(1));
    store.promote(id, &EventNote::default()).unwrap();
    let after = store.unit_stats(id, None).unwrap();
    assert_unit_cohorts_close(&after, &before, "right after promotion");
    check(store, id, None, Some(start() - Duration::hours(1)), "ended");
    // Records of the (former) arms logged after the end change nothing.
    let mut rng = Rng::new(3);
    for n in 0..20 {
        let mut r = random_record(&mut rng, clock.now(), 500 + n);
        r.timestamp = None;
        store.log(r).unwrap();
    }
    let later = store.unit_stats(id, None).unwrap();
    assert_unit_cohorts_close(&later, &before, "after more logging");
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
        ErrorKind::NotFound
    );
    assert_eq!(
        store
            .record_unit_covariates(9999, start())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

fn covariates_count_units_with_history(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let (store, clock) = (f.store.as_ref(), &f.clock);
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

/// Forgetting a unit takes it out of the statistics of a running and of an ended
/// experiment (the SQLite tests also look for rows naming it).
fn forgetting_a_unit_removes_it_from_the_statistics(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let (store, clock) = (f.store.as_ref(), &f.clock);
    let id = running_experiment_with_records(store, clock);
    let since = start() - Duration::hours(1);
    store.record_unit_covariates(id, since).unwrap();
    let before = store.unit_stats(id, None).unwrap();
    store.forget_unit("u1").unwrap();
    check(store, id, None, Some(since), "after forgetting u1");
    assert_ne!(
        store.unit_stats(id, None).unwrap(),
        before,
        "u1 had records in the experiment"
    );
    // In an ended experiment too.
    store.rollback(id, &EventNote::default()).unwrap();
    let ended = store.unit_stats(id, None).unwrap();
    store.forget_unit("u2").unwrap();
    check(store, id, None, Some(since), "after forgetting u2, ended");
    assert_ne!(store.unit_stats(id, None).unwrap(), ended);
}
