//! The demo runs on whichever store its caller opens: the in-memory store gives the
//! timeline the SQLite database gives, event for event.

use afs_demo::{DemoConfig, DemoEvent, DemoSummary};
use afs_store::{NewUsage, StoreError, UsageStore};
use afs_store_mem::MemStore;
use afs_store_sqlite::{SqliteConfig, SqliteStore};

fn config(dir: &std::path::Path, name: &str) -> DemoConfig {
    DemoConfig {
        db_path: dir.join(format!("{name}.db")),
        output_dir: dir.join(name),
        seed: 5,
        days: 5,
        requests_per_hour: 60,
        ..DemoConfig::default()
    }
}

fn messages(events: &[DemoEvent]) -> Vec<String> {
    events.iter().map(ToString::to_string).collect()
}

fn counts(s: &DemoSummary) -> [u64; 7] {
    [
        s.requests,
        s.iterations,
        s.retrains,
        s.failed_retrains,
        s.promotions,
        s.rollbacks,
        s.correct_decisions,
    ]
}

#[test]
fn the_in_memory_store_gives_the_timeline_of_sqlite() {
    let dir = tempfile::tempdir().unwrap();

    let sqlite = config(dir.path(), "sqlite");
    let mut on_sqlite = Vec::new();
    let sqlite_summary = afs_demo::run(
        &sqlite,
        |clock| SqliteStore::open(SqliteConfig::new(&sqlite.db_path), clock),
        &mut |e| on_sqlite.push(e.clone()),
    )
    .unwrap();

    let memory = config(dir.path(), "memory");
    let mut in_memory = Vec::new();
    let memory_summary = afs_demo::run(
        &memory,
        |clock| Ok::<_, StoreError>(MemStore::new(clock)),
        &mut |e| in_memory.push(e.clone()),
    )
    .unwrap();

    // Something happened: the comparison would be empty otherwise.
    assert!(sqlite_summary.retrains >= 1, "{:?}", messages(&on_sqlite));
    assert!(
        sqlite_summary.promotions + sqlite_summary.rollbacks >= 1,
        "{:?}",
        messages(&on_sqlite)
    );
    assert_eq!(messages(&in_memory), messages(&on_sqlite));
    assert_eq!(counts(&memory_summary), counts(&sqlite_summary));
    assert_eq!(memory_summary.champions, sqlite_summary.champions);
    assert_eq!(memory_summary.models, sqlite_summary.models);
    // The in-memory run wrote no database.
    assert!(!memory.db_path.exists());
    assert!(sqlite.db_path.exists());
}

#[test]
fn a_store_that_holds_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "used");
    let mut events = 0;
    let err = afs_demo::run(
        &config,
        |clock| {
            let store = MemStore::new(clock);
            store.log(NewUsage::new("q", "r", afs_demo::FIRST_MODEL))?;
            Ok::<_, StoreError>(store)
        },
        &mut |_| events += 1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already holds data"), "{err}");
    assert_eq!(events, 0);
}
