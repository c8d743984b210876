//! Helpers for afs end-to-end tests; the tests themselves live in `tests/tests/`.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("afs-tests lives one level below the workspace root")
        .to_path_buf()
}

/// Whether slow suites should run: CI (`cargo xtask ci`) sets `AFS_SLOW_TESTS=1`.
///
/// Any value other than empty or `0` enables them.
pub fn slow_tests_enabled() -> bool {
    std::env::var_os("AFS_SLOW_TESTS").is_some_and(|value| !value.is_empty() && value != "0")
}

/// Settings shared by the end-to-end loop tests (`tests/loop_e2e.rs`) and their child
/// process (`afs-loop-child`): retrain after 100 new quality samples with a 24 h cooldown,
/// thumbs-up datasets of quality >= 0.7 without redaction, at least 10 samples per run,
/// challengers on half the traffic, promotion after 3 h with 100 requests and 20 feedback
/// events per arm, champion `m-v1`; run directories under `output_dir`.
pub fn e2e_loop_config(output_dir: &Path) -> afs_loop::LoopConfig {
    afs_loop::LoopConfig {
        trigger: afs_trigger::TriggerConfig {
            min_new_samples: 100,
            enable_scheduled: false,
            enable_quality_drop: false,
            cooldown_hours: 24.0,
            ..afs_trigger::TriggerConfig::default()
        },
        generator: afs_datagen::GeneratorConfig {
            redact: false,
            ..afs_datagen::GeneratorConfig::default()
        },
        abtest: afs_abtest::AbTestConfig {
            initial_challenger_traffic: 0.5,
            min_duration_hours: 3.0,
            min_samples_per_version: 100,
            min_feedback_per_version: 20,
            ..afs_abtest::AbTestConfig::default()
        },
        retrainer: afs_trigger::RetrainerConfig {
            min_samples_for_retrain: 10,
            output_dir: output_dir.to_path_buf(),
            ..afs_trigger::RetrainerConfig::default()
        },
        initial_champion: Some(afs_store::NewModelVersion::new("m-v1", "/models/m-v1")),
        ..afs_loop::LoopConfig::default()
    }
}

/// The simulated time at which the end-to-end loop tests start.
pub fn e2e_start() -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc
        .with_ymd_and_hms(2026, 4, 6, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// Opens (creating) the SQLite store at `db` with a manual clock standing at `now`.
pub fn open_manual_store(
    db: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> (
    std::sync::Arc<afs_store_sqlite::SqliteStore>,
    std::sync::Arc<afs_store::ManualClock>,
) {
    let clock = std::sync::Arc::new(afs_store::ManualClock::new(now));
    let store =
        afs_store_sqlite::SqliteStore::open(afs_store_sqlite::SqliteConfig::new(db), clock.clone())
            .expect("open the test database");
    (std::sync::Arc::new(store), clock)
}
