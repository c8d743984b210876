//! Source tidiness rules: every Rust module opens with a one-line `//!` doc saying what it is for.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The outcome of [`check_module_docs`].
#[derive(Debug)]
pub struct ModuleDocReport {
    /// How many `.rs` files were looked at, so a caller can tell "all good" from "found none".
    pub n_files: usize,
    /// Files (relative to the root, sorted) whose first non-blank line is not a `//!` line.
    pub missing: Vec<PathBuf>,
}

/// Whether a source file opens with a module doc: its first non-blank line starts with `//!`.
pub fn has_module_doc(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.trim_start().starts_with("//!"))
}

/// Checks every `.rs` file under `crates/*/src`, `xtask/src` and `tests/src` below `root`.
///
/// Integration tests and benches are not required to carry a module doc.
pub fn check_module_docs(root: &Path) -> Result<ModuleDocReport> {
    let mut src_dirs = vec![root.join("xtask/src"), root.join("tests/src")];
    let crates_dir = root.join("crates");
    let entries = fs::read_dir(&crates_dir)
        .with_context(|| format!("cannot list {}", crates_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", crates_dir.display()))?;
        src_dirs.push(entry.path().join("src"));
    }

    let mut files = Vec::new();
    for dir in src_dirs.iter().filter(|dir| dir.is_dir()) {
        collect_rs_files(dir, &mut files)?;
    }
    files.sort();

    let mut missing = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !has_module_doc(&text) {
            missing.push(file.strip_prefix(root).unwrap_or(file).to_path_buf());
        }
    }
    Ok(ModuleDocReport {
        n_files: files.len(),
        missing,
    })
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if file_type.is_dir() {
            collect_rs_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: bool) {
        assert_eq!(has_module_doc(text), expected, "{text:?}");
    }

    #[test]
    fn module_doc_detection() {
        check("//! The store.\nuse std::fs;\n", true);
        check("\n\n//! After blank lines.\n", true);
        check("\u{feff}//! After a byte order mark.\n", true);
        check("", false);
        check("\n  \n", false);
        check("use std::fs;\n//! Too late.\n", false);
        check("// A plain comment.\n//! Too late.\n", false);
        check("/// An item doc, not a module doc.\nfn f() {}\n", false);
        check("#![forbid(unsafe_code)]\n//! After an attribute.\n", false);
    }

    #[test]
    fn walks_source_dirs_and_lists_offenders() {
        let root = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let files = [
            ("crates/afs-a/src/lib.rs", "//! Fine.\n"),
            ("crates/afs-a/src/sub/deep.rs", "fn no_doc() {}\n"),
            ("crates/afs-a/tests/it.rs", "fn not_checked() {}\n"),
            ("crates/afs-b/src/main.rs", "fn main() {}\n"),
            ("crates/afs-b/src/notes.txt", "not rust\n"),
            ("xtask/src/main.rs", "//! Fine.\n"),
        ];
        for (path, text) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let report = check_module_docs(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();

        assert_eq!(report.n_files, 4);
        assert_eq!(
            report.missing,
            [
                PathBuf::from("crates/afs-a/src/sub/deep.rs"),
                PathBuf::from("crates/afs-b/src/main.rs"),
            ]
        );
    }
}
