//! Snapshots of `afs --help` and every command's `--help`: the help text is part of the
//! interface, so a change to it shows up in review.

use assert_cmd::Command;

fn help(args: &[&str]) -> String {
    let output = Command::cargo_bin("afs")
        .unwrap()
        .args(args)
        // The help shows the values of AFS_DB and AFS_CONFIG when they are set, and wraps to
        // the terminal.
        .env_remove("AFS_DB")
        .env_remove("AFS_CONFIG")
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
        "log",
        "import",
        "feedback",
        "records",
        "stats",
        "dedupe",
        "prune",
        "forget",
        "generate",
        "trigger",
        "trigger check",
        "retrain",
        "runs",
        "ab",
        "ab status",
        "ab deploy",
        "ab set-champion",
        "ab route",
        "ab compare",
        "ab check",
        "ab set-weight",
        "ab promote",
        "ab rollback",
        "ab history",
        "loop",
        "loop run",
        "loop once",
        "status",
        "demo",
        "config",
        "config show",
        "config check",
        "serve",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let text = help(&args);
        assert!(
            text.contains("Examples:"),
            "afs {command} --help has no examples:\n{text}"
        );
        insta::assert_snapshot!(format!("afs-{}", command.replace(' ', "-")), text);
    }
}

#[test]
fn retrain_help_documents_the_placeholders_and_environment() {
    let text = help(&["retrain", "--help"]);
    for needle in [
        "{data}",
        "{output_dir}",
        "{run_id}",
        "{run_dir}",
        "{result}",
        "AFS_DATA_PATH",
        "AFS_OUTPUT_DIR",
        "AFS_RUN_ID",
        "AFS_RUN_DIR",
        "AFS_RESULT_PATH",
        "AFS_N_SAMPLES",
        "model_path",
        "--train-cmd 'python train.py --data {data} --out {output_dir}'",
    ] {
        assert!(
            text.contains(needle),
            "afs retrain --help lacks {needle:?}:\n{text}"
        );
    }
    let root = help(&["--help"]);
    for needle in ["5   busy", "AFS_CONFIG", "--config <FILE>"] {
        assert!(
            root.contains(needle),
            "afs --help lacks {needle:?}:\n{root}"
        );
    }
}

#[test]
fn ab_help_documents_exit_codes_and_defaults() {
    let root = help(&["--help"]);
    for needle in [
        "5   busy or conflict",
        "no experiment running",
        "a model name already used",
    ] {
        assert!(
            root.contains(needle),
            "afs --help lacks {needle:?}:\n{root}"
        );
    }
    for (command, needle) in [
        ("promote", "[default: manual promote by operator]"),
        ("rollback", "[default: manual rollback by operator]"),
        ("set-weight", "strictly between 0 and 1"),
        ("deploy", "[config: initial_challenger_traffic"),
    ] {
        let text = help(&["ab", command, "--help"]);
        assert!(
            text.contains(needle),
            "afs ab {command} --help lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn loop_and_config_help_document_signals_and_layers() {
    for (args, needles) in [
        (
            &["loop", "run", "--help"][..],
            &[
                "SIGTERM",
                "iteration in progress",
                "--max-iterations",
                "[config: loop.check_interval",
            ][..],
        ),
        (
            &["loop", "once", "--help"],
            &["--force", "trainer.train_cmd]"],
        ),
        (
            &["demo", "--help"],
            &["--seed", "--weeks", "temporary directory"],
        ),
        (&["config", "check", "--help"], &["exits 3"]),
        (
            &["--help"],
            &["AFS_<SECTION>__<KEY>", "--set <KEY=VALUE>", "afs demo"],
        ),
    ] {
        let text = help(args);
        for needle in needles {
            assert!(
                text.contains(needle),
                "afs {args:?} lacks {needle:?}:\n{text}"
            );
        }
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
