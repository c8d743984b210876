//! Opening a PostgreSQL database: what is refused, and that a refusal changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_store::{ErrorKind, StatsWindow, StoreError, SystemClock, UsageStore};
use afs_store_postgres::testing::{cluster_url, with_database, TestDatabase};
use afs_store_postgres::{PgConfig, PgStore, SCHEMA_VERSION};
use postgres::NoTls;

fn open(url: &str) -> afs_store::Result<PgStore> {
    PgStore::open(PgConfig::new(url), Arc::new(SystemClock))
}

/// The first column of every row of `sql`, as text.
fn strings(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

fn tables(url: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, NoTls).unwrap();
    strings(
        &mut client,
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
    )
}

#[test]
fn a_server_that_is_not_there_is_unavailable_and_says_where() {
    // Port 1 on loopback: nothing listens there.
    let started = Instant::now();
    let mut config = PgConfig::new("postgres://afs:s3cret@127.0.0.1:1/afs");
    config.connect_timeout = Duration::from_secs(3);
    let err = PgStore::open(config, Arc::new(SystemClock)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret"), "the password leaked: {text}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_url_that_does_not_parse_is_invalid_input() {
    let err = open("postgres://afs@127.0.0.1:notaport/afs").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_missing_database_and_an_unknown_user_are_refused_by_name() {
    let Some(cluster) = cluster_url() else { return };
    let err = open(&with_database(&cluster, "afs_no_such_database")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let database = TestDatabase::create(&cluster);
    let stranger = database
        .url
        .replacen("postgres://postgres@", "postgres://afs_no_such_role@", 1);
    assert_ne!(
        stranger, database.url,
        "the cluster URL names user postgres"
    );
    let err = open(&stranger).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    assert!(err.to_string().contains("cannot log in"), "{err}");
    assert!(
        tables(&database.url).is_empty(),
        "a refused open created tables"
    );
}

#[test]
fn another_applications_database_is_refused_and_left_unchanged() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1);")
        .unwrap();
    let err = open(&database.url).unwrap_err();
    assert!(matches!(err, StoreError::NotAfsDatabase { .. }), "{err}");
    assert!(err.to_string().contains("orders"), "{err}");
    assert_eq!(tables(&database.url), vec!["orders".to_string()]);
}

#[test]
fn a_newer_schema_is_refused_and_left_unchanged() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    drop(open(&database.url).unwrap());
    let before = tables(&database.url);
    assert!(before.contains(&"afs_usage".to_string()), "{before:?}");
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let newer = (SCHEMA_VERSION + 1).to_string();
    client
        .execute(
            "UPDATE afs_meta SET value = $1 WHERE key = 'schema_version'",
            &[&newer],
        )
        .unwrap();
    let err = open(&database.url).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    let version = schema_version(&mut client);
    assert_eq!(version, newer);
    assert_eq!(tables(&database.url), before);
}

#[test]
fn without_create_an_empty_database_is_refused_and_left_empty() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let mut config = PgConfig::new(&database.url);
    config.create_schema = false;
    let err = PgStore::open(config, Arc::new(SystemClock)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "afs schema",
                ..
            }
        ),
        "{err}"
    );
    assert!(tables(&database.url).is_empty());
}

#[test]
fn processes_opening_a_new_database_at_once_create_it_once() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = database.url.clone();
            std::thread::spawn(move || open(&url).map(|_| ()))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap().unwrap();
    }
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let version = schema_version(&mut client);
    assert_eq!(version, SCHEMA_VERSION.to_string());
}

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// The server backends of connections that name themselves `application_name`.
fn backends(admin: &mut postgres::Client, application_name: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&application_name],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn a_store_reads_on_the_connection_that_checked_its_schema() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    open(&database.url).unwrap();
    let name = format!("afs_open_test_{}", std::process::id());
    let store = open(&with_param(
        &database.url,
        &format!("application_name={name}"),
    ))
    .unwrap();
    let mut admin = postgres::Client::connect(&database.url, NoTls).unwrap();
    let after_open = backends(&mut admin, &name);
    assert_eq!(
        after_open.len(),
        1,
        "open keeps the connection it checked on"
    );
    store.stats(&StatsWindow::default()).unwrap();
    assert_eq!(
        backends(&mut admin, &name),
        after_open,
        "a first read on the same backend, none started for it"
    );
}

#[test]
fn an_up_to_date_database_opens_while_another_process_holds_the_migration_lock() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    open(&database.url).unwrap();
    // The key migrations.rs takes (MIGRATION_LOCK), held by another session as a migrating
    // process would hold it.
    let mut holder = postgres::Client::connect(&database.url, NoTls).unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x0afd_0001_i64])
        .unwrap();
    // Were the lock waited for, this open would fail after 3 s instead of hanging.
    let url = with_param(&database.url, "options=-c%20lock_timeout%3D3000");
    let started = Instant::now();
    let store = open(&url).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    store.stats(&StatsWindow::default()).unwrap();
    // A database that needs migrating still waits for the lock (here: until the timeout).
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    client
        .execute(
            "UPDATE afs_meta SET value = '2' WHERE key = 'schema_version'",
            &[],
        )
        .unwrap();
    let err = open(&url).unwrap_err();
    assert!(err.to_string().contains("migrating"), "{err}");
}

/// A version-1 database (made by opening a new one, dropping the column version 2 added and
/// setting the version back) keeps its records and takes conversations after migrating.
#[test]
fn a_version_1_database_migrates_to_keep_conversations() {
    use afs_store::{Message, NewUsage, Role, UsageStore};
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let old_id = open(&database.url)
        .unwrap()
        .log(NewUsage::new("q", "r", "m"))
        .unwrap();
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    client
        .batch_execute(&format!(
            "{UNDO_VERSION_5} {UNDO_VERSION_4} {UNDO_VERSION_3} {UNDO_VERSION_2}"
        ))
        .unwrap();
    assert_eq!(schema_version(&mut client), "1");
    let store = open(&database.url).unwrap();
    let version = schema_version(&mut client);
    assert_eq!(version, SCHEMA_VERSION.to_string());
    assert_eq!(store.get(&old_id).unwrap().messages, None);
    let turns = vec![
        Message::new(Role::System, "s"),
        Message::new(Role::User, "q2"),
        Message::new(Role::Assistant, "r2"),
    ];
    let id = store
        .log(NewUsage::conversation(turns.clone(), "m"))
        .unwrap();
    assert_eq!(store.get(&id).unwrap().messages, Some(turns));
    assert_eq!(store.stats(&Default::default()).unwrap().total, 2);
}

/// Takes a database of schema version 3 back to version 2.
const UNDO_VERSION_3: &str = "
    SELECT afs_usage_fold_pending();
    DROP TRIGGER afs_usage_pending_insert ON afs_usage;
    DROP TRIGGER afs_usage_fold_before_delete ON afs_usage;
    DROP TRIGGER afs_usage_rollup_insert ON afs_usage;
    CREATE TRIGGER afs_usage_rollup_insert AFTER INSERT ON afs_usage
        REFERENCING NEW TABLE AS afs_usage_new
        FOR EACH STATEMENT EXECUTE FUNCTION afs_usage_rollup_on_insert();
    DROP FUNCTION afs_usage_pending_on_insert();
    DROP FUNCTION afs_usage_fold_before_delete();
    DROP FUNCTION afs_usage_fold_pending();
    DROP TABLE afs_usage_pending;
    UPDATE afs_meta SET value = '2' WHERE key = 'schema_version';";

/// Takes a database of schema version 2 back to version 1.
const UNDO_VERSION_2: &str = "
    ALTER TABLE afs_usage DROP COLUMN messages;
    UPDATE afs_meta SET value = '1' WHERE key = 'schema_version';";

#[test]
fn a_version_2_database_migrates_and_its_logging_defers_rollups_exactly() {
    use afs_store::{NewUsage, StatsWindow, UsageStore};
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = open(&database.url).unwrap();
    store.log(NewUsage::new("q", "r", "m")).unwrap();
    drop(store);
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    client
        .batch_execute(&format!(
            "{UNDO_VERSION_5} {UNDO_VERSION_4} {UNDO_VERSION_3}"
        ))
        .unwrap();
    let store = open(&database.url).unwrap();
    assert_eq!(schema_version(&mut client), SCHEMA_VERSION.to_string());
    // Logged one call at a time: the contributions wait in the pending table (nothing has
    // folded them yet: the logging connection folds every half second at most).
    let mut record = NewUsage::new("q2", "r2", "m");
    record.quality_score = Some(0.5);
    store.log(record).unwrap();
    let pending: i64 = client
        .query_one(
            "SELECT coalesce(sum(n), 0)::int8 FROM afs_usage_pending",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "the new record's contribution is pending");
    let all = StatsWindow::default();
    let stats = store.stats(&all).unwrap();
    assert_eq!((stats.total, stats.n_quality), (2, 1));
    let folded: i64 = client
        .query_one("SELECT afs_usage_fold_pending()", &[])
        .unwrap()
        .get(0);
    assert_eq!(folded, 1);
    assert_eq!(
        store.stats(&all).unwrap(),
        stats,
        "folding changes no figure"
    );
}

/// Undoes migration 5: the insert trigger's body as version 1 wrote it (the records summed
/// again for the hours), the per-unit triggers always enabled, and the functions 5 added
/// dropped. (The pending trigger keeps its body: 5 wrote the same statement from the shared
/// text.)
const UNDO_VERSION_5: &str = "
    DO $do$
    DECLARE
        inserted text := 'SELECT ts_us, model, 1::bigint AS s, user_feedback, quality_score,
            latency_ms, token_count FROM afs_usage_new';
    BEGIN
        EXECUTE format('CREATE OR REPLACE FUNCTION afs_usage_rollup_on_insert()
            RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN %s; %s; RETURN NULL; END $fn$',
            afs_usage_rollup_sql('afs_usage_minute', 60000000, inserted),
            afs_usage_rollup_sql('afs_usage_hour', 3600000000, inserted));
    END
    $do$;
    ALTER TABLE afs_usage ENABLE TRIGGER afs_units_insert;
    ALTER TABLE afs_usage ENABLE TRIGGER afs_units_update;
    DROP FUNCTION afs_units_follow_live();
    DROP FUNCTION afs_usage_insert_rollup_sql(text);
    DROP FUNCTION afs_usage_rollup_lists();
    DROP FUNCTION afs_usage_minute_sums_sql(text);
    UPDATE afs_meta SET value = '4' WHERE key = 'schema_version';";

/// Whether the per-unit insert and update triggers are enabled, in that order.
fn unit_triggers_enabled(client: &mut postgres::Client) -> Vec<String> {
    strings(
        client,
        "SELECT tgname || ' ' || (tgenabled <> 'D')::text FROM pg_trigger \
         WHERE tgrelid = 'afs_usage'::regclass \
             AND tgname IN ('afs_units_insert', 'afs_units_update') ORDER BY tgname",
    )
}

/// The per-unit triggers of inserts and updates are enabled exactly while an experiment
/// runs, and a version-4 database (where they always were) migrates to that: enabled if an
/// experiment runs, disabled if none does. Records logged meanwhile count exactly while
/// the experiment runs and not after it ended.
#[test]
fn the_per_unit_triggers_follow_the_running_experiment() {
    use afs_store::{EventNote, ExperimentStore, NewModelVersion, NewUsage};
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = open(&database.url).unwrap();
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let (off, on) = (
        ["afs_units_insert false", "afs_units_update false"],
        ["afs_units_insert true", "afs_units_update true"],
    );
    assert_eq!(unit_triggers_enabled(&mut client), off);
    let note = EventNote::reason("test");
    store
        .set_champion(&NewModelVersion::new("v1", "/m1"), &note)
        .unwrap();
    let logged = |store: &PgStore, unit: &str| {
        let mut record = NewUsage::new("q", "r", "v1");
        record.unit_id = Some(unit.to_string());
        record.quality_score = Some(0.5);
        store.log(record).unwrap();
    };
    logged(&store, "before");
    let experiment = store
        .deploy_challenger(&NewModelVersion::new("v2", "/m2"), 0.5, 7, &note)
        .unwrap();
    assert_eq!(unit_triggers_enabled(&mut client), on);
    logged(&store, "during");
    let units = |store: &PgStore| -> u64 {
        store
            .unit_stats(experiment.id, None)
            .unwrap()
            .iter()
            .map(|cohort| cohort.units)
            .sum()
    };
    assert_eq!(units(&store), 1, "the record logged while it ran");

    // Back to version 4 while it runs: migrating keeps the triggers enabled.
    drop(store);
    client.batch_execute(UNDO_VERSION_5).unwrap();
    assert_eq!(unit_triggers_enabled(&mut client), on);
    let store = open(&database.url).unwrap();
    assert_eq!(schema_version(&mut client), SCHEMA_VERSION.to_string());
    assert_eq!(unit_triggers_enabled(&mut client), on);

    store.rollback(experiment.id, &note).unwrap();
    assert_eq!(unit_triggers_enabled(&mut client), off);
    logged(&store, "after");
    assert_eq!(
        units(&store),
        1,
        "an ended experiment's statistics stay as they stood"
    );

    // Back to version 4 with no experiment running: migrating disables them.
    drop(store);
    client.batch_execute(UNDO_VERSION_5).unwrap();
    assert_eq!(unit_triggers_enabled(&mut client), on);
    open(&database.url).unwrap();
    assert_eq!(unit_triggers_enabled(&mut client), off);
}

/// Undoes migration 4: the text keys back to the database's default collation.
const UNDO_VERSION_4: &str = "
    ALTER TABLE afs_usage
        ALTER COLUMN id TYPE text COLLATE \"default\",
        ALTER COLUMN model TYPE text COLLATE \"default\",
        ALTER COLUMN unit_id TYPE text COLLATE \"default\";
    ALTER TABLE afs_usage_minute ALTER COLUMN model TYPE text COLLATE \"default\";
    ALTER TABLE afs_usage_hour ALTER COLUMN model TYPE text COLLATE \"default\";
    ALTER TABLE afs_usage_pending ALTER COLUMN model TYPE text COLLATE \"default\";
    ALTER TABLE afs_experiment_live ALTER COLUMN model TYPE text COLLATE \"default\";
    ALTER TABLE afs_experiment_unit ALTER COLUMN unit_id TYPE text COLLATE \"default\";
    ALTER TABLE afs_experiment_unit_pre ALTER COLUMN unit_id TYPE text COLLATE \"default\";
    UPDATE afs_meta SET value = '3' WHERE key = 'schema_version';";

/// The collation of each text key column migration 4 sets, as `table.column collation`.
fn key_collations(client: &mut postgres::Client) -> Vec<String> {
    strings(
        client,
        "SELECT c.relname || '.' || a.attname || ' ' || coalesce(k.collname, '-') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             LEFT JOIN pg_collation k ON k.oid = a.attcollation \
             WHERE (c.relname, a.attname) IN (('afs_usage', 'id'), ('afs_usage', 'model'), \
                 ('afs_usage', 'unit_id'), ('afs_usage_minute', 'model'), \
                 ('afs_usage_hour', 'model'), ('afs_usage_pending', 'model'), \
                 ('afs_experiment_live', 'model'), ('afs_experiment_unit', 'unit_id'), \
                 ('afs_experiment_unit_pre', 'unit_id')) \
         ORDER BY 1",
    )
}

/// A version-3 database keeps its records, rollups and look-ups after its keys move to
/// byte order.
#[test]
fn a_version_3_database_migrates_its_keys_to_byte_order() {
    use afs_store::{NewUsage, StatsWindow, UsageStore};
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    let store = open(&database.url).unwrap();
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    let collations = key_collations(&mut client);
    assert_eq!(collations.len(), 9, "{collations:?}");
    assert!(
        collations.iter().all(|c| c.ends_with(" C")),
        "{collations:?}"
    );
    let mut ids = Vec::new();
    for (i, unit) in ["b", "B", "a", "é", "A"].iter().enumerate() {
        let mut record = NewUsage::new("q", "r", if i % 2 == 0 { "m-a" } else { "m-B" });
        record.unit_id = Some(unit.to_string());
        record.quality_score = Some(0.1 * i as f64);
        ids.push(store.log_batch(vec![record]).unwrap().remove(0));
    }
    let before = store.stats_by_model(&StatsWindow::default()).unwrap();
    drop(store);
    client
        .batch_execute(&format!("{UNDO_VERSION_5} {UNDO_VERSION_4}"))
        .unwrap();
    assert!(key_collations(&mut client)
        .iter()
        .all(|c| c.ends_with(" default")));
    let store = open(&database.url).unwrap();
    assert_eq!(schema_version(&mut client), SCHEMA_VERSION.to_string());
    assert!(key_collations(&mut client)
        .iter()
        .all(|c| c.ends_with(" C")));
    assert_eq!(
        store.stats_by_model(&StatsWindow::default()).unwrap(),
        before
    );
    for id in &ids {
        assert_eq!(&store.get(id).unwrap().id, id);
    }
    let units = strings(
        &mut client,
        "SELECT unit_id FROM afs_usage ORDER BY unit_id",
    );
    assert_eq!(units, ["A", "B", "a", "b", "é"], "byte order");
}

/// The insert and update triggers' functions hold their upserts as static SQL (planned once
/// per session), one per rollup table, though the schema writes them from one text.
#[test]
fn the_rollup_triggers_hold_one_static_upsert_per_table() {
    let Some(cluster) = cluster_url() else { return };
    let database = TestDatabase::create(&cluster);
    open(&database.url).unwrap();
    let mut client = postgres::Client::connect(&database.url, NoTls).unwrap();
    for function in ["afs_usage_rollup_on_insert", "afs_usage_rollup_on_update"] {
        let body: String = client
            .query_one(
                "SELECT prosrc FROM pg_proc WHERE proname = $1",
                &[&function],
            )
            .unwrap()
            .get(0);
        assert!(!body.contains("EXECUTE"), "{function}: {body}");
        for table in ["afs_usage_minute", "afs_usage_hour"] {
            assert_eq!(
                body.matches(&format!("INSERT INTO {table} AS t")).count(),
                1,
                "{function}: {body}"
            );
        }
    }
}

/// The schema version a database says it is at.
fn schema_version(client: &mut postgres::Client) -> String {
    client
        .query_one(
            "SELECT value FROM afs_meta WHERE key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0)
}
