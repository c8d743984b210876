//! [`PgStore`]: opening a database, the pool, and transactions with retries.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use afs_store::{Clock, Result, StoreError, DEFAULT_MAX_FIELD_BYTES};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use crate::error::{db, is_retryable, pool, redact_url};

/// A pooled connection.
pub(crate) type Conn = r2d2::PooledConnection<Manager>;

/// The pool's connection manager: r2d2_postgres's, except that the connection
/// [`PgStore::open`] checked the schema on is the first one handed out. A short command
/// (`afs stats`, `afs ab check`) then starts one server backend instead of two: a backend's
/// start and its first catalog reads cost a few milliseconds of a ~25 ms command.
pub(crate) struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    first: Mutex<Option<postgres::Client>>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = postgres::Client;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<postgres::Client, postgres::Error> {
        let first = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match first {
            Some(client) if !client.is_closed() => Ok(client),
            _ => self.inner.connect(),
        }
    }

    fn is_valid(&self, conn: &mut postgres::Client) -> std::result::Result<(), postgres::Error> {
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut postgres::Client) -> bool {
        self.inner.has_broken(conn)
    }
}

/// How many times a transaction that failed on a serialisation failure or a deadlock is run
/// again before the error is returned.
const RETRIES: u32 = 8;

/// Settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database` (libpq's URL form; key=value strings
    /// are accepted too).
    pub url: String,
    /// Most connections this handle keeps open at once.
    pub pool_size: u32,
    /// How long to wait for the server to accept a connection, and for a free connection of
    /// the pool, before failing with `Unavailable`. The URL's own `connect_timeout` wins.
    pub connect_timeout: Duration,
    /// The most bytes a free-text field may hold (as the SQLite store's setting).
    pub max_field_bytes: usize,
    /// Whether single-record logging commits without waiting for the server to flush its
    /// write-ahead log (`synchronous_commit = off` on the logging connection only): the
    /// counterpart of SQLite's `synchronous = normal`, the default. A logged call is then
    /// safe when `afs` crashes, and the database stays consistent whatever crashes, but a
    /// crash of the server or the machine may lose the last fraction of a second of logged
    /// calls (three times the server's `wal_writer_delay`, 0.6 s by default). Everything else
    /// (batches, imports, feedback, experiments, runs) commits durably. False: logging
    /// commits durably too, as `synchronous = full` does on SQLite.
    pub fast_log_commits: bool,
    /// Whether opening a database without afs's tables creates them (the default); when
    /// false, such a database is refused with `NotFound` (`what` = `"afs schema"`) and left
    /// unchanged.
    pub create_schema: bool,
}

impl PgConfig {
    /// Defaults for `url`: 8 connections, 10 s timeouts, the default field limit.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            fast_log_commits: true,
            create_schema: true,
        }
    }
}

/// The afs store on a PostgreSQL database. Cheap to share (`Arc` it); every method takes a
/// pooled connection for the duration of its transaction.
pub struct PgStore {
    pub(crate) pool: r2d2::Pool<Manager>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: PgConfig,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
    pub(crate) usage: crate::usage::UsageState,
    /// The connection settings, for connections of its own outside the pool (leases).
    pub(crate) pg: postgres::Config,
    /// The end of the last monthly partition this handle made sure of (microseconds).
    pub(crate) partitions_until: std::sync::atomic::AtomicI64,
    /// Runs this handle owns (src/runs.rs).
    pub(crate) runs: crate::runs::RunState,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

impl PgStore {
    /// Connects to the database of `config.url`, creates or migrates afs's tables, and
    /// returns the store. Changes nothing when it fails: see the crate docs for what is
    /// refused.
    pub fn open(config: PgConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let shown = redact_url(&config.url);
        let mut pg = postgres::Config::from_str(&config.url).map_err(|e| {
            StoreError::invalid("db", format!("{shown} is not a valid PostgreSQL URL: {e}"))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("afs");
        }
        let mut first = pg.connect(NoTls).map_err(|e| connect_error(&shown, e))?;
        crate::migrations::migrate(&mut first, &shown, config.create_schema)?;
        let partitions_until = {
            let mut tx = first
                .transaction()
                .map_err(crate::error::dbe("make the log's partitions"))?;
            let until = crate::usage_partitions::ensure(&mut tx, clock.now(), -1, 2)?;
            tx.commit()
                .map_err(crate::error::dbe("make the log's partitions"))?;
            until
        };
        let manager = Manager {
            inner: PostgresConnectionManager::new(pg.clone(), NoTls),
            first: Mutex::new(Some(first)),
        };
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(config.connect_timeout)
            .build_unchecked(manager);
        let usage = crate::usage::UsageState::new();
        Ok(PgStore {
            pool,
            clock,
            config,
            shown,
            usage,
            pg,
            partitions_until: std::sync::atomic::AtomicI64::new(partitions_until),
            runs: crate::runs::RunState::new(),
        })
    }

    /// The database's URL without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// A connection from the pool; `Unavailable` when none comes within the timeout.
    pub(crate) fn conn(&self) -> Result<Conn> {
        self.pool
            .get()
            .map_err(|e| pool(format!("no connection to {}", self.shown), e))
    }

    /// Makes the next months' partitions when the clock comes within a month of the last
    /// one made: one comparison per call otherwise.
    pub(crate) fn maintain_partitions(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let now = self.clock.now();
        let horizon = crate::usage_rows::micros_of(now) + 31 * 24 * 3_600_000_000;
        if horizon < self.partitions_until.load(Ordering::Relaxed) {
            return Ok(());
        }
        let until = self.transaction("make the log's partitions", |tx| {
            crate::usage_partitions::ensure(tx, now, 0, 2)
        })?;
        self.partitions_until.fetch_max(until, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `f` in one transaction that first takes the advisory lock `key` (held to the
    /// end of the transaction: the writers of every process and host that take it are
    /// serialised), and commits it when `f` returns `Ok`; an error rolls everything back.
    /// Not retried: `f` runs once.
    pub(crate) fn locked_transaction<T>(
        &self,
        what: &str,
        key: i64,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .transaction()
            .map_err(|e| db(format!("begin {what}"), e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .map_err(|e| db(format!("{what}: waiting for other writers"), e))?;
        let value = f(&mut tx)?;
        tx.commit().map_err(|e| db(format!("commit {what}"), e))?;
        Ok(value)
    }

    /// A new connection of its own (outside the pool) for single-record logging: with
    /// `synchronous_commit = off` when [`PgConfig::fast_log_commits`].
    pub(crate) fn connect_for_logging(&self) -> Result<postgres::Client> {
        let mut client = self
            .pg
            .connect(NoTls)
            .map_err(|e| connect_error(&self.shown, e))?;
        // This connection's inserts leave their rollup contributions pending (migration 3,
        // `schema/pending.sql`); it folds them itself (`usage_writer`).
        client
            .batch_execute("SET afs.defer_rollups = on")
            .map_err(|e| db("set up the logging connection", e))?;
        if self.config.fast_log_commits {
            client
                .batch_execute("SET synchronous_commit = off")
                .map_err(|e| db("set up the logging connection", e))?;
        }
        Ok(client)
    }

    /// Runs `f` in one read-committed transaction and commits it; `what` names the work in
    /// errors. Retried where that is safe, because nothing was committed: a serialisation
    /// failure or a deadlock (up to a few times), and a connection lost before the commit
    /// was sent (twice more, on a new connection, after 0.1 s and 0.4 s: a server restart or
    /// a dropped connection in the pool). A connection lost during the commit itself is not
    /// retried: whether the commit took effect is unknown, and the error says so
    /// (`Unavailable`).
    pub(crate) fn transaction<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut lost = 0u32;
        loop {
            match self.transaction_on_one_connection(what, &mut f) {
                Err(Attempt::Lost(err)) if lost < LOST_RETRIES => {
                    lost += 1;
                    tracing::warn!(error = %err, attempt = lost, "connection lost during {what}; trying again");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(4u32.pow(lost - 1))));
                }
                Err(Attempt::Lost(err) | Attempt::Failed(err)) => return Err(err),
                Ok(value) => return Ok(value),
            }
        }
    }

    /// One connection's try of [`Self::transaction`].
    fn transaction_on_one_connection<T>(
        &self,
        what: &str,
        f: &mut impl FnMut(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> std::result::Result<T, Attempt> {
        let lost_or_failed = |err: StoreError| match err {
            StoreError::Unavailable { .. } => Attempt::Lost(err),
            other => Attempt::Failed(other),
        };
        let mut conn = self.conn().map_err(lost_or_failed)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = conn
                .transaction()
                .map_err(|e| lost_or_failed(db(what.to_string(), e)))?;
            match f(&mut tx) {
                Ok(value) => match tx.commit() {
                    Ok(()) => return Ok(value),
                    Err(e) if is_retryable(&e) && attempt <= RETRIES => continue,
                    // Not retried, even when the connection was lost: the commit may have
                    // taken effect.
                    Err(e) => {
                        return Err(Attempt::Failed(db(
                            format!("committing {what} (whether it took effect is unknown if the connection was lost)"),
                            e,
                        )))
                    }
                },
                Err(StoreError::Database { context, source }) if attempt <= RETRIES => {
                    let retry = source
                        .downcast_ref::<postgres::Error>()
                        .is_some_and(is_retryable);
                    if !retry {
                        return Err(Attempt::Failed(StoreError::Database { context, source }));
                    }
                    drop(tx);
                    std::thread::sleep(Duration::from_millis(u64::from(attempt) * 2));
                }
                Err(e) => return Err(lost_or_failed(e)),
            }
        }
    }
}

/// How one connection's try of a transaction failed.
enum Attempt {
    /// The connection was lost before anything was committed: safe to try again.
    Lost(StoreError),
    /// Anything else.
    Failed(StoreError),
}

/// How many times a transaction whose connection was lost before its commit is tried again.
const LOST_RETRIES: u32 = 2;

/// The error for a failed first connection: `Unavailable` for a server that is not there,
/// `Database` naming the cause for one that refused us.
fn connect_error(shown: &str, err: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    let context = match err.code() {
        Some(code) if *code == SqlState::INVALID_PASSWORD => {
            format!("cannot log in to {shown}: wrong password")
        }
        Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!("cannot log in to {shown}: the server refused this user")
        }
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => format!(
            "cannot open {shown}: the database does not exist (create it first, e.g. `createdb`)"
        ),
        _ => format!("cannot connect to {shown}"),
    };
    if err.code().is_some() && !crate::error::is_unavailable(&err) {
        StoreError::Database {
            context,
            source: Box::new(err),
        }
    } else {
        StoreError::Unavailable {
            context,
            source: Box::new(err),
        }
    }
}
