//! `afs demo`: weeks of simulated production traffic through the whole loop, in seconds,
//! printed as a timeline and a final table, leaving a real database behind.

use std::path::{Path, PathBuf};

use afs_demo::DemoConfig;
use anyhow::Context;
use clap::parser::ValueSource;
use clap::CommandFactory;

use crate::cli::{Cli, DemoArgs, GlobalArgs};
use crate::output::{print_json, print_line};

/// Runs the demo and prints its timeline, its table and how to look further.
pub(crate) fn run(global: &GlobalArgs, args: &DemoArgs) -> anyhow::Result<()> {
    let given = db_given_on_command_line();
    let (db_path, output_dir) = if given && crate::any_store::is_server(&global.db) {
        // A server database has no directory beside it: the run directories go to a
        // directory of their own that outlives the process.
        let dir = tempfile::Builder::new()
            .prefix("afs-demo-")
            .tempdir()
            .context("cannot create a temporary directory for the demo's runs")?
            .keep();
        (global.db.clone(), dir.join("runs"))
    } else if given {
        (global.db.clone(), output_dir_next_to(&global.db))
    } else {
        // A directory of its own that outlives the process: the database is the point.
        let dir = tempfile::Builder::new()
            .prefix("afs-demo-")
            .tempdir()
            .context("cannot create a temporary directory for the demo")?
            .keep();
        (dir.join("afs-demo.db"), dir.join("runs"))
    };
    // The demo reads no configuration: the store's defaults.
    let store_config = crate::any_store::StoreConfig::defaults_for(&db_path);
    let config = DemoConfig {
        // Shown in the summary: a URL without its password.
        db_path: crate::any_store::shown_db(&db_path).into(),
        output_dir,
        seed: args.seed,
        days: args.days.unwrap_or(args.weeks * 7),
        requests_per_hour: args.requests_per_hour,
        ..DemoConfig::default()
    };
    tracing::info!(?config, "running the demo");

    // The demo runs to its end even when stdout is closed; the first write error is kept.
    let mut write_error: Option<anyhow::Error> = None;
    let open = |clock| crate::any_store::AnyStore::open(store_config, clock);
    let summary = afs_demo::run(&config, open, &mut |event| {
        if write_error.is_some() {
            return;
        }
        let written = if global.json {
            print_json(&event.to_json())
        } else {
            print_line(&event.to_string())
        };
        write_error = written.err();
    })?;
    if let Some(err) = write_error {
        return Err(err);
    }

    if global.json {
        return print_json(&summary.to_json());
    }
    let db = shell_word(&summary.db_path.display().to_string());
    let mut text = String::from("\n");
    text.push_str(&summary.lines().join("\n"));
    text.push_str("\n\ntry:\n");
    for command in [
        "status",
        "runs",
        "ab history",
        "stats --by-model",
        "ab status",
    ] {
        text.push_str(&format!("  afs --db {db} {command}\n"));
    }
    print_line(text.trim_end())
}

/// Whether `--db` was given on the command line (not by `AFS_DB` or its default): the demo
/// only writes where it was told to on the command line.
fn db_given_on_command_line() -> bool {
    // The arguments were parsed once already, so this parse succeeds too; it is done again
    // because the derived arguments do not say where a value came from.
    let Ok(matches) = Cli::command().try_get_matches_from(std::env::args_os()) else {
        return false;
    };
    let from_command_line = |m: &clap::ArgMatches| {
        m.try_get_raw("db").is_ok() && m.value_source("db") == Some(ValueSource::CommandLine)
    };
    from_command_line(&matches)
        || matches
            .subcommand_matches("demo")
            .is_some_and(from_command_line)
}

/// Where the run directories of a demo database go: `demo.db` → `demo-runs/` beside it.
fn output_dir_next_to(db: &Path) -> PathBuf {
    let stem = db
        .file_stem()
        .map_or_else(|| "afs-demo".into(), |s| s.to_string_lossy().into_owned());
    db.with_file_name(format!("{stem}-runs"))
}

/// `text` quoted for a POSIX shell when it needs to be.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dirs_and_shell_words() {
        assert_eq!(
            output_dir_next_to(Path::new("/tmp/x/demo.db")),
            Path::new("/tmp/x/demo-runs")
        );
        assert_eq!(
            output_dir_next_to(Path::new("demo")),
            Path::new("demo-runs")
        );
        assert_eq!(
            shell_word("/tmp/afs-demo-1/afs-demo.db"),
            "/tmp/afs-demo-1/afs-demo.db"
        );
        assert_eq!(shell_word("/tmp/my demo.db"), "'/tmp/my demo.db'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
