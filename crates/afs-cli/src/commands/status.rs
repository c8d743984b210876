//! `afs status`: the loop's status as kept in the database (the seed's
//! `get_status_summary`), readable whether or not a loop is running.

use crate::cli::GlobalArgs;
use crate::config;
use crate::output::{print_json, print_line};
use crate::store_open::{open, Create};

/// Prints the status summary.
pub(crate) fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let config = config::load(global)?;
    let store = open(config.store_config(&global.db), Create::Never)?;
    let summary = afs_loop::status_summary(&store)?;
    if global.json {
        return print_json(&summary.to_json());
    }
    print_line(&summary.lines().join("\n"))
}
