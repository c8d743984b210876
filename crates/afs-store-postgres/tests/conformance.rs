//! The store conformance suite (`afs_store::conformance`, feature `testing`) against the
//! PostgreSQL store: a fresh database on the test cluster (`AFS_TEST_PG_URL`) per check,
//! other handles opened on the same database, and the two-process checks with this test
//! binary re-run as the child. Without a cluster the tests say so and pass, except under CI,
//! where they fail: there the PostgreSQL suite may never be skipped.

use std::process::Command;
use std::sync::Arc;

use afs_store::conformance::{self, Factory, Instance, TestStore};
use afs_store::{ManualClock, SystemClock};
use afs_store_postgres::testing::{cluster_url, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore};

/// The PostgreSQL store's factory: a new database on the cluster holding afs's schema (a copy
/// of the cluster's template of it), dropped with the instance.
struct Postgres {
    cluster: String,
}

impl Factory for Postgres {
    fn create(&self, clock: Arc<ManualClock>) -> Instance {
        let database = TestDatabase::with_schema(&self.cluster);
        let url = database.url.clone();
        let store = PgStore::open(PgConfig::new(&url), clock.clone()).unwrap();
        let reopen = url.clone();
        Instance {
            store: Box::new(store),
            open: Some(Box::new(move || {
                let store = PgStore::open(PgConfig::new(&reopen), clock.clone()).unwrap();
                Box::new(store) as Box<dyn TestStore>
            })),
            locator: Some(url),
            guard: Box::new(database),
        }
    }
}

/// Narrows the suite to the checks whose name contains this text (while developing).
const FILTER_ENV: &str = "AFS_CONFORMANCE_FILTER";

#[test]
fn postgres_passes_the_conformance_suite() {
    let Some(cluster) = cluster_url() else { return };
    let factory = Postgres { cluster };
    match std::env::var(FILTER_ENV) {
        Ok(filter) if !filter.is_empty() => {
            for (name, check) in conformance::checks() {
                if name.contains(&filter) {
                    println!("conformance {name} ...");
                    check(&factory);
                }
            }
        }
        _ => conformance::run_all(&factory),
    }
}

/// The environment variables that make [`conformance_child`] act.
const LOCATOR_ENV: &str = "AFS_STORE_CONFORMANCE_LOCATOR";
const ROLE_ENV: &str = "AFS_STORE_CONFORMANCE_ROLE";

#[test]
fn postgres_passes_the_two_process_checks() {
    let Some(cluster) = cluster_url() else { return };
    let exe = std::env::current_exe().unwrap();
    conformance::two_processes(&Postgres { cluster }, &|locator, role| {
        let mut command = Command::new(&exe);
        command
            .args([
                "--exact",
                "conformance_child",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(LOCATOR_ENV, locator)
            .env(ROLE_ENV, role);
        command
    });
}

/// The child process of [`postgres_passes_the_two_process_checks`] (this binary re-run with
/// `--exact conformance_child`); without its environment variables it returns at once.
#[test]
fn conformance_child() {
    let (Ok(locator), Ok(role)) = (std::env::var(LOCATOR_ENV), std::env::var(ROLE_ENV)) else {
        return;
    };
    conformance::child_main(&locator, &role, &|url| {
        Box::new(PgStore::open(PgConfig::new(url), Arc::new(SystemClock)).unwrap())
    });
}

/// `afs migrate`'s copy (PostgreSQL → PostgreSQL) keeps a judge's own state.
#[test]
fn restore_keeps_a_judges_own_state() {
    let Some(cluster) = cluster_url() else { return };
    let clock = Arc::new(ManualClock::new(
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    let (a, b) = (
        TestDatabase::create(&cluster),
        TestDatabase::create(&cluster),
    );
    let source = PgStore::open(PgConfig::new(&a.url), clock.clone()).unwrap();
    let dest = PgStore::open(PgConfig::new(&b.url), clock).unwrap();
    conformance::restore_keeps_sequential_states(&source, &dest);
}
