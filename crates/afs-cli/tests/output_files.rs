//! The file-writing rule, with the real binary: a command that writes a file never destroys
//! the database or anything that is not a regular file it may write. It refuses the database
//! and its journals (by identity, whatever the name), other SQLite databases, directories
//! and files the user could not write; it writes into FIFOs and character devices instead of
//! replacing them; and it keeps a symbolic link's meaning.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{good_records, Env};

fn fixture() -> Env {
    let env = Env::new();
    env.import(&good_records(5, "plain"));
    env
}

fn total(env: &Env) -> u64 {
    env.check(&["stats", "--json"], 0).json()["total"]
        .as_u64()
        .unwrap()
}

/// `afs generate --out PATH` is refused with a message naming the reason; nothing at PATH
/// or in the database changed.
fn assert_refused(env: &Env, out: &Path, reason: &str) {
    let before = std::fs::symlink_metadata(out)
        .ok()
        .map(|m| (m.ino(), m.len()));
    let run = env.run(&["generate", "--out", out.to_str().unwrap()]);
    assert_ne!(run.code, 0, "--out {} was accepted: {run:?}", out.display());
    assert!(
        run.stderr.contains(reason),
        "{}: {}",
        out.display(),
        run.stderr
    );
    // SQLite itself removes an empty `-wal` when its last connection closes; any other
    // path must be exactly as it was.
    if !out.to_string_lossy().ends_with("-wal") {
        let after = std::fs::symlink_metadata(out)
            .ok()
            .map(|m| (m.ino(), m.len()));
        assert_eq!(after, before, "{} changed", out.display());
    }
    assert_eq!(total(env), 5, "the database lost records");
}

#[test]
fn the_database_and_its_journals_are_refused_by_any_name() {
    let env = fixture();
    assert_refused(&env, &env.db, "is the database afs is using");
    let hard = env.path("hardlink.jsonl");
    std::fs::hard_link(&env.db, &hard).unwrap();
    assert_refused(&env, &hard, "is the database afs is using");
    let soft = env.path("soft.jsonl");
    std::os::unix::fs::symlink(&env.db, &soft).unwrap();
    assert_refused(&env, &soft, "is the database afs is using");
    let mut wal = env.db.clone().into_os_string();
    wal.push("-wal");
    assert_refused(&env, Path::new(&wal), "database afs is using");
    // Another SQLite database (a copy of this one) is never replaced either.
    let copy = env.path("copy.db");
    std::fs::copy(&env.db, &copy).unwrap();
    assert_refused(&env, &copy, "is an SQLite database");
    assert_refused(&env, env.dir.path(), "is a directory");
}

#[test]
fn a_symbolic_link_keeps_its_meaning() {
    let env = fixture();
    std::fs::create_dir(env.path("data")).unwrap();
    std::os::unix::fs::symlink("data/train.jsonl", env.path("latest.jsonl")).unwrap();
    env.check(&["generate", "--out", "latest.jsonl"], 0);
    let link = std::fs::symlink_metadata(env.path("latest.jsonl")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let written = std::fs::read_to_string(env.path("data/train.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 5);
    assert!(env.path("data/train.jsonl.manifest.json").exists());
}

#[test]
fn a_fifo_is_written_into_and_stays_a_fifo() {
    let env = fixture();
    let fifo = env.path("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let run = env.check(&["generate", "--out", "pipe"], 0);
    let text = reader.join().unwrap();
    assert_eq!(text.lines().count(), 5, "{run:?}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!run.stdout.contains("manifest:"), "{}", run.stdout);
}

#[test]
fn a_character_device_stays_a_device() {
    let env = fixture();
    env.check(&["generate", "--out", "/dev/null"], 0);
    let null = std::fs::symlink_metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device(), "/dev/null was replaced");
}

/// Renaming over a file needs only the directory's write permission; afs also asks for the
/// file's. As root the test runs afs as `nobody` (setpriv) in a directory `nobody` owns, on
/// a root-owned file; otherwise on a read-only file of the test's own user.
#[test]
fn a_file_the_user_could_not_write_is_refused() {
    let env = fixture();
    let victim = env.path("victim.jsonl");
    std::fs::write(&victim, "precious\n").unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let run = if root {
        const NOBODY: u32 = 65534;
        for entry in std::fs::read_dir(env.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path != victim {
                std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        std::os::unix::fs::chown(env.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("afs"))
            .args(["--db"])
            .arg(&env.db)
            .args(["generate", "--out", "victim.jsonl"])
            .env("AFS_NOW", common::NOW)
            .env_remove("AFS_DB")
            .env_remove("AFS_CONFIG")
            .current_dir(env.dir.path());
        let output = cmd.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    } else {
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o444)).unwrap();
        let run = env.run(&["generate", "--out", "victim.jsonl"]);
        (Some(run.code), run.stderr)
    };
    assert_ne!(run.0, Some(0), "{run:?}");
    assert!(run.1.contains("you may not write this file"), "{}", run.1);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().uid(),
        if root {
            0
        } else {
            std::fs::metadata(env.dir.path()).unwrap().uid()
        }
    );
}

#[test]
fn an_archive_never_replaces_anything() {
    let env = fixture();
    let existing = env.write("old.jsonl", "keep me\n");
    let run = env.run(&[
        "prune",
        "--older-than",
        "0.01",
        "--archive",
        existing.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me\n");
    let run = env.run(&[
        "prune",
        "--older-than",
        "0.01",
        "--archive",
        env.db.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(total(&env), 5);
}
