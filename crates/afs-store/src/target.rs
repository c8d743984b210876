//! Where a command may write a file: the rule every file-writing command applies to the path
//! it was given (training data, manifests, archives), before it writes anything.
//!
//! A command writes a file under a temporary name and renames it over its target, so that a
//! failed run leaves nothing behind. Renaming replaces whatever the name points to, so the
//! target is checked first:
//! - the store's own files (its database and journals, compared by identity, so another
//!   name or a hard link is caught too) and any other SQLite database are refused;
//! - a symbolic link is followed, and the file it points to is written (the link stays);
//! - a FIFO or a character device (`/dev/stdout`, `/dev/null`) is written into, never
//!   replaced;
//! - a directory, a block device or a socket is refused;
//! - an existing regular file must be one the user could write in place: renaming over a
//!   read-only file of another user needs only the directory's permission, which is not the
//!   file owner's consent.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// How a checked output path is to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file, existing or not, at this path (symbolic links resolved): write a
    /// temporary file in its directory and rename it here.
    File(PathBuf),
    /// A FIFO or character device at this path: open it and write the content into it.
    Stream(PathBuf),
}

impl OutputTarget {
    /// The path to write (links resolved).
    pub fn path(&self) -> &Path {
        match self {
            OutputTarget::File(p) | OutputTarget::Stream(p) => p,
        }
    }
}

/// Links followed before a path is taken to loop.
const MAX_LINKS: usize = 40;

/// Checks `path` against the rule of this module; `field` names the option or argument
/// the path came from (`out`, `archive`) in the error; `protected` lists files that must
/// never be written, e.g. [`UsageStore::files`](crate::UsageStore::files).
pub fn resolve_output(
    path: &Path,
    field: &'static str,
    protected: &[PathBuf],
) -> Result<OutputTarget> {
    let refuse = |p: &Path, why: &str| {
        StoreError::invalid(
            field,
            format!("{}: {why}; afs writes only regular files it may write, FIFOs and character devices", p.display()),
        )
    };
    let io_err = |p: &Path, e: io::Error| StoreError::Io {
        context: format!("inspect {}", p.display()),
        source: e,
    };
    if path.as_os_str().is_empty() {
        return Err(StoreError::invalid(field, "the path is empty"));
    }
    // Follow symbolic links by hand, so a dangling link resolves to the file it names.
    let mut current = path.to_path_buf();
    let mut links = 0;
    let metadata = loop {
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(refuse(path, "too many levels of symbolic links"));
                }
                let next = fs::read_link(&current).map_err(|e| io_err(&current, e))?;
                current = match current.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                };
            }
            Ok(m) => break Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => break None,
            Err(e) => return Err(io_err(&current, e)),
        }
    };
    let protected_ids: Vec<(u64, u64)> = protected
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let Some(metadata) = metadata else {
        // A new file: only the store's files that do not exist yet (a journal) can be named.
        let canonical = canonical_parent_join(&current);
        if protected
            .iter()
            .any(|p| canonical.is_some() && canonical_parent_join(p) == canonical)
        {
            return Err(refuse(
                &current,
                "it is a file of the database afs is using",
            ));
        }
        return Ok(OutputTarget::File(current));
    };
    let kind = metadata.file_type();
    if kind.is_fifo() || kind.is_char_device() {
        return Ok(OutputTarget::Stream(current));
    }
    if kind.is_dir() {
        return Err(refuse(&current, "it is a directory"));
    }
    if !kind.is_file() {
        return Err(refuse(&current, "it is not a regular file"));
    }
    if protected_ids.contains(&(metadata.dev(), metadata.ino())) {
        return Err(refuse(&current, "it is the database afs is using"));
    }
    if is_sqlite(&current) {
        return Err(refuse(
            &current,
            "it is an SQLite database, which afs never replaces",
        ));
    }
    // Opening for writing, without truncating, changes nothing and asks the kernel whether
    // this user may write the file itself.
    if let Err(e) = OpenOptions::new().write(true).open(&current) {
        return Err(if e.kind() == io::ErrorKind::PermissionDenied {
            refuse(
                &current,
                "you may not write this file (permission denied), so afs will not replace it",
            )
        } else {
            io_err(&current, e)
        });
    }
    Ok(OutputTarget::File(current))
}

/// `path` with its directory canonicalised (`None` when the directory does not exist).
fn canonical_parent_join(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(dir).ok()?.join(name))
}

/// Whether the file starts with SQLite's header.
fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == b"SQLite format 3\0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_and_the_protected_file_is_refused_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("afs.db");
        std::fs::write(&db, "x").unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&db, &hard).unwrap();
        let soft = dir.path().join("soft");
        symlink(&db, &soft).unwrap();
        let protected = vec![db.clone(), dir.path().join("afs.db-wal")];
        for path in [&db, &hard, &soft] {
            let err = resolve_output(path, "out", &protected).unwrap_err();
            assert!(err.to_string().contains("database afs is using"), "{err}");
        }
        let err = resolve_output(&dir.path().join("afs.db-wal"), "out", &protected).unwrap_err();
        assert!(err.to_string().contains("database afs is using"), "{err}");

        let elsewhere = dir.path().join("data.jsonl");
        let link = dir.path().join("latest.jsonl");
        symlink("data.jsonl", &link).unwrap();
        assert_eq!(
            resolve_output(&link, "out", &protected).unwrap(),
            OutputTarget::File(elsewhere)
        );
    }

    #[test]
    fn devices_are_streams_and_directories_are_refused() {
        assert_eq!(
            resolve_output(Path::new("/dev/null"), "out", &[]).unwrap(),
            OutputTarget::Stream(PathBuf::from("/dev/null"))
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(resolve_output(dir.path(), "out", &[]).is_err());
    }
}
