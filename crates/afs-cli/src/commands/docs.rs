//! `afs completions` and `afs man`: shell completion scripts and man pages, made from the
//! same command definitions as `--help`, so they never drift from it.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// Prints the completion script of `args.shell` on stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "afs", &mut script);
    crate::output::write_stdout(&script)
}

/// Writes afs.1 and one page per (sub)command into `args.out`, or afs.1 on stdout.
pub(crate) fn man(args: &ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = &args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("cannot render the man page")?;
        return crate::output::write_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0usize;
    write_pages(dir, command, &["afs"], &mut written)?;
    crate::output::print_line(&format!("{written} man pages written to {}", dir.display()))
}

/// Writes the page of `command`, reached by the words `path` (`afs ab set-champion`, in a
/// file `afs-ab-set-champion.1`), and those of its subcommands.
fn write_pages(
    dir: &Path,
    command: clap::Command,
    path: &[&str],
    written: &mut usize,
) -> anyhow::Result<()> {
    let name = path.join("-");
    let file = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    let shown = command
        .clone()
        .display_name(name.clone())
        .bin_name(path.join(" "));
    clap_mangen::Man::new(shown)
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let mut out =
        std::fs::File::create(&file).with_context(|| format!("cannot write {}", file.display()))?;
    out.write_all(&page)
        .with_context(|| format!("cannot write {}", file.display()))?;
    *written += 1;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let mut longer = path.to_vec();
        longer.push(sub.get_name());
        write_pages(dir, sub.clone(), &longer, written)?;
    }
    Ok(())
}
