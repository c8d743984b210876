//! The demo engine: a small simulation retrains, decides, and repeats itself exactly for a
//! seed; the database it leaves is a normal afs database. `AFS_SLOW_TESTS=1` also runs the
//! default four weeks for several seeds.

use std::sync::Arc;

use afs_demo::{DemoConfig, DemoEvent, DemoEventKind, DemoSummary};
use afs_loop::status_summary;
use afs_store::SystemClock;
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use afs_tests::slow_tests_enabled;

/// Runs the demo on the SQLite database at `config.db_path`, as `afs demo` does.
fn demo_run(
    config: &DemoConfig,
    on_event: &mut dyn FnMut(&DemoEvent),
) -> afs_loop::Result<DemoSummary> {
    let open = |clock| SqliteStore::open(SqliteConfig::new(&config.db_path), clock);
    afs_demo::run(config, open, on_event)
}

fn run(
    seed: u64,
    days: u32,
    requests_per_hour: u32,
) -> (Vec<DemoEvent>, DemoSummary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        db_path: dir.path().join("demo.db"),
        output_dir: dir.path().join("out"),
        seed,
        days,
        requests_per_hour,
        ..DemoConfig::default()
    };
    let mut events = Vec::new();
    let summary = demo_run(&config, &mut |event| events.push(event.clone())).unwrap();
    (events, summary, dir)
}

fn messages(events: &[DemoEvent]) -> Vec<String> {
    events.iter().map(ToString::to_string).collect()
}

#[test]
fn a_small_demo_retrains_decides_and_repeats_itself_for_a_seed() {
    let (events, summary, dir) = run(3, 7, 60);
    let text = messages(&events).join("\n");
    assert!(summary.retrains >= 1, "{text}");
    assert!(summary.promotions + summary.rollbacks >= 1, "{text}");
    assert_eq!(
        summary.correct_decisions + summary.wrong_decisions,
        summary.promotions + summary.rollbacks
    );
    assert_eq!(summary.iterations, 7 * 24);
    assert_eq!(events.first().unwrap().kind, DemoEventKind::Start);
    assert_eq!(events.last().unwrap().kind, DemoEventKind::Finish);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == DemoEventKind::Day)
            .count(),
        7
    );
    // The trainer's output says plainly whether each model is better or worse.
    let retrain = events
        .iter()
        .find(|e| e.kind == DemoEventKind::Retrain)
        .expect("a retrain event");
    assert!(
        retrain
            .message
            .contains("demo trainer made nayru-v2 (hidden true quality"),
        "{}",
        retrain.message
    );
    assert!(
        retrain.message.contains("better than champion")
            || retrain.message.contains("worse than champion")
    );
    // Events are stamped with their simulated day and hour, in order.
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(events
        .iter()
        .all(|e| (1..=8).contains(&e.day) && e.hour < 24));

    // The same seed gives the same timeline; another seed another.
    let (again, again_summary, _dir) = run(3, 7, 60);
    assert_eq!(messages(&events), messages(&again));
    assert_eq!(summary.champions, again_summary.champions);
    let (other, _, _dir) = run(4, 7, 60);
    assert_ne!(messages(&events), messages(&other));

    // The database is a normal afs database that other commands can read.
    let store = SqliteStore::open(
        SqliteConfig::new(dir.path().join("demo.db")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let status = status_summary(&store).unwrap();
    assert_eq!(status.loop_state.iterations, 7 * 24);
    assert_eq!(status.successful_retrains, summary.retrains);
    assert_eq!(status.failed_retrains, summary.failed_retrains);
    assert_eq!(
        status.champion.unwrap().name,
        summary.champions.last().unwrap().name
    );
    assert!(status.usage.total > 7 * 24 * 30);

    // The final table names every champion with its true quality.
    let table = summary.lines().join("\n");
    for span in &summary.champions {
        assert!(table.contains(&span.name), "{table}");
    }
}

#[test]
fn the_demo_refuses_a_database_that_holds_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        db_path: dir.path().join("demo.db"),
        output_dir: dir.path().join("out"),
        days: 1,
        requests_per_hour: 10,
        ..DemoConfig::default()
    };
    demo_run(&config, &mut |_| {}).unwrap();
    let err = demo_run(&config, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("already holds data"), "{err}");
}

/// The default four weeks: the loop improves the champion and the judge's decisions agree
/// with the hidden truth. Slow in debug builds: runs with `AFS_SLOW_TESTS=1`.
#[test]
fn four_weeks_of_the_default_demo_improve_the_champion() {
    if !slow_tests_enabled() {
        return;
    }
    for seed in [1, 2, 3] {
        let (events, summary, _dir) = run(seed, 28, DemoConfig::default().requests_per_hour);
        let text = messages(&events).join("\n");
        assert!(
            summary.promotions >= 2 && summary.rollbacks >= 1,
            "seed {seed}:\n{text}"
        );
        assert_eq!(summary.wrong_decisions, 0, "seed {seed}:\n{text}");
        let first = summary.champions.first().unwrap().true_quality;
        let last = summary.champions.last().unwrap().true_quality;
        assert!(last > first, "seed {seed}: {first} -> {last}");
    }
}
