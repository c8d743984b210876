//! `afs`: the command-line tool for operators of the afs usage log and its experiments.
//!
//! This is the only crate that parses arguments, reads the environment and the config file,
//! prints and sets exit codes; the work itself is done by `afs-store`, `afs-datagen`,
//! `afs-trigger` and `afs-abtest`.

mod any_store;
mod cli;
mod commands;
mod config;
mod domain_json;
mod exit;
mod interrupt;
mod output;
mod record_json;
#[cfg(test)]
mod record_strategies;
mod serve;
mod store_open;
mod time_arg;
mod trainer;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The demo's timeline already tells of every failure it simulates; its warnings would
    // only interleave with it.
    let quiet = matches!(cli.command, cli::Command::Demo(_));
    init_tracing(cli.global.verbose, quiet);
    match commands::run(&cli) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(err) if exit::is_stdout_closed(&err) => ExitCode::from(exit::SUCCESS),
        Err(err) if exit::is_silent(&err) => ExitCode::from(exit::classify(&err).0),
        Err(err) => ExitCode::from(report_error(&err, cli.global.json)),
    }
}

/// Logs go to stderr: RUST_LOG when set, otherwise a level chosen by the `-v` count (errors
/// only without `-v` when `quiet`).
fn init_tracing(verbose: u8, quiet: bool) {
    let default_level = match verbose {
        0 if quiet => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|err| {
            eprintln!("warning: ignoring invalid RUST_LOG {spec:?}: {err}");
            EnvFilter::new(default_level)
        }),
        _ => EnvFilter::new(default_level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints the error on stderr and returns the exit code it maps to.
fn report_error(err: &anyhow::Error, json: bool) -> u8 {
    let (code, kind) = exit::classify(err);
    let message = format!("{err:#}");
    if json {
        let error = serde_json::json!({ "error": message, "kind": kind });
        eprintln!(
            "{}",
            output::json_text(&error).unwrap_or_else(|_| error.to_string())
        );
    } else {
        eprintln!("error: {message}");
    }
    code
}
