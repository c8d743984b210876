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
