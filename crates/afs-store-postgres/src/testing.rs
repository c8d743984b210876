//! Throwaway databases for tests (cargo feature `testing`): this crate's conformance tests
//! and the CLI's tests on PostgreSQL.
//!
//! The cluster comes from the environment: `AFS_TEST_PG_URL` names a server and a database
//! its user may connect to and create databases from (`cargo xtask ci` starts a private
//! cluster and sets it). [`TestDatabase::create`] makes a new, empty database on that server
//! and drops it (forcing out its connections) when dropped.

use std::sync::atomic::{AtomicU64, Ordering};

use postgres::NoTls;

/// The variable naming the test cluster.
pub const URL_ENV: &str = "AFS_TEST_PG_URL";

/// The test cluster's URL, or `None` when none is configured. Panics when none is configured
/// under CI (`CI` set): there the PostgreSQL tests may never be skipped.
pub fn cluster_url() -> Option<String> {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{URL_ENV} is not set under CI: the PostgreSQL tests may not be skipped \
                 (`cargo xtask ci` starts a throwaway cluster and sets it)"
            );
            eprintln!(
                "skipping a PostgreSQL test: {URL_ENV} is not set (`cargo xtask ci` sets it)"
            );
            None
        }
    }
}

/// A new, empty database on the test cluster, dropped on drop.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL: the cluster's URL with the database name replaced.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a database with a unique name on the cluster at `cluster_url`. Panics on
    /// failure (a test fixture).
    pub fn create(cluster_url: &str) -> TestDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "afs_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let mut admin = postgres::Client::connect(cluster_url, NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster {cluster_url}: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestDatabase {
            url: with_database(cluster_url, &name),
            name,
            admin_url: cluster_url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database (the path after the authority) replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], &rest[q..]),
        None => (rest, ""),
    };
    let authority = match before_query.find('/') {
        Some(slash) => &before_query[..slash],
        None => before_query,
    };
    format!("{}{authority}/{name}{query}", &url[..scheme_end])
}
