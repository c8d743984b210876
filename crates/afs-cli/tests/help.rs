//! Snapshots of `afs --help` and every command's `--help`: the help text is part of the
//! interface, so a change to it shows up in review.

use assert_cmd::Command;

fn help(args: &[&str]) -> String {
    let output = Command::cargo_bin("afs")
        .unwrap()
        .args(args)
        // The help shows the value of AFS_DB when it is set, and wraps to the terminal.
        .env_remove("AFS_DB")
        .env("COLUMNS", "100")
        .env("LINES", "50")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "afs {args:?}: {output:?}");
    assert!(output.stderr.is_empty(), "afs {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn root_help() {
    let text = help(&["--help"]);
    assert!(text.contains("Exit codes:"), "{text}");
    insta::assert_snapshot!("afs", text);
}

#[test]
fn command_help() {
    for command in [
        "log", "import", "feedback", "records", "stats", "dedupe", "prune", "forget",
    ] {
        let text = help(&[command, "--help"]);
        assert!(
            text.contains("Examples:"),
            "afs {command} --help has no examples:\n{text}"
        );
        insta::assert_snapshot!(format!("afs-{command}"), text);
    }
}

#[test]
fn short_help_is_shorter() {
    for command in ["import", "records"] {
        let short = help(&[command, "-h"]);
        let long = help(&[command, "--help"]);
        assert!(
            short.len() < long.len(),
            "afs {command} -h is not shorter than --help"
        );
        assert!(short.contains("Examples:"), "{short}");
    }
}
