//! Command-line arguments of `afs`: the clap definitions and their help texts.

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

use crate::time_arg::{parse_days, parse_time_arg, TimeArg};

const ROOT_AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  failure (database or file error)
  2  usage error (unknown flag, missing argument, malformed flag value)
  3  invalid input (a field the store refuses; any rejected line of `afs import`)
  4  not found (unknown record id)

Environment:
  AFS_DB    database file, same as --db
  AFS_NOW   pin the clock to an RFC 3339 time (a testing aid)
  RUST_LOG  log filter for stderr, e.g. `debug` or `afs_store=trace` (overrides -v)

Results go to stdout, logs and errors to stderr. See docs/CLI.md for the full reference.";

/// `afs`: log model usage with quality scores and feedback, and query or maintain the log.
#[derive(Debug, Parser)]
#[command(
    name = "afs",
    version,
    about = "Log ML model usage with quality scores and feedback; query and maintain the usage log",
    long_about = "Log ML model usage with quality scores and feedback; query and maintain the \
                  usage log.\n\nEvery command works on one SQLite file (--db, default ./afs.db). \
                  With --json, results are printed on stdout as JSON.",
    after_help = ROOT_AFTER_HELP,
    propagate_version = true
)]
pub(crate) struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// SQLite database file
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AFS_DB",
        default_value = "./afs.db",
        value_name = "PATH"
    )]
    pub(crate) db: PathBuf,

    /// Print machine-readable JSON on stdout (and JSON errors on stderr)
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) json: bool,

    /// Log more on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub(crate) verbose: u8,
}

/// The commands of `afs`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Log one model call and print its new id
    #[command(
        long_about = "Log one model call and print its new id.\n\nThe record's timestamp is \
                      the current time (or AFS_NOW). --query, --response and --model are \
                      required and must not be empty; --quality must be within [0, 1].",
        after_help = "Examples:\n  \
                      afs log --query 'What is 65816?' --response 'CPU for SNES...' --model nayru-v1 --quality 0.85\n  \
                      afs log --json --query q --response r --model m --unit user-42 --latency-ms 120 --tokens 512"
    )]
    Log(LogArgs),

    /// Import records from a JSON Lines file (or `-` for stdin)
    #[command(
        long_about = "Import records from a JSON Lines file (or `-` for stdin).\n\nEach line is \
                      one JSON object with the keys `query`, `response`, `model` (required) and \
                      optionally `expert`, `latency_ms`, `quality_score`, `feedback` (-1, 0 or \
                      1), `feedback_text`, `unit`, `timestamp`, `token_count`, `context_hash`. \
                      A `timestamp` is RFC 3339 (`2025-01-02T03:04:05Z`) or a naive ISO time \
                      (`2025-01-02T03:04:05.123456`, read as UTC); without one the record gets \
                      the current time.\n\nThe output of `afs records` and the archives of `afs \
                      prune` import as they are: `user_feedback` is read as `feedback`, \
                      `feedback_at` is kept, and `id`, `created_at` and `dedupe_hash` are \
                      accepted but ignored (every imported record gets a new id). Any other key \
                      rejects the line.\n\nThe file is streamed and written in batches, one \
                      transaction each. A bad line (malformed JSON, unknown key, missing or empty \
                      field, wrong type, value out of range) is reported with its line number \
                      and skipped; the good lines are kept. Blank lines are ignored. The exit \
                      code is 3 when any line was rejected.",
        after_help = "Examples:\n  \
                      afs import usage.jsonl\n  \
                      zcat usage.jsonl.gz | afs import - --json\n\n\
                      A line:\n  \
                      {\"query\": \"What is 65816?\", \"response\": \"CPU for SNES...\", \"model\": \"nayru-v1\", \"feedback\": 1}"
    )]
    Import(ImportArgs),

    /// Set or replace the feedback of a record
    #[command(
        long_about = "Set or replace the feedback of a record.\n\nGive exactly one of --value \
                      (-1, 0 or 1), --up (1) or --down (-1). Feedback given again replaces the \
                      earlier value. An unknown id exits with code 4.",
        after_help = "Examples:\n  \
                      afs feedback 01JD2Y6Q6T3W5M7V0K8N4P2R1S --up\n  \
                      afs feedback 01JD2Y6Q6T3W5M7V0K8N4P2R1S --value -1 --text 'wrong register width'"
    )]
    Feedback(FeedbackArgs),

    /// Stream records as JSON lines, oldest first
    #[command(
        long_about = "Stream records as JSON lines, oldest first (one object per line).\n\n\
                      Each object has: id, timestamp, query, response, model, expert, \
                      latency_ms, token_count, quality_score, user_feedback, feedback_text, \
                      feedback_at, unit, context_hash, dedupe_hash, created_at. Times are RFC \
                      3339, UTC; absent values are null. Filters combine with AND. --since and \
                      --until take an RFC 3339 time or a relative age such as 30m, 24h, 7d \
                      (now minus that); --since is inclusive, --until exclusive.",
        after_help = "Examples:\n  \
                      afs records --since 24h --model nayru-v1 --min-quality 0.7\n  \
                      afs records --with-feedback --newest-first --limit 20\n  \
                      afs records --min-feedback 1 | jq -r .query"
    )]
    Records(RecordsArgs),

    /// Show usage statistics (counts, feedback, quality, latency, tokens)
    #[command(
        long_about = "Show usage statistics: counts, feedback, quality, latency and tokens.\n\n\
                      Fields: total, with_feedback, positive_feedback, negative_feedback, \
                      neutral_feedback, avg_quality_score, quality_samples, quality_stddev, \
                      avg_latency_ms, total_tokens, feedback_rate, positive_rate, negative_rate. \
                      avg_*, quality_stddev, positive_rate and negative_rate are null when \
                      there is nothing to average; feedback_rate is 0 without records. With \
                      --by-model, one set of fields per model.",
        after_help = "Examples:\n  \
                      afs stats\n  \
                      afs stats --since 7d --by-model --json\n  \
                      afs stats --model nayru-v1 --since 2025-01-01T00:00:00Z --until 2025-02-01T00:00:00Z"
    )]
    Stats(StatsArgs),

    /// Remove duplicate records (same query and response), keeping the newest
    #[command(
        long_about = "Remove duplicate records: records with the same query and response. The \
                      newest of each group is kept. With --dry-run, only report what would be \
                      removed.",
        after_help = "Examples:\n  afs dedupe --dry-run\n  afs dedupe --json"
    )]
    Dedupe(DedupeArgs),

    /// Delete records older than a number of days, optionally archiving them first
    #[command(
        long_about = "Delete records older than a number of days (the cutoff is now minus DAYS; \
                      fractions are allowed). With --archive FILE, the records are first \
                      written to FILE as JSON lines; the file must not exist, and if writing it \
                      fails nothing is deleted.",
        after_help = "Examples:\n  \
                      afs prune --older-than 90 --archive usage-2025q1.jsonl\n  \
                      afs prune --older-than 0.5"
    )]
    Prune(PruneArgs),

    /// Delete every record of one unit (user or session)
    #[command(
        long_about = "Delete every record of one unit (a user or session id, as logged with \
                      --unit or the `unit` import key) and print how many were removed.",
        after_help = "Examples:\n  afs forget --unit user-42"
    )]
    Forget(ForgetArgs),
}

/// Arguments of `afs log`.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// The user's query
    #[arg(long, value_name = "TEXT")]
    pub(crate) query: String,

    /// The model's response
    #[arg(long, value_name = "TEXT")]
    pub(crate) response: String,

    /// Model identifier, e.g. nayru-v1
    #[arg(long, value_name = "NAME")]
    pub(crate) model: String,

    /// Expert or agent name
    #[arg(long, value_name = "NAME")]
    pub(crate) expert: Option<String>,

    /// Inference latency in milliseconds
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub(crate) latency_ms: Option<f64>,

    /// Quality score in [0, 1]
    #[arg(long, value_name = "SCORE", allow_negative_numbers = true)]
    pub(crate) quality: Option<f64>,

    /// Unit of assignment: a user or session id
    #[arg(long, value_name = "ID")]
    pub(crate) unit: Option<String>,

    /// Token count of the call
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) tokens: Option<i64>,

    /// Context identifier (free-form)
    #[arg(long, value_name = "TEXT")]
    pub(crate) context_hash: Option<String>,
}

/// Arguments of `afs import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// JSON Lines file to import, or `-` for stdin
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,

    /// Records written per transaction
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) batch_size: u32,
}

/// Arguments of `afs feedback`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("feedback_value").required(true).args(["value", "up", "down"])))]
pub(crate) struct FeedbackArgs {
    /// Id of the record
    #[arg(value_name = "ID")]
    pub(crate) id: String,

    /// Feedback value: -1 (bad), 0 (neutral) or 1 (good)
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    pub(crate) value: Option<i64>,

    /// Thumbs up (same as --value 1)
    #[arg(long)]
    pub(crate) up: bool,

    /// Thumbs down (same as --value -1)
    #[arg(long)]
    pub(crate) down: bool,

    /// Optional comment from the user
    #[arg(long, value_name = "TEXT")]
    pub(crate) text: Option<String>,
}

/// Arguments of `afs records`.
#[derive(Debug, Args)]
pub(crate) struct RecordsArgs {
    /// Only records at or after this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) since: Option<TimeArg>,

    /// Only records before this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) until: Option<TimeArg>,

    /// Only this model
    #[arg(long, value_name = "NAME")]
    pub(crate) model: Option<String>,

    /// Only this expert
    #[arg(long, value_name = "NAME")]
    pub(crate) expert: Option<String>,

    /// Only this unit (user or session)
    #[arg(long, value_name = "ID")]
    pub(crate) unit: Option<String>,

    /// Only records with a quality score at least this (records without a score are excluded)
    #[arg(long, value_name = "SCORE", allow_negative_numbers = true)]
    pub(crate) min_quality: Option<f64>,

    /// Only records with feedback (any value)
    #[arg(long, conflicts_with = "without_feedback")]
    pub(crate) with_feedback: bool,

    /// Only records without feedback
    #[arg(long, conflicts_with = "min_feedback")]
    pub(crate) without_feedback: bool,

    /// Only records with feedback at least V (-1, 0 or 1)
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    pub(crate) min_feedback: Option<i64>,

    /// At most N records
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,

    /// Newest records first
    #[arg(long)]
    pub(crate) newest_first: bool,
}

/// Arguments of `afs stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Only records at or after this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) since: Option<TimeArg>,

    /// Only records before this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) until: Option<TimeArg>,

    /// Only this model
    #[arg(long, value_name = "NAME")]
    pub(crate) model: Option<String>,

    /// One set of statistics per model
    #[arg(long)]
    pub(crate) by_model: bool,
}

/// Arguments of `afs dedupe`.
#[derive(Debug, Args)]
pub(crate) struct DedupeArgs {
    /// Only report what would be removed
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Arguments of `afs prune`.
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Delete records older than this many days (a positive number; fractions allowed)
    #[arg(long, value_name = "DAYS", value_parser = parse_days)]
    pub(crate) older_than: f64,

    /// First write the deleted records to this file as JSON lines (must not exist)
    #[arg(long, value_name = "FILE")]
    pub(crate) archive: Option<PathBuf>,
}

/// Arguments of `afs forget`.
#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    /// The unit (user or session id) whose records are deleted
    #[arg(long, value_name = "ID")]
    pub(crate) unit: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
