//! `afs dedupe`, `afs prune` and `afs forget`: removing records.

use afs_store::UsageStore;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::{DedupeArgs, ForgetArgs, GlobalArgs, PruneArgs};
use crate::exit::InvalidInput;
use crate::output::{count, print_json, print_line, rfc3339};
use crate::store_open::{configured, open, Create};
use crate::time_arg::days_to_duration;

/// The JSON report of `afs dedupe`.
#[derive(Debug, Serialize)]
struct DedupeJson {
    duplicate_groups: u64,
    removed: u64,
    dry_run: bool,
}

/// The JSON report of `afs prune`.
#[derive(Debug, Serialize)]
struct PruneJson {
    removed: u64,
    archived: u64,
    cutoff: String,
    archive: Option<String>,
}

/// The JSON report of `afs forget`.
#[derive(Debug, Serialize)]
struct ForgetJson<'a> {
    unit: &'a str,
    removed: u64,
}

/// Finds (and unless `--dry-run`, removes) duplicate records.
pub(crate) fn dedupe(global: &GlobalArgs, args: &DedupeArgs) -> anyhow::Result<()> {
    let store = open(configured(global)?, Create::Never)?;
    let report = store.dedupe(args.dry_run)?;
    tracing::info!(?report, "dedupe done");
    if global.json {
        return print_json(&DedupeJson {
            duplicate_groups: report.duplicate_groups,
            removed: report.removed,
            dry_run: report.dry_run,
        });
    }
    let groups = count(report.duplicate_groups, "duplicate group");
    let removed = count(report.removed, "record");
    if report.dry_run {
        print_line(&format!("found {groups}; would remove {removed} (dry run)"))
    } else {
        print_line(&format!("found {groups}; removed {removed}"))
    }
}

/// Deletes records older than `--older-than` days, archiving them first if asked.
pub(crate) fn prune(global: &GlobalArgs, args: &PruneArgs) -> anyhow::Result<()> {
    if let Some(archive) = &args.archive {
        // The store refuses too; checking here gives a clear error before any work.
        if archive.exists() {
            return Err(InvalidInput(format!(
                "archive file {} already exists; refusing to overwrite it",
                archive.display()
            ))
            .into());
        }
    }
    let store = open(configured(global)?, Create::Never)?;
    let cutoff = store
        .clock()
        .now()
        .checked_sub_signed(days_to_duration(args.older_than))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let report = store.prune(cutoff, args.archive.as_deref())?;
    tracing::info!(?report, cutoff = %cutoff, "prune done");
    if global.json {
        return print_json(&PruneJson {
            removed: report.removed,
            archived: report.archived,
            cutoff: rfc3339(cutoff),
            archive: args.archive.as_ref().map(|p| p.display().to_string()),
        });
    }
    let mut text = format!(
        "removed {} older than {}",
        count(report.removed, "record"),
        rfc3339(cutoff)
    );
    if let Some(archive) = &args.archive {
        text.push_str(&format!(
            "; archived {} to {}",
            report.archived,
            archive.display()
        ));
    }
    print_line(&text)
}

/// Deletes every record of one unit.
pub(crate) fn forget(global: &GlobalArgs, args: &ForgetArgs) -> anyhow::Result<()> {
    if args.unit.is_empty() {
        return Err(InvalidInput("invalid unit: must not be empty".to_string()).into());
    }
    let store = open(configured(global)?, Create::Never)?;
    let removed = store.forget_unit(&args.unit)?;
    tracing::info!(unit = %args.unit, removed, "unit forgotten");
    if global.json {
        print_json(&ForgetJson {
            unit: &args.unit,
            removed,
        })
    } else {
        print_line(&format!(
            "removed {} of unit {}",
            count(removed, "record"),
            args.unit
        ))
    }
}
