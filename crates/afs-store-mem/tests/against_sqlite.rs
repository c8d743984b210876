//! `MemStore` against the SQLite store and the scan-based references: the same random
//! writes go to both, and every read (records with every filter, windowed statistics, dedupe,
//! prune and its archive, forget, per-unit experiment statistics) must agree, ids aside.

use std::collections::HashMap;
use std::sync::Arc;

use afs_store::{
    unit_cohorts_from_records, Clock, EventNote, ExperimentStore, Feedback, FeedbackFilter,
    FeedbackValue, ManualClock, NewModelVersion, NewUsage, Order, Paging, RecordFields,
    RecordFilter, StatsWindow, UnitCohort, UsageRecord, UsageStats, UsageStore, WeightSource,
};
use afs_store_mem::MemStore;
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn start() -> DateTime<Utc> {
    // Sub-microsecond digits: both stores keep times to the microsecond.
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap() + Duration::nanoseconds(1_234_567)
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
}

/// Both stores on one manual clock, and the id pairs of the records logged to both.
struct Pair {
    mem: MemStore,
    sql: SqliteStore,
    clock: Arc<ManualClock>,
    /// SQLite id → MemStore id.
    ids: HashMap<String, String>,
    logged: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start()));
        Pair {
            mem: MemStore::new(clock.clone()),
            sql: SqliteStore::open(SqliteConfig::new(dir.path().join("afs.db")), clock.clone())
                .unwrap(),
            clock,
            ids: HashMap::new(),
            logged: Vec::new(),
            _dir: dir,
        }
    }

    fn log(&mut self, new: NewUsage) {
        let m = self.mem.log(new.clone()).unwrap();
        let s = self.sql.log(new).unwrap();
        self.ids.insert(s.clone(), m.clone());
        self.logged.push((m, s));
    }

    fn log_batch(&mut self, batch: Vec<NewUsage>) {
        let m = self.mem.log_batch(batch.clone()).unwrap();
        let s = self.sql.log_batch(batch).unwrap();
        for (m, s) in m.into_iter().zip(s) {
            self.ids.insert(s.clone(), m.clone());
            self.logged.push((m, s));
        }
    }

    /// The records `filter` selects in each store, SQLite's with MemStore's ids.
    fn both(&self, filter: &RecordFilter) -> (Vec<UsageRecord>, Vec<UsageRecord>) {
        let read = |store: &dyn UsageStore| {
            store
                .query(filter)
                .unwrap()
                .collect::<afs_store::Result<Vec<_>>>()
                .unwrap()
        };
        let mem = read(&self.mem);
        let mut sql = read(&self.sql);
        for r in &mut sql {
            r.id = self.ids[&r.id].clone();
        }
        (mem, sql)
    }
}

fn random_record(rng: &mut Rng, i: usize, models: &[&str], span_s: i64) -> NewUsage {
    let crowded = rng.chance(10);
    NewUsage {
        model: models[rng.below(models.len() as u64) as usize].to_string(),
        quality_score: rng.chance(80).then(|| rng.unit()),
        latency_ms: rng.chance(90).then(|| 1.0 + 500.0 * rng.unit()),
        token_count: rng.chance(50).then(|| rng.below(2000) as i64),
        unit_id: rng.chance(85).then(|| format!("u{}", rng.below(25))),
        expert: rng.chance(30).then(|| "asm".to_string()),
        timestamp: rng.chance(90).then(|| {
            if crowded {
                // Many records at one instant.
                start() + Duration::seconds(3600)
            } else {
                start() + Duration::microseconds(rng.below(span_s as u64 * 1_000_000) as i64)
            }
        }),
        feedback: rng.chance(15).then(|| Feedback {
            value: FeedbackValue::Neutral,
            text: Some("logged with it".into()),
            at: None,
        }),
        ..NewUsage::new(
            format!("query {}", i % 97),
            format!("response {}", i % 89),
            "x",
        )
    }
}

fn assert_stats_close(got: &UsageStats, want: &UsageStats, context: &str) {
    assert!(got.approx_eq(want, 1e-6), "{context}: {got:?} vs {want:?}");
}

/// Random writes of every kind over three days, then every read compared.
fn history(seed: u64) -> Pair {
    let mut rng = Rng::new(seed);
    let mut p = Pair::new();
    let span = 3 * 86_400;
    for i in 0..400 {
        let new = random_record(&mut rng, i, &["m1", "m2", "m3"], span);
        if rng.chance(20) {
            let batch = (0..rng.below(30) as usize)
                .map(|j| random_record(&mut rng, i * 100 + j, &["m1", "m2", "m3"], span))
                .collect();
            p.log_batch(batch);
        }
        p.log(new);
        p.clock
            .advance(Duration::microseconds(rng.below(2_000_000) as i64));
    }
    let logged = p.logged.clone();
    let mut scores = Vec::new();
    for (m, s) in &logged {
        match rng.below(8) {
            0 => {
                p.mem
                    .record_feedback(m, FeedbackValue::Positive, Some("yes"))
                    .unwrap();
                p.sql
                    .record_feedback(s, FeedbackValue::Positive, Some("yes"))
                    .unwrap();
            }
            1 => {
                p.mem
                    .record_feedback(m, FeedbackValue::Negative, None)
                    .unwrap();
                p.sql
                    .record_feedback(s, FeedbackValue::Negative, None)
                    .unwrap();
            }
            2 => {
                let q = rng.unit();
                p.mem.update_quality(m, q).unwrap();
                p.sql.update_quality(s, q).unwrap();
            }
            3 => scores.push((m.clone(), s.clone(), rng.unit())),
            _ => {}
        }
    }
    let (ms, ss): (Vec<_>, Vec<_>) = scores.into_iter().map(|(m, s, q)| ((m, q), (s, q))).unzip();
    p.mem.update_qualities(&ms).unwrap();
    p.sql.update_qualities(&ss).unwrap();
    p
}

fn filters() -> Vec<RecordFilter> {
    let mut out = vec![RecordFilter::default()];
    let t = |h: i64| Some(start() + Duration::minutes(h * 37) + Duration::microseconds(h * 7));
    for order in [Order::OldestFirst, Order::NewestFirst] {
        for feedback in [
            FeedbackFilter::Any,
            FeedbackFilter::Present,
            FeedbackFilter::Absent,
            FeedbackFilter::AtLeast(0),
        ] {
            out.push(RecordFilter {
                order,
                feedback,
                ..Default::default()
            });
            out.push(RecordFilter {
                order,
                feedback,
                since: t(10),
                until: t(90),
                model: Some("m2".into()),
                limit: Some(70),
                ..Default::default()
            });
            out.push(RecordFilter {
                order,
                feedback,
                unit_id: Some("u3".into()),
                min_quality: Some(0.4),
                keep_unscored: true,
                fields: RecordFields::Training,
                paging: Paging::Bulk,
                ..Default::default()
            });
            out.push(RecordFilter {
                order,
                feedback,
                expert: Some("asm".into()),
                min_quality: Some(0.3),
                since: t(5),
                limit: Some(1),
                ..Default::default()
            });
        }
    }
    out.push(RecordFilter {
        limit: Some(0),
        ..Default::default()
    });
    out
}

fn windows() -> Vec<StatsWindow> {
    let t = |m: i64, us: i64| Some(start() + Duration::minutes(m) + Duration::microseconds(us));
    let base = Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap();
    let minute = |m: i64| Some(base + Duration::minutes(m));
    let mut out = vec![StatsWindow::default()];
    for model in [None, Some("m1".to_string())] {
        for (since, until) in [
            (t(0, 0), None),
            (minute(61), None),
            (t(61, 5), t(61, 900)),
            (t(-60, 0), t(24 * 60 + 13, 123)),
            (minute(30), minute(2000)),
            (None, t(3000, 17)),
            (t(60, 0), t(60 * 24 * 10, 0)),
            (t(200, 5), t(100, 0)),
        ] {
            out.push(StatsWindow {
                since,
                until,
                model: model.clone(),
            });
        }
    }
    out
}

fn compare_reads(p: &Pair, context: &str) {
    for filter in filters() {
        // Both give a microsecond's records in insertion order, also through SQLite's
        // feedback index (which orders them by feedback and quality).
        let (mem, sql) = p.both(&filter);
        assert_eq!(mem, sql, "{context}: {filter:?}");
    }
    for window in windows() {
        let mem = p.mem.stats_by_model(&window).unwrap();
        let sql = p.sql.stats_by_model(&window).unwrap();
        assert_eq!(
            mem.keys().collect::<Vec<_>>(),
            sql.keys().collect::<Vec<_>>(),
            "{context}: {window:?}"
        );
        for (model, s) in &sql {
            assert_stats_close(&mem[model], s, &format!("{context}: {window:?} {model}"));
        }
        // The reference: a scan of the window's records.
        let scan = p
            .both(&RecordFilter {
                since: window.since,
                until: window.until,
                model: window.model.clone(),
                ..Default::default()
            })
            .0;
        assert_stats_close(
            &p.mem.stats(&window).unwrap(),
            &UsageStats::of_records(&scan),
            &format!("{context}: {window:?} scan"),
        );
        let mem = p.mem.stats_by_hour(&window).unwrap();
        let sql = p.sql.stats_by_hour(&window).unwrap();
        assert_eq!(
            mem.keys().collect::<Vec<_>>(),
            sql.keys().collect::<Vec<_>>(),
            "{context}: {window:?} by hour"
        );
        for (hour, s) in &sql {
            assert_stats_close(&mem[hour], s, &format!("{context}: {window:?} {hour}"));
        }
        assert_eq!(
            p.mem
                .count_quality_samples(window.since, window.model.as_deref())
                .unwrap(),
            p.sql
                .count_quality_samples(window.since, window.model.as_deref())
                .unwrap(),
            "{context}: {window:?}"
        );
    }
}

#[test]
fn reads_agree_with_sqlite_after_every_kind_of_write() {
    for seed in 1..=3 {
        let p = history(seed);
        compare_reads(&p, &format!("seed {seed}"));
        for id in p.ids.keys().take(20) {
            let mut s = p.sql.get(id).unwrap();
            s.id = p.ids[id].clone();
            assert_eq!(p.mem.get(&p.ids[id]).unwrap(), s);
        }
    }
}

#[test]
fn dedupe_prune_and_forget_agree_with_sqlite() {
    let mut p = history(7);
    for dry_run in [true, false] {
        assert_eq!(
            p.mem.dedupe(dry_run).unwrap(),
            p.sql.dedupe(dry_run).unwrap()
        );
        compare_reads(&p, &format!("dedupe dry_run {dry_run}"));
    }
    assert_eq!(
        p.mem.forget_unit("u3").unwrap(),
        p.sql.forget_unit("u3").unwrap()
    );
    assert_eq!(p.mem.forget_unit("nobody").unwrap(), 0);
    compare_reads(&p, "forget");

    let dir = tempfile::tempdir().unwrap();
    let cutoff = start() + Duration::hours(30) + Duration::microseconds(17);
    let (mem_file, sql_file) = (dir.path().join("mem.jsonl"), dir.path().join("sql.jsonl"));
    let mem = p.mem.prune(cutoff, Some(&mem_file)).unwrap();
    let sql = p.sql.prune(cutoff, Some(&sql_file)).unwrap();
    assert_eq!(mem, sql);
    assert!(mem.removed > 0);
    // The same JSON lines, ids aside.
    let lines = |path: &std::path::Path, map: Option<&HashMap<String, String>>| {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(map) = map {
                    let id = v["id"].as_str().unwrap().to_string();
                    v["id"] = map[&id].clone().into();
                }
                v.to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&mem_file, None), lines(&sql_file, Some(&p.ids)));
    // An archive that exists is refused and nothing is deleted.
    let before = p.mem.len();
    let err = p
        .mem
        .prune(start() + Duration::days(10), Some(&mem_file))
        .unwrap_err();
    assert_eq!(err.kind(), afs_store::ErrorKind::Io);
    assert_eq!(p.mem.len(), before);
    compare_reads(&p, "prune");
    p.mem.rebuild_rollups().unwrap();
    compare_reads(&p, "rebuild");
    // Logging goes on after the deletions.
    for i in 0..50 {
        let mut rng = Rng::new(i);
        p.log(random_record(&mut rng, i as usize, &["m1", "m2"], 86_400));
    }
    compare_reads(&p, "after");
}

fn assert_cohorts(got: &[UnitCohort], want: &[UnitCohort], context: &str) {
    let key = |c: &UnitCohort| {
        (
            c.period,
            c.challenger,
            c.units,
            c.assigned,
            c.records,
            c.loose_records,
        )
    };
    assert_eq!(
        got.iter().map(key).collect::<Vec<_>>(),
        want.iter().map(key).collect::<Vec<_>>(),
        "{context}"
    );
    for (g, w) in got.iter().zip(want) {
        for m in afs_store::UnitMetric::ALL {
            assert!(
                g.metric(m).approx_eq(w.metric(m), 1e-9),
                "{context}: {m:?} of {:?}\n{:?}\n{:?}",
                (g.period, g.challenger),
                g.metric(m),
                w.metric(m)
            );
        }
    }
}

/// The experiment's cohorts in MemStore against SQLite's and against the reference over
/// MemStore's log.
fn check_units(p: &Pair, id: i64, covariates_since: Option<DateTime<Utc>>, context: &str) {
    let experiment = p.mem.experiment(id).unwrap();
    let log = p.both(&RecordFilter::default()).0;
    for cut in [None, Some(p.clock.now() - Duration::minutes(90))] {
        let mem = p.mem.unit_stats(id, cut).unwrap();
        let sql = p.sql.unit_stats(id, cut).unwrap();
        assert_cohorts(&mem, &sql, &format!("{context}: sqlite, cut {cut:?}"));
        let reference = unit_cohorts_from_records(&experiment, &log, cut, covariates_since);
        assert_cohorts(
            &mem,
            &reference,
            &format!("{context}: reference, cut {cut:?}"),
        );
    }
}

#[test]
fn unit_statistics_agree_with_sqlite_and_the_reference() {
    for seed in 1..=3 {
        let mut rng = Rng::new(seed);
        let mut p = Pair::new();
        let note = EventNote::reason("test");
        let models = ["champ", "chall", "other"];
        // A week of history before the experiment, for covariates.
        for i in 0..150 {
            let mut new = random_record(&mut rng, i, &models, 86_400);
            new.timestamp = Some(start() - Duration::seconds(rng.below(7 * 86_400) as i64 + 1));
            // Unique texts: dedupe leaves the covariates' history alone.
            new.query = format!("pre {i}");
            p.log(new);
        }
        for store in [&p.mem as &dyn ExperimentStore, &p.sql] {
            store
                .set_champion(&NewModelVersion::new("champ", "/m/champ"), &note)
                .unwrap();
        }
        // Records already at the start of the experiment are counted.
        p.log(NewUsage {
            unit_id: Some("early".into()),
            timestamp: Some(start()),
            ..NewUsage::new("q", "r", "chall")
        });
        let deploy = |store: &dyn ExperimentStore| {
            store
                .deploy_challenger(&NewModelVersion::new("chall", "/m/chall"), 0.3, 42, &note)
                .unwrap()
                .id
        };
        let id = deploy(&p.mem);
        assert_eq!(deploy(&p.sql), id);
        let since = start() - Duration::days(7);
        assert_eq!(
            p.mem.record_unit_covariates(id, since).unwrap(),
            p.sql.record_unit_covariates(id, since).unwrap()
        );
        for step in 0..6 {
            for i in 0..80 {
                let mut new = random_record(&mut rng, 1000 * step + i, &models, 60);
                new.timestamp = None;
                if rng.chance(10) {
                    // A late record, dated earlier in the experiment.
                    new.timestamp = Some(
                        (p.clock.now() - Duration::minutes(rng.below(30) as i64)).max(start()),
                    );
                }
                p.log(new);
                p.clock.advance(Duration::seconds(rng.below(90) as i64));
            }
            let logged = p.logged.clone();
            for (m, s) in logged.iter().rev().take(80) {
                match rng.below(6) {
                    0 => {
                        p.mem
                            .record_feedback(m, FeedbackValue::Positive, None)
                            .unwrap();
                        p.sql
                            .record_feedback(s, FeedbackValue::Positive, None)
                            .unwrap();
                    }
                    1 => {
                        p.mem
                            .record_feedback(m, FeedbackValue::Negative, None)
                            .unwrap();
                        p.sql
                            .record_feedback(s, FeedbackValue::Negative, None)
                            .unwrap();
                    }
                    2 => {
                        let q = rng.unit();
                        p.mem.update_quality(m, q).unwrap();
                        p.sql.update_quality(s, q).unwrap();
                    }
                    _ => {}
                }
            }
            if step == 2 {
                for store in [&p.mem as &dyn ExperimentStore, &p.sql] {
                    store
                        .set_challenger_weight(id, 0.6, WeightSource::Manual, &note)
                        .unwrap();
                }
            }
            if step == 3 {
                // Deletions: a unit's first records go (dedupe), a unit is forgotten.
                assert_eq!(p.mem.dedupe(false).unwrap(), p.sql.dedupe(false).unwrap());
                let unit = format!("u{}", rng.below(25));
                assert_eq!(
                    p.mem.forget_unit(&unit).unwrap(),
                    p.sql.forget_unit(&unit).unwrap()
                );
            }
            check_units(&p, id, Some(since), &format!("seed {seed} step {step}"));
        }
        // Ended: the statistics stay as they stood.
        for store in [&p.mem as &dyn ExperimentStore, &p.sql] {
            store.promote(id, &note).unwrap();
        }
        let ended = p.mem.unit_stats(id, None).unwrap();
        for i in 0..20 {
            p.log(NewUsage {
                unit_id: Some(format!("u{i}")),
                ..NewUsage::new("after", "r", "chall")
            });
        }
        assert_cohorts(&p.mem.unit_stats(id, None).unwrap(), &ended, "ended");
        assert_cohorts(
            &p.mem.unit_stats(id, None).unwrap(),
            &p.sql.unit_stats(id, None).unwrap(),
            "ended, sqlite",
        );
        assert_eq!(p.mem.experiments().unwrap(), p.sql.experiments().unwrap());
        assert_eq!(
            p.mem.model_versions().unwrap(),
            p.sql.model_versions().unwrap()
        );
        let events = afs_store::EventFilter::default();
        assert_eq!(
            p.mem.events(&events).unwrap(),
            p.sql.events(&events).unwrap()
        );
        assert_eq!(
            p.mem.unit_stats(99, None).unwrap_err().kind(),
            afs_store::ErrorKind::NotFound
        );
    }
}
