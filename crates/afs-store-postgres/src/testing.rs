//! Throwaway databases for tests (cargo feature `testing`): this crate's conformance tests
//! and the CLI's tests on PostgreSQL.
//!
//! The cluster comes from the environment: `AFS_TEST_PG_URL` names a server and a database
//! its user may connect to and create databases from (`cargo xtask ci` starts a private
//! cluster and sets it). [`TestDatabase::create`] makes a new, empty database on that server
//! and drops it (forcing out its connections) when dropped; [`TestDatabase::with_schema`]
//! makes one that already holds afs's schema.

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

/// The advisory-lock key held while a template database is looked for or made.
const TEMPLATE_LOCK: i64 = 0x0afd_7e57;

impl TestDatabase {
    /// Creates a database with a unique name on the cluster at `cluster_url`. Panics on
    /// failure (a test fixture).
    pub fn create(cluster_url: &str) -> TestDatabase {
        Self::copy_of(cluster_url, "template0")
    }

    /// Creates a database already holding afs's schema at this build's version, as opening
    /// an empty one with `create` makes it (its monthly partitions excepted: opening adds
    /// those around the store's clock). It is a copy of a template database made once per
    /// cluster and schema, by the first test that asks; opening the copy migrates nothing,
    /// which saves ~0.13 s of every fresh store (the conformance suite makes ~120).
    pub fn with_schema(cluster_url: &str) -> TestDatabase {
        let template = format!("afs_template_{:016x}", crate::migrations::fingerprint());
        let mut admin = connect(cluster_url);
        admin
            .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
            .unwrap_or_else(|e| panic!("cannot lock the template database: {e}"));
        let exists: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&template],
            )
            .unwrap_or_else(|e| panic!("cannot look for the template database: {e}"))
            .get(0);
        if !exists {
            let mut made = Self::create(cluster_url);
            let mut client = postgres::Client::connect(&made.url, NoTls)
                .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", made.name));
            crate::migrations::migrate(&mut client, &made.name, true)
                .unwrap_or_else(|e| panic!("cannot migrate the template database: {e}"));
            drop(client);
            // Published under its final name only once complete; a renamed database has no
            // session left (the rename waits for the one just closed to end).
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {template}",
                    made.name
                ))
                .unwrap_or_else(|e| panic!("cannot name the template database: {e}"));
            made.name.clear();
        }
        let _ = admin.execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK]);
        Self::copy_of(cluster_url, &template)
    }

    /// A new database with a unique name, a copy of `template`.
    fn copy_of(cluster_url: &str, template: &str) -> TestDatabase {
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
        connect(cluster_url)
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestDatabase {
            url: with_database(cluster_url, &name),
            name,
            admin_url: cluster_url.to_string(),
        }
    }
}

/// An administrative connection to the test cluster.
fn connect(cluster_url: &str) -> postgres::Client {
    postgres::Client::connect(cluster_url, NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster {cluster_url}: {e}"))
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.name.is_empty() {
            // Kept: it became the template.
            return;
        }
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
