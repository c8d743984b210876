//! The store conformance suite (`afs_store::conformance`, feature `testing`) against the
//! SQLite store: a fresh database file in a temp dir per check, other handles opened on the
//! same file, and the two-process checks with this test binary re-run as the child.

use std::process::Command;
use std::sync::Arc;

use afs_store::conformance::{self, Factory, Instance, TestStore};
use afs_store::{ManualClock, SystemClock};
use afs_store_sqlite::{SqliteConfig, SqliteStore};

/// The SQLite store's factory: `afs.db` in a new temp dir, kept until the instance drops.
struct Sqlite;

impl Factory for Sqlite {
    fn create(&self, clock: Arc<ManualClock>) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("afs.db");
        let store = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
        let reopen = path.clone();
        Instance {
            store: Box::new(store),
            open: Some(Box::new(move || {
                let store = SqliteStore::open(SqliteConfig::new(&reopen), clock.clone()).unwrap();
                Box::new(store) as Box<dyn TestStore>
            })),
            locator: Some(path.to_str().expect("a UTF-8 temp path").to_string()),
            guard: Box::new(dir),
        }
    }
}

#[test]
fn sqlite_passes_the_conformance_suite() {
    conformance::run_all(&Sqlite);
}

/// The environment variables that make [`conformance_child`] act.
const LOCATOR_ENV: &str = "AFS_STORE_CONFORMANCE_LOCATOR";
const ROLE_ENV: &str = "AFS_STORE_CONFORMANCE_ROLE";

#[test]
fn sqlite_passes_the_two_process_checks() {
    let exe = std::env::current_exe().unwrap();
    conformance::two_processes(&Sqlite, &|locator, role| {
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

/// The child process of [`sqlite_passes_the_two_process_checks`] (this binary re-run with
/// `--exact conformance_child`); without its environment variables it returns at once.
#[test]
fn conformance_child() {
    let (Ok(locator), Ok(role)) = (std::env::var(LOCATOR_ENV), std::env::var(ROLE_ENV)) else {
        return;
    };
    conformance::child_main(&locator, &role, &|path| {
        Box::new(SqliteStore::open(SqliteConfig::new(path), Arc::new(SystemClock)).unwrap())
    });
}
