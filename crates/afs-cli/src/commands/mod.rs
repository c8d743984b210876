//! The commands of `afs`, one module each, and the dispatch from parsed arguments.

mod ab;
mod configuration;
mod demo;
mod docs;
mod feedback;
mod generate;
mod import;
mod log;
mod looping;
mod maintenance;
mod migrate;
mod records;
mod retrain;
mod stats;
mod status;
mod trigger;

use crate::cli::{Cli, Command};

/// Runs the command named on the command line.
pub(crate) fn run(cli: &Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Log(args) => log::run(global, args),
        Command::Import(args) => import::run(global, args),
        Command::Feedback(args) => feedback::run(global, args),
        Command::Records(args) => records::run(global, args),
        Command::Stats(args) => stats::run(global, args),
        Command::Dedupe(args) => maintenance::dedupe(global, args),
        Command::Prune(args) => maintenance::prune(global, args),
        Command::Forget(args) => maintenance::forget(global, args),
        Command::Migrate(args) => migrate::run(global, args),
        Command::Generate(args) => generate::run(global, args),
        Command::Trigger(args) => trigger::run(global, args),
        Command::Retrain(args) => retrain::run(global, args),
        Command::Runs(args) => retrain::runs(global, args),
        Command::Ab(args) => ab::run(global, args),
        Command::Loop(args) => looping::run(global, args),
        Command::Status => status::run(global),
        Command::Demo(args) => demo::run(global, args),
        Command::Config(args) => configuration::run(global, args),
        Command::Serve(args) => crate::serve::run(global, args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    }
}
