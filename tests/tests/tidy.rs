//! Repository rules as tests: crates depend only downward, and every module opens with `//!`.

use afs_tests::workspace_root;
use xtask::layering::{self, LAYERS};
use xtask::tidy;

#[test]
fn crates_depend_only_downward() {
    let manifests = layering::workspace_manifests(&workspace_root()).unwrap();
    // Guard against passing because nothing was read.
    assert!(
        manifests.iter().any(|m| m.name == "afs-store"),
        "crates/afs-store/Cargo.toml was not found under {}",
        workspace_root().display()
    );
    let violations = layering::check(&manifests);
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "layering violations (allowed edges are in xtask/src/layering.rs):\n{}",
        listed.join("\n")
    );
}

#[test]
fn every_crate_under_crates_is_in_the_layer_table() {
    let manifests = layering::workspace_manifests(&workspace_root()).unwrap();
    let unknown: Vec<String> = manifests
        .iter()
        .filter(|m| !LAYERS.iter().any(|(name, _)| *name == m.name))
        .map(|m| format!("{}: {}", m.path.display(), m.name))
        .collect();
    assert!(
        unknown.is_empty(),
        "crates missing from LAYERS in xtask/src/layering.rs:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn every_module_opens_with_a_doc_line() {
    let report = tidy::check_module_docs(&workspace_root()).unwrap();
    assert!(report.n_files > 0, "no .rs files found under crates/*/src");
    let listed: Vec<String> = report
        .missing
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        report.missing.is_empty(),
        "files that do not open with a `//!` module doc line:\n{}",
        listed.join("\n")
    );
}
