//! Command-line arguments of `afs`: the clap definitions and their help texts.

use std::path::PathBuf;

use afs_datagen::{Format, Shape};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

use crate::config::{parse_override, Override};
use crate::time_arg::{parse_days, parse_duration, parse_time_arg, TimeArg};

const ROOT_AFTER_HELP: &str = "\
Exit codes:
  0   success (also: no retrain was triggered)
  1   failure (database or file error; a retrain run that failed, timed out or was refused;
      an `afs loop once` iteration that recorded a problem)
  2   usage error (unknown flag, missing argument, malformed flag value)
  3   invalid input (a field the store refuses; any rejected line of `afs import`; an
      invalid config file, AFS_<SECTION>__<KEY> variable, --set or option value)
  4   not found (unknown record id or experiment id)
  5   busy or conflict (another retrain is running on this database; an `afs ab` command
      the current state refuses: no champion, no experiment running, one already running,
      a model name already used; `afs demo` on a database that holds data)
  6   database unavailable (a database server could not be reached or did not answer in
      time; try again when it is back)
  10  not triggered (`afs trigger check --exit-code` only)
  130 interrupted by SIGINT or SIGTERM (`afs retrain` or `afs loop once` stopped its
      trainer; or a repeated signal ended `afs retrain` or `afs loop` at once)

Environment:
  AFS_DB      database file, same as --db
  AFS_CONFIG  config file, same as --config
  AFS_<SECTION>__<KEY>
              one key of the config file, e.g. AFS_TRIGGER__MIN_NEW_SAMPLES=500 or
              AFS_LOOP__CHECK_INTERVAL=30m (overrides the file; --set overrides it)
  AFS_NOW     pin the clock to an RFC 3339 time (a testing aid; `afs loop run` starts there
              and lets it run)
  RUST_LOG    log filter for stderr, e.g. `debug` or `afs_store=trace` (overrides -v)

Results go to stdout, logs and errors to stderr. See docs/CLI.md for the full reference.";

/// `afs`: log model usage with quality scores and feedback, query or maintain the log, retrain,
/// and run champion/challenger experiments.
#[derive(Debug, Parser)]
#[command(
    name = "afs",
    version,
    about = "Log ML model usage with quality scores and feedback; turn it into training data, \
             retrain, and judge the new model against the old",
    long_about = "Log ML model usage with quality scores and feedback; query and maintain the \
                  usage log; turn it into training data, decide when to retrain, and run the \
                  retrain; deploy the new model next to the serving one and promote or roll it \
                  back on evidence; run all of it as a continuous loop.\n\nEvery command \
                  works on one database (--db: a SQLite file, default ./afs.db, or a \
                  PostgreSQL database that several hosts share, \
                  postgres://user:password@host:port/database) and reads the \
                  configuration: the config file (--config, default ./afs.toml when \
                  present), then AFS_<SECTION>__<KEY> environment variables, then --set \
                  flags (`afs demo` alone needs no setup and reads none of them). With \
                  --json, results are printed on stdout as JSON.\n\nNew here? Run `afs \
                  demo`: weeks of simulated traffic, retrains and experiments in seconds.",
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
    /// SQLite database file, or a PostgreSQL database as
    /// postgres://user:password@host:port/database (shared by several hosts)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AFS_DB",
        default_value = "./afs.db",
        value_name = "PATH|URL"
    )]
    pub(crate) db: PathBuf,

    /// Config file (TOML; default ./afs.toml if present); see `afs config show`
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "AFS_CONFIG",
        value_name = "FILE"
    )]
    pub(crate) config: Option<PathBuf>,

    /// Print machine-readable JSON on stdout (and JSON errors on stderr)
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) json: bool,

    /// Log more on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub(crate) verbose: u8,

    /// Set one config key, over the file and the environment (repeatable), e.g. --set trigger.min_new_samples=500
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "KEY=VALUE",
        value_parser = parse_override
    )]
    pub(crate) set: Vec<Override>,
}

/// The commands of `afs`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Log one model call and print its new id
    #[command(
        long_about = "Log one model call and print its new id.\n\nThe record's timestamp is \
                      the current time (or AFS_NOW). --query, --response and --model are \
                      required and must not be empty; --quality must be within [0, 1].\n\nA \
                      multi-turn call gives --messages: a JSON array of {\"role\", \"content\"} \
                      turns (roles system, user, assistant, tool; system only first; ending with \
                      the assistant's answer), or @FILE to read it from a file. --query and \
                      --response may then be left out: they are the last user turn and the final \
                      assistant turn.",
        after_help = "Examples:\n  \
                      afs log --query 'What is 65816?' --response 'CPU for SNES...' --model nayru-v1 --quality 0.85\n  \
                      afs log --json --query q --response r --model m --unit user-42 --latency-ms 120 --tokens 512\n  \
                      afs log --model m --messages '[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"}]'"
    )]
    Log(LogArgs),

    /// Import records from a JSON Lines file (or `-` for stdin)
    #[command(
        long_about = "Import records from a JSON Lines file (or `-` for stdin).\n\nEach line is \
                      one JSON object with the keys `query`, `response`, `model` (required) and \
                      optionally `expert`, `latency_ms`, `quality_score`, `feedback` (-1, 0 or \
                      1), `feedback_text`, `unit`, `timestamp`, `token_count`, `context_hash`, \
                      `messages` (a conversation: an array of {\"role\", \"content\"} turns, \
                      roles system, user, assistant, tool; with it `query` and `response` may be \
                      left out and are its last user turn and final assistant turn). \
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
                      feedback_at, unit, context_hash, dedupe_hash, created_at, and messages \
                      (the conversation) for a multi-turn record only. Times are RFC \
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

    /// Copy a whole database into a new one (SQLite <-> PostgreSQL) and verify the copy
    #[command(
        long_about = "Copy a whole database into a new or empty one, between SQLite files and \
                      PostgreSQL databases in any direction, then verify the copy.\n\nCopied: \
                      every record of the log with its id, timestamp, feedback (value, text, \
                      feedback_at), created_at and dedupe hash kept (a model server can still \
                      send feedback for an id it got before the move); the model versions, \
                      experiments with their periods, the event log (deploys, weight changes, \
                      decisions, promotions) and the sequential states, with their ids; the \
                      pre-experiment covariates of a running experiment; the retrain runs; \
                      the controller state (trigger cooldowns, baselines). The rollups and the \
                      running experiment's per-unit statistics are rebuilt on the destination \
                      as the records arrive; the per-unit statistics of ended experiments are \
                      not carried (they are only read while an experiment runs).\n\nThe \
                      source is only read (--from must exist). The destination (--to) is \
                      created when missing and must hold nothing: no record, version, \
                      experiment, run or state; otherwise the command exits with code 5 and \
                      changes nothing. A source with a retrain run still running is refused \
                      the same way. The log is streamed in time order and written in \
                      batches (--batch records per transaction), so memory stays bounded. \
                      Stop every writer of the source first (afs serve, afs loop): records \
                      logged during the copy may be missed, and the verification then \
                      fails.\n\nAt the end the copy is checked against the source: the number \
                      of records, `afs stats` overall and per model (counts exactly, sums \
                      within 1e-9 relative), the numbers of versions, experiments, events, \
                      runs and state keys, and the running experiment's per-unit statistics. \
                      A summary is printed (with --json, one object). Exit code 0 when \
                      everything matches; 1 naming what differs. A copy that failed half-way \
                      leaves a destination that is not empty: remove it (or empty it) and run \
                      the command again.",
        after_help = "Examples:\n  \
                      afs migrate --from afs.db --to postgres://afs:secret@db.internal/afs\n  \
                      afs migrate --from postgres://afs:secret@db.internal/afs --to backup.db --json"
    )]
    Migrate(MigrateArgs),

    /// Generate a training file from the usage log
    #[command(
        long_about = "Generate a training file from the usage log.\n\nRecords are streamed \
                      oldest first through the feedback filter, quality scoring of unscored \
                      records (a heuristic; the scores are written back to the log unless \
                      --no-write-back), the quality filter, exact and (optionally) \
                      near-duplicate removal, redaction of personal data and secrets, the merge \
                      with an --existing training file (duplicates of it dropped, a --rehearsal \
                      share of it mixed in) and the --max-samples cap, then written to --out \
                      (one JSON object per line) with a manifest next to it \
                      (FILE.manifest.json). The file is written under a temporary name and \
                      renamed at the end: a failed run leaves no half-written file, and Ctrl-C \
                      stops the run, removes its temporary files and exits with code \
                      130.\n\nSettings \
                      come from the [generator] section of the config file; flags override it. \
                      Each --no-X flag has a --X counterpart (--dedupe, --near-dedupe, \
                      --redact, --write-back) that turns the stage back on when the config file \
                      turned it off.\n\nThe result (counts per stage, redactions per kind, \
                      quality, malformed lines of the existing file) is printed on stdout; a \
                      progress bar is drawn on stderr when it is a terminal. Malformed lines of \
                      the existing file are reported (and warned about on stderr) but do not \
                      fail the run; a missing existing file does (exit code 1).",
        after_help = "Formats (see docs/TRAINING.md for the trainer that reads each):\n  \
                      chatml      {\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}], \"metadata\"}\n  \
                      openai      {\"messages\"}: OpenAI chat fine-tuning (chatml without metadata)\n  \
                      alpaca      {\"instruction\", \"input\", \"output\"}\n  \
                      completion  {\"prompt\", \"completion\"}\n  \
                      text        {\"text\"}\n  \
                      sharegpt    {\"conversations\": [{\"from\": \"user\", ...}, {\"from\": \"assistant\", ...}]}\n  \
                      dpo         {\"prompt\", \"chosen\", \"rejected\"}: a thumbs-up and a thumbs-down response to one query\n  \
                      openai-dpo  {\"input\", \"preferred_output\", \"non_preferred_output\"}: OpenAI preference fine-tuning\n  \
                      kto         {\"prompt\", \"completion\", \"label\"}: label = the feedback (up or down)\n\n\
                      Shapes (--shape): completion, dpo and kto are plain by default: strings, the \
                      prompt being the system prompt (if any) and the query, each followed by a \
                      blank line (\"\\n\\n\"), so that prompt + completion is the text line; \
                      conversational writes message lists instead. A system prompt never changes \
                      the shape.\n\n\
                      Examples:\n  \
                      afs generate --out train.jsonl\n  \
                      afs generate --out train.jsonl --format alpaca --min-quality 0.8 --since 7d --near-dedupe\n  \
                      afs generate --out prefs.jsonl --format dpo --model nayru-v1\n  \
                      afs generate --out v2.jsonl --existing v1.jsonl --rehearsal 0.2 --seed 7 --json"
    )]
    Generate(GenerateArgs),

    /// Check whether a retrain is due (trigger policies from the [trigger] config section)
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = "Examples:\n  \
                      afs trigger check\n  \
                      afs trigger check --json --config afs.toml"
    )]
    Trigger(TriggerArgs),

    /// Retrain when a trigger fires: generate a dataset and run the trainer command
    #[command(
        long_about = "Retrain when a trigger fires: check the triggers, generate a dataset into \
                      a new run directory, and run the trainer command on it.\n\nThe triggers \
                      are those of the [trigger] config section (see `afs trigger check`); \
                      --force skips them. The dataset is generated with the [generator] \
                      section into OUTPUT_DIR/runs/RUN_ID/train.jsonl; with fewer than \
                      --min-samples samples the run is refused. The trainer command runs with \
                      `sh -c` in the current directory; its stdout and stderr are saved as \
                      trainer.stdout.log and trainer.stderr.log in the run directory. Only one \
                      retrain runs at a time per database, across processes; every run is \
                      recorded (see `afs runs`).\n\nPlaceholders in the command stand for \
                      environment variables holding the values (never pasted into the shell \
                      text; refused inside single quotes):\n  {data}        the dataset (JSON lines)\n  \
                      {output_dir}  an empty directory for the model, RUN_DIR/model (not --output-dir)\n  \
                      {run_id}      the run id\n  {run_dir}     the run directory\n  \
                      {result}      where the trainer may write its result \
                      (RUN_DIR/trainer.result.json)\n\nThe variables: AFS_DATA_PATH, AFS_OUTPUT_DIR, AFS_RUN_ID, AFS_RUN_DIR, \
                      AFS_RESULT_PATH, and AFS_N_SAMPLES (samples in the dataset).\n\nThe \
                      trainer reports success by exiting with status 0 and giving a JSON \
                      object with a string `model_path` (other keys, or an object under \
                      `metrics`, are recorded as metrics), written to the {result} file or \
                      printed as the last non-empty line of stdout. A non-zero exit, a missing \
                      or unusable result, or running past --timeout (the trainer's whole \
                      process group is killed) fails the run. SIGINT (Ctrl-C) or SIGTERM \
                      stops the trainer the same way and records the run as interrupted; a \
                      second signal exits at once.\n\nExit codes: 0 when the run \
                      completed or nothing triggered; 1 when the run failed, timed out or was \
                      refused (the outcome is still printed); 5 when another retrain is \
                      running; 130 when it was interrupted.",
        after_help = "Examples:\n  \
                      afs retrain --train-cmd 'python train.py --data {data} --out {output_dir}'\n  \
                      afs retrain --force --timeout 7200 --train-cmd './train.sh \"$AFS_DATA_PATH\"'\n  \
                      afs retrain --json   # train_cmd from [trainer] in ./afs.toml\n\n\
                      A trainer that reports on stdout:\n  \
                      echo '{\"model_path\": \"/models/v2\", \"eval_loss\": 0.41}'"
    )]
    Retrain(RetrainArgs),

    /// List retrain runs, newest first
    #[command(
        long_about = "List retrain runs, newest first: id, status, trigger, start, duration, \
                      dataset samples, model path or error.\n\nA run left `running` by a \
                      process that no longer exists is marked failed first. Without --json, an \
                      aligned table; with --json, one JSON object per run (JSON lines) with \
                      the fields id, status, trigger_type, trigger_reason, started_at, \
                      finished_at, duration_secs, n_samples, dataset_path, model_path, \
                      metrics, error, run_dir.",
        after_help = "Examples:\n  \
                      afs runs\n  \
                      afs runs --status failed --limit 5 --json"
    )]
    Runs(RunsArgs),

    /// Champion/challenger experiments: deploy, route, compare, promote, roll back
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        long_about = "Champion/challenger experiments: register the serving model (champion), \
                      deploy a new one next to it (challenger) with a share of traffic, route \
                      requests, compare the two on the logged quality, feedback and latency, \
                      and promote or roll back the challenger.\n\nThe versions, the running \
                      experiment, every decision and its statistics live in the database. The \
                      decisions use always-valid sequential tests, guardrails, minimum samples \
                      and duration and a sample-ratio check (see docs/STATISTICS.md); their \
                      settings come from the [abtest] section of the config file. A challenger \
                      is judged on the records logged with its name as `model`.",
        after_help = "Examples:\n  \
                      afs ab set-champion nayru-v1 --path /models/nayru-v1\n  \
                      afs ab deploy nayru-v2 --path /models/nayru-v2 --weight 0.1\n  \
                      afs ab route --unit user-42\n  \
                      afs ab compare\n  \
                      afs ab check --json   # hourly, from cron\n  \
                      afs ab history --limit 10"
    )]
    Ab(AbArgs),

    /// The continuous loop: check, retrain, deploy, promote or roll back, again and again
    #[command(
        name = "loop",
        subcommand_required = true,
        arg_required_else_help = true,
        long_about = "The continuous loop: each iteration judges the running experiment (and \
                      promotes or rolls back the challenger on evidence), or, when none runs, \
                      checks the triggers and, when one fires, generates a dataset, runs the \
                      trainer, runs the evaluation gate (loop.eval_cmd) on the new model and \
                      deploys it as challenger next to the champion.\n\nSettings come from \
                      the configuration: [loop] (check_interval, enable_ab_testing, \
                      enable_auto_promotion, eval_cmd, champion, ...), [trigger], [generator], \
                      [abtest] and [trainer]; see `afs config show`. The loop's status \
                      (iterations, last check, errors) is kept in the database and shown by \
                      `afs status`.",
        after_help = "Examples:\n  \
                      afs loop once --train-cmd './train.sh {data} {output_dir}'\n  \
                      afs loop run --interval 30m --train-cmd 'python train.py --data {data} --out {output_dir}'\n  \
                      afs loop run --max-iterations 1 --force-first --json"
    )]
    Loop(LoopArgs),

    /// Show the loop's status: last check, retrains, champion, challenger, traffic, errors
    #[command(
        long_about = "Show the loop's status, read from the database (no loop needs to be \
                      running): iterations and the last check, the iteration in progress, \
                      retrains (total, completed, failed, the last one), the champion, the \
                      challenger and the traffic split, usage overall and per model, and the \
                      last errors.\n\nWith --json, one object with the seed's keys under \
                      `status` (total_retrains, champion_model, challenger_model, last_check, \
                      last_retrain, errors) and the details beside it.",
        after_help = "Examples:\n  afs status\n  afs status --json | jq .status.champion_model"
    )]
    Status,

    /// Simulate weeks of production traffic through the whole loop, in seconds
    #[command(
        long_about = "Simulate weeks of production traffic through the real loop, store, \
                      triggers, trainer call and experiments, with a simulated clock, in \
                      seconds of real time. No setup: the database goes to a new temporary \
                      directory unless --db is given on the command line (AFS_DB and the \
                      configuration are not read).\n\nSimulated users send queries to the \
                      model the router picks; responses get quality scores and feedback drawn \
                      from each model's hidden true quality. Triggers fire; a built-in demo \
                      trainer makes each new model better or worse than the champion (at \
                      random, and the timeline says which); challengers are deployed, tested, \
                      and promoted or rolled back by the real judge, which never sees the \
                      hidden truth.\n\nPrints the timeline as it happens (one line per \
                      event), then a table of champions and models with their true quality. \
                      The database it leaves is a normal afs database: every other command \
                      can inspect it. The same --seed gives the same timeline. With --json, \
                      one JSON object per event, then the summary.",
        after_help = "Examples:\n  \
                      afs demo\n  \
                      afs demo --seed 7 --weeks 1\n  \
                      afs demo --db demo.db && afs --db demo.db ab history"
    )]
    Demo(DemoArgs),

    /// Show or check the effective configuration (file, environment, --set)
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        long_about = "Show or check the effective configuration: the defaults, overridden by \
                      the config file (--config, AFS_CONFIG, or ./afs.toml when present), \
                      overridden by AFS_<SECTION>__<KEY> environment variables, overridden by \
                      --set SECTION.KEY=VALUE flags. An unknown key, a value of the wrong type \
                      or out of range is an error (exit 3) naming the key and where it came \
                      from. See docs/CONFIGURATION.md for every key.",
        after_help = "Examples:\n  \
                      afs config show\n  \
                      AFS_TRIGGER__MIN_NEW_SAMPLES=500 afs config show --json | jq .trigger\n  \
                      afs --config /etc/afs/afs.toml config check"
    )]
    Config(ConfigArgs),

    /// Serve the HTTP API, Prometheus metrics and the live dashboard (optionally with the loop)
    #[command(
        long_about = "Serve the HTTP API, Prometheus metrics and the live dashboard over the \
                      database, optionally running the continuous learning loop in the same \
                      process.\n\nJSON API under /v1 (POST /v1/usage, POST /v1/feedback, GET \
                      /v1/route, /v1/stats, /v1/series, /v1/status, /v1/experiment, \
                      /v1/history, /v1/runs), GET /metrics (Prometheus), GET /healthz, and the \
                      dashboard at GET /. Listens on 127.0.0.1:8080 unless --addr (or addr in \
                      [serve]) says otherwise and prints `listening on http://HOST:PORT` once \
                      bound. With tokens (--token, AFS_TOKENS, or tokens and token_file in the \
                      config file's [serve] section), writes need `Authorization: Bearer \
                      TOKEN` and the dashboard needs the token once as /?token=TOKEN. SIGTERM or \
                      SIGINT drains in-flight requests and stops the loop. See docs/SERVICE.md \
                      and docs/openapi.yaml.",
        after_help = "Examples:\n  \
                      afs serve\n  \
                      AFS_TOKENS=s3cret afs serve --addr 0.0.0.0:8080\n  \
                      afs serve --with-loop --train-cmd 'python train.py --data {data} --out {output_dir}'\n  \
                      curl -s localhost:8080/v1/route?unit=user-42"
    )]
    Serve(crate::serve::ServeArgs),

    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    #[command(
        long_about = "Print the completion script of a shell on stdout: every command, \
                      option and fixed value of afs completes with Tab.",
        after_help = "Examples:\n  \
                      afs completions bash > ~/.local/share/bash-completion/completions/afs\n  \
                      afs completions zsh > \"${fpath[1]}/_afs\"\n  \
                      afs completions fish > ~/.config/fish/completions/afs.fish"
    )]
    Completions(CompletionsArgs),

    /// Write man pages: afs(1) and one per command (afs-log(1), afs-ab-deploy(1), ...)
    #[command(
        long_about = "Write the man pages of afs, made from the same definitions as --help: \
                      afs.1 and one page per command and subcommand (afs-log.1, \
                      afs-ab-deploy.1, ...), into --out (created if missing). Files there \
                      of the same names are replaced. Without --out, print afs.1 on stdout.",
        after_help = "Examples:\n  \
                      afs man --out /usr/local/share/man/man1\n  \
                      afs man | man -l -"
    )]
    Man(ManArgs),
}

/// Arguments of `afs completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// Arguments of `afs man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Directory to write the pages into (afs.1, afs-log.1, ...); stdout (afs.1 only) without
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<std::path::PathBuf>,
}

/// Arguments of `afs log`.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// The user's query (with --messages: the last user turn, which it defaults to)
    #[arg(long, value_name = "TEXT", required_unless_present = "messages")]
    pub(crate) query: Option<String>,

    /// The model's response (with --messages: the final assistant turn, which it defaults to)
    #[arg(long, value_name = "TEXT", required_unless_present = "messages")]
    pub(crate) response: Option<String>,

    /// The whole conversation: a JSON array of {"role", "content"} turns, or @FILE
    #[arg(long, value_name = "JSON")]
    pub(crate) messages: Option<String>,

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

    /// Records written per transaction [default: the store's: 5000 on SQLite, 2000 on
    /// PostgreSQL]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) batch_size: Option<u32>,
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

/// Arguments of `afs migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The database to copy: a SQLite file or postgres://... (only read)
    #[arg(long, value_name = "PATH|URL")]
    pub(crate) from: PathBuf,

    /// The database to copy into: a SQLite file or postgres://... (created when missing;
    /// must be empty)
    #[arg(long, value_name = "PATH|URL")]
    pub(crate) to: PathBuf,

    /// Records written per transaction [default: the destination store's: 5000 on SQLite,
    /// 2000 on PostgreSQL]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) batch: Option<u32>,
}

/// Parses `--format`: one of the format names, any case.
/// Parses `--format`, ignoring ASCII case. Unlike a list of possible values, its error
/// names the format another tool's name means (`openai_dpo`, `trl-dpo`, ...).
#[derive(Debug, Clone, Copy)]
struct FormatParser;

impl TypedValueParser for FormatParser {
    type Value = Format;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Format, clap::Error> {
        let name = value.to_string_lossy();
        name.parse::<Format>().map_err(|err| {
            let flag = arg.map_or_else(|| "--format".to_string(), |a| a.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value for {flag}: {err}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            Format::ALL
                .into_iter()
                .map(|f| clap::builder::PossibleValue::new(f.as_str())),
        ))
    }
}

/// Parses `--shape`, ignoring ASCII case.
fn shape_parser() -> impl TypedValueParser<Value = Shape> {
    PossibleValuesParser::new(Shape::ALL.map(Shape::as_str)).try_map(|name| name.parse::<Shape>())
}

/// Arguments of `afs generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Training file to write (JSON lines); FILE.manifest.json is written next to it
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,

    /// Output format (list below) [config: format; default chatml]
    #[arg(long, value_name = "FORMAT", value_parser = FormatParser)]
    pub(crate) format: Option<Format>,

    /// Shape of completion, dpo and kto lines: plain (strings) or conversational (message lists); the other formats have one shape [config: shape; default plain]
    #[arg(long, value_name = "SHAPE", ignore_case = true, value_parser = shape_parser())]
    pub(crate) shape: Option<Shape>,

    /// Leave chatml's "metadata" object out of each line [config: metadata = false]
    #[arg(long, overrides_with = "metadata")]
    pub(crate) no_metadata: bool,

    /// Write chatml's "metadata" object (the default)
    #[arg(long, hide = true, overrides_with = "no_metadata")]
    pub(crate) metadata: bool,

    /// Leave out records with a quality score below this, in [0, 1] [config: min_quality_score; default 0.7]
    #[arg(long, value_name = "SCORE", allow_negative_numbers = true)]
    pub(crate) min_quality: Option<f64>,

    /// Keep only records with feedback >= N (-1, 0 or 1) [config: min_user_feedback; default 1]
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        conflicts_with = "any_feedback"
    )]
    pub(crate) min_feedback: Option<i64>,

    /// No feedback condition: records without feedback are kept too
    #[arg(long)]
    pub(crate) any_feedback: bool,

    /// Keep exact duplicates [config: deduplicate = false]
    #[arg(long, overrides_with = "dedupe")]
    pub(crate) no_dedupe: bool,

    /// Remove exact duplicates (the default)
    #[arg(long, hide = true, overrides_with = "no_dedupe")]
    pub(crate) dedupe: bool,

    /// Also remove near-duplicates (MinHash) [config: near_dedupe]
    #[arg(long, overrides_with = "no_near_dedupe")]
    pub(crate) near_dedupe: bool,

    /// Do not remove near-duplicates
    #[arg(long, hide = true, overrides_with = "near_dedupe")]
    pub(crate) no_near_dedupe: bool,

    /// Jaccard similarity in (0, 1] at which records are near-duplicates; implies --near-dedupe [config: near_dedupe_threshold; default 0.8]
    #[arg(
        long,
        value_name = "J",
        allow_negative_numbers = true,
        conflicts_with = "no_near_dedupe"
    )]
    pub(crate) threshold: Option<f64>,

    /// An existing training file: drop new duplicates of it, and draw --rehearsal samples from it [config: existing]
    #[arg(long, value_name = "FILE")]
    pub(crate) existing: Option<PathBuf>,

    /// Share of the output drawn from the existing file, in [0, 1) [config: rehearsal_ratio; default 0]
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub(crate) rehearsal: Option<f64>,

    /// At most N samples, keeping the highest quality [config: max_samples]
    #[arg(long, value_name = "N")]
    pub(crate) max_samples: Option<u64>,

    /// Only records at or after this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) since: Option<TimeArg>,

    /// Only records before this time (RFC 3339, or an age like 30m, 24h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub(crate) until: Option<TimeArg>,

    /// Only records of this model [config: model]
    #[arg(long, value_name = "NAME")]
    pub(crate) model: Option<String>,

    /// System prompt added to every sample [config: system_prompt]
    #[arg(long, value_name = "TEXT")]
    pub(crate) system_prompt: Option<String>,

    /// Do not redact e-mails, phone numbers, card numbers, IP addresses and secrets [config: redact = false]
    #[arg(long, overrides_with = "redact")]
    pub(crate) no_redact: bool,

    /// Redact personal data and secrets (the default)
    #[arg(long, hide = true, overrides_with = "no_redact")]
    pub(crate) redact: bool,

    /// Seed of the rehearsal choice [config: seed; default 0]
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,

    /// Do not write the scores given to unscored records back to the log [config: write_back_scores = false]
    #[arg(long, overrides_with = "write_back")]
    pub(crate) no_write_back: bool,

    /// Write scores back (the default)
    #[arg(long, hide = true, overrides_with = "no_write_back")]
    pub(crate) write_back: bool,
}

/// Arguments of `afs trigger`.
#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: TriggerCommand,
}

/// The subcommands of `afs trigger`.
#[derive(Debug, Subcommand)]
pub(crate) enum TriggerCommand {
    /// Run the trigger checks now and print whether a retrain is due
    #[command(
        long_about = "Run the trigger checks now and print whether a retrain is due.\n\nThe \
                      policies and thresholds are those of the [trigger] section of the config \
                      file (sample count, schedule, quality drop, Page-Hinkley, error rate, \
                      cooldown). The checks read the store's aggregates, never the whole log. \
                      A check updates the persisted trigger state (the first-check time, the \
                      quality baseline, the change detector), as the retrain loop's checks do; \
                      it never starts a retrain.\n\nOutput: `triggered (TYPE)` or `not \
                      triggered`, the reason, and the metrics behind the decision; with --json, {\"triggered\", \"trigger_type\", \"reason\", \"metrics\"} \
                      (trigger_type is null when nothing fired). The exit code is 0 whether or \
                      not a retrain is due, unless --exit-code is given.",
        after_help = "Examples:\n  \
                      afs trigger check\n  \
                      afs trigger check --json | jq .triggered\n  \
                      afs trigger check --exit-code && afs retrain"
    )]
    Check(TriggerCheckArgs),
}

/// Arguments of `afs trigger check`.
#[derive(Debug, Args)]
pub(crate) struct TriggerCheckArgs {
    /// Report a forced (manual) trigger whatever the policies say
    #[arg(long)]
    pub(crate) force: bool,

    /// Exit with code 10 when no retrain is due (0 when one is)
    #[arg(long)]
    pub(crate) exit_code: bool,
}

/// Arguments of `afs retrain`.
#[derive(Debug, Args)]
pub(crate) struct RetrainArgs {
    /// Retrain now whatever the triggers say (also during the cooldown)
    #[arg(long)]
    pub(crate) force: bool,

    /// Trainer command, run with `sh -c`; placeholders {data} {output_dir} {run_id} {run_dir} {result} [config: train_cmd]
    #[arg(long, value_name = "CMD")]
    pub(crate) train_cmd: Option<String>,

    /// Stop the trainer after this many seconds [config: timeout_secs; default 86400]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,

    /// Directory for run directories (DIR/runs/RUN_ID) [config: output_dir; default continuous_output]
    #[arg(long, value_name = "DIR")]
    pub(crate) output_dir: Option<PathBuf>,

    /// Refuse to train on fewer samples [config: min_samples_for_retrain; default 100]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) min_samples: Option<u64>,
}

/// Arguments of `afs ab`.
#[derive(Debug, Args)]
pub(crate) struct AbArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: AbCommand,
}

/// The subcommands of `afs ab`.
#[derive(Debug, Subcommand)]
pub(crate) enum AbCommand {
    /// Show the champion, the challenger, its weight and the running experiment
    #[command(
        long_about = "Show the champion, the challenger and its share of traffic, and the \
                      running experiment: when it started, its routing seed and its periods (a \
                      period is a stretch with one weight). Without a running experiment, the \
                      last one and how it ended.\n\nWith --json: {\"champion\", \
                      \"challenger\", \"experiment\", \"last_experiment\"}, each null when \
                      absent.",
        after_help = "Examples:\n  afs ab status\n  afs ab status --json | jq .experiment.challenger_weight"
    )]
    Status,

    /// Deploy a new model as challenger and start an experiment against the champion
    #[command(
        long_about = "Deploy a new model as challenger and start an experiment against the \
                      champion.\n\nNAME is the `model` its service logs with every call; \
                      names are never reused. The challenger gets --weight of the traffic \
                      (default initial_challenger_traffic of the [abtest] section, 0.1), on \
                      the units that hash below the weight with the experiment's routing seed \
                      (random unless --seed is given). Needs a champion; refused (exit 5) \
                      while another experiment runs.",
        after_help = "Examples:\n  \
                      afs ab deploy nayru-v2 --path /models/nayru-v2\n  \
                      afs ab deploy nayru-v2 --path /models/nayru-v2 --weight 0.2 --reason 'weekly retrain'"
    )]
    Deploy(AbDeployArgs),

    /// Register a model as champion outside an experiment (the first model, or a replacement)
    #[command(
        name = "set-champion",
        long_about = "Register a model as champion outside any experiment: the first model, \
                      or a manual replacement (the previous champion is retired). Refused \
                      (exit 5) while an experiment runs: promote or roll back first. Creates \
                      the database when it does not exist.",
        after_help = "Examples:\n  \
                      afs ab set-champion nayru-v1 --path /models/nayru-v1\n  \
                      afs ab set-champion nayru-v1 --path /models/nayru-v1 --dataset train-2025-05.jsonl"
    )]
    SetChampion(AbSetChampionArgs),

    /// Print the model (and arm) that serves a request
    #[command(
        long_about = "Print the model (and arm) that serves a request.\n\nWith --unit (a \
                      user or session id) the answer is sticky: BLAKE3(seed, unit) maps the \
                      unit to [0, 1) and the challenger owns [0, weight), so a unit always \
                      gets the same arm, and raising the weight only moves champion units to \
                      the challenger. Without --unit, a weighted random draw. Without an \
                      experiment, always the champion.\n\nWith --json: {\"model\", \"arm\", \
                      \"version\", \"model_path\", \"unit\", \"experiment_id\", \
                      \"challenger_weight\"}.",
        after_help = "Examples:\n  afs ab route --unit user-42\n  afs ab route --json"
    )]
    Route(AbRouteArgs),

    /// Compare the champion and the challenger now (the judge's full report)
    #[command(
        long_about = "Compare the champion and the challenger now: the judge's full report, \
                      without recording or applying anything.\n\nPer metric (the primary \
                      metric, then each guardrail): both arms' values and counts, the \
                      difference (challenger - champion) and relative lift, the always-valid \
                      confidence interval, the sequential p-values and the verdict. Then the \
                      decision (promote, keep_testing, rollback or hold) and its reason, the \
                      sample-ratio check, and the seed's weighted-improvement score and fixed \
                      rule for contrast. With --json, the report as one JSON object. Exit 5 \
                      when no experiment runs.",
        after_help = "Examples:\n  afs ab compare\n  afs ab compare --json | jq '.decision, .reason'"
    )]
    Compare,

    /// Judge the running experiment once now, record the decision and apply it
    #[command(
        long_about = "Judge the running experiment once now, as the loop does every hour: \
                      the decision and its statistics are recorded in the history, and a \
                      promote or rollback decision is applied when the [abtest] section allows \
                      it (enable_auto_promotion, enable_auto_rollback). The sequential tests \
                      stay valid however often this runs. Prints the report of `afs ab \
                      compare` and what was done; with --json, {\"experiment_id\", \
                      \"decision\", \"reason\", \"applied\", \"new_weight\", \
                      \"comparison\"}. Without a running experiment it says so and exits 0 \
                      (suitable for cron).",
        after_help = "Examples:\n  afs ab check\n  afs ab check --json >> ab-checks.jsonl   # hourly, from cron"
    )]
    Check,

    /// Change the challenger's share of traffic (same experiment, same routing seed)
    #[command(
        name = "set-weight",
        long_about = "Change the challenger's share of traffic to W, strictly between 0 and 1. \
                      Same experiment, same routing seed: raising the weight only moves \
                      champion units to the challenger, and a unit on the challenger stays \
                      there. A new period starts, so the comparison is computed per period. To \
                      give the challenger all traffic, promote it; to give it none, roll it \
                      back.",
        after_help = "Examples:\n  afs ab set-weight 0.5\n  afs ab set-weight 0.25 --reason 'ramp up after a clean day'"
    )]
    SetWeight(AbSetWeightArgs),

    /// Promote the challenger to champion now, whatever the judge says
    #[command(
        long_about = "Promote the challenger to champion now, whatever the judge says; the \
                      old champion is retired and the experiment ends. The history records the \
                      reason and the judge's view at that moment. Exit 5 when no experiment \
                      runs.",
        after_help = "Examples:\n  afs ab promote\n  afs ab promote --reason 'approved by the eval team'"
    )]
    Promote(AbPromoteArgs),

    /// Roll the challenger back now: retire it and give the champion all traffic
    #[command(
        long_about = "Roll the challenger back now: retire it, give the champion all traffic \
                      and end the experiment. The history records the reason and the judge's \
                      view at that moment. Exit 5 when no experiment runs.",
        after_help = "Examples:\n  afs ab rollback\n  afs ab rollback --reason 'users report truncated answers'"
    )]
    Rollback(AbRollbackArgs),

    /// List the history of versions, experiments and decisions, newest first
    #[command(
        long_about = "List the history, newest first: champions set, challengers deployed, \
                      weight changes, promotions, rollbacks and the judge's decisions, each \
                      with its reason. With --json, one object per event (JSON lines): id, at, \
                      experiment_id, kind, model, decision, weight, reason, statistics (the \
                      judge's report at that moment, or null).",
        after_help = "Examples:\n  \
                      afs ab history\n  \
                      afs ab history --kind promote --kind rollback\n  \
                      afs ab history --experiment 3 --json | jq -r .reason"
    )]
    History(AbHistoryArgs),
}

/// Arguments of `afs ab deploy`.
#[derive(Debug, Args)]
pub(crate) struct AbDeployArgs {
    /// The model's name: the `model` its service logs
    #[arg(value_name = "NAME")]
    pub(crate) name: String,

    /// Where the model lives (a path or URI)
    #[arg(long, value_name = "P")]
    pub(crate) path: String,

    /// Share of traffic, strictly between 0 and 1 [config: initial_challenger_traffic; default 0.1]
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub(crate) weight: Option<f64>,

    /// Routing seed of the experiment (default: random)
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,

    /// The dataset the model was trained on (free-form)
    #[arg(long, value_name = "TEXT")]
    pub(crate) dataset: Option<String>,

    /// The retrain run that produced the model (free-form)
    #[arg(long, value_name = "ID")]
    pub(crate) run_id: Option<String>,

    /// Why, for the history [default: manual deploy by operator]
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Arguments of `afs ab set-champion`.
#[derive(Debug, Args)]
pub(crate) struct AbSetChampionArgs {
    /// The model's name: the `model` its service logs
    #[arg(value_name = "NAME")]
    pub(crate) name: String,

    /// Where the model lives (a path or URI)
    #[arg(long, value_name = "P")]
    pub(crate) path: String,

    /// The dataset the model was trained on (free-form)
    #[arg(long, value_name = "TEXT")]
    pub(crate) dataset: Option<String>,

    /// The retrain run that produced the model (free-form)
    #[arg(long, value_name = "ID")]
    pub(crate) run_id: Option<String>,

    /// Why, for the history [default: manual set-champion by operator]
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Arguments of `afs ab route`.
#[derive(Debug, Args)]
pub(crate) struct AbRouteArgs {
    /// Unit of assignment: a user or session id (sticky); without it, a random draw
    #[arg(long, value_name = "U")]
    pub(crate) unit: Option<String>,
}

/// Arguments of `afs ab set-weight`.
#[derive(Debug, Args)]
pub(crate) struct AbSetWeightArgs {
    /// The challenger's new share of traffic, strictly between 0 and 1
    #[arg(value_name = "W", allow_negative_numbers = true)]
    pub(crate) weight: f64,

    /// Why, for the history [default: manual weight change by operator]
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Arguments of `afs ab promote`.
#[derive(Debug, Args)]
pub(crate) struct AbPromoteArgs {
    /// Why, for the history [default: manual promote by operator]
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Arguments of `afs ab rollback`.
#[derive(Debug, Args)]
pub(crate) struct AbRollbackArgs {
    /// Why, for the history [default: manual rollback by operator]
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Arguments of `afs ab history`.
#[derive(Debug, Args)]
pub(crate) struct AbHistoryArgs {
    /// At most N events
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,

    /// Only the events of this experiment
    #[arg(long, value_name = "ID")]
    pub(crate) experiment: Option<i64>,

    /// Only events of this kind (repeatable)
    #[arg(long, value_name = "KIND",
          value_parser = ["set_champion", "deploy", "set_weight", "promote", "rollback", "decision"])]
    pub(crate) kind: Vec<String>,
}

/// Arguments of `afs runs`.
#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// At most N runs
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,

    /// Only runs with this status
    #[arg(long, value_name = "STATUS",
          value_parser = ["running", "completed", "failed", "timed_out", "interrupted"])]
    pub(crate) status: Option<String>,
}

/// Arguments of `afs loop`.
#[derive(Debug, Args)]
pub(crate) struct LoopArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: LoopCommand,
}

/// The subcommands of `afs loop`.
#[derive(Debug, Subcommand)]
pub(crate) enum LoopCommand {
    /// Run the loop: an iteration now, then one every check interval, until stopped
    #[command(
        long_about = "Run the loop: an iteration now, then one every check interval \
                      (loop.check_interval, default 1h, measured from the start of one \
                      iteration to the start of the next) until --max-iterations ran or the \
                      process gets SIGINT (Ctrl-C) or SIGTERM.\n\nOn a signal the loop stops \
                      cleanly: a nap ends at once, an iteration in progress (a training run) \
                      finishes first, then a summary is printed and the exit code is 0. A \
                      second signal stops a running trainer (its process group is killed and \
                      the run recorded as interrupted), so the loop stops after that \
                      iteration. A third signal exits at once (code 130); the next start \
                      records the unfinished iteration as interrupted and marks its run \
                      failed.\n\nOne \
                      line per iteration on stdout (with --json, its report as one JSON \
                      object), then the summary. An iteration whose work fails (a trainer \
                      error, a rejected model) is recorded and the loop goes on.",
        after_help = "Examples:\n  \
                      afs loop run --train-cmd 'python train.py --data {data} --out {output_dir}'\n  \
                      afs loop run --interval 30m --eval-cmd './eval.sh {model_path}'\n  \
                      AFS_LOOP__CHECK_INTERVAL=6h afs loop run --json >> loop.jsonl"
    )]
    Run(LoopRunArgs),

    /// Run one iteration now and print what it did
    #[command(
        long_about = "Run one iteration now and print what it did: the experiment's check \
                      (promotion, rollback or keep testing), the trigger check, the retrain \
                      run, the evaluation gate and the deployment, each in words (with --json, \
                      the iteration's report as one JSON object).\n\nThe exit code is 0 when \
                      the iteration did its work, also when nothing was due; 1 when it \
                      recorded a problem (a failed or refused retrain, a model the gate \
                      rejected or the store refused); 130 when SIGINT or SIGTERM stopped its \
                      trainer (the run is recorded as interrupted). Suitable for cron instead \
                      of `afs loop run`.",
        after_help = "Examples:\n  \
                      afs loop once --train-cmd './train.sh {data} {output_dir}'\n  \
                      afs loop once --force --json | jq .summary"
    )]
    Once(LoopOnceArgs),
}

/// The options `afs loop run` and `afs loop once` share.
#[derive(Debug, Args)]
pub(crate) struct LoopOptions {
    /// Trainer command, run with `sh -c`; placeholders as for `afs retrain` [config: trainer.train_cmd]
    #[arg(long, value_name = "CMD")]
    pub(crate) train_cmd: Option<String>,

    /// Evaluation gate: a command that must exit 0 on each new model before it is deployed; placeholders {model_path} {run_id} {run_dir} {data} stand for AFS_MODEL_PATH, AFS_RUN_ID, AFS_RUN_DIR, AFS_DATA_PATH [config: loop.eval_cmd]
    #[arg(long, value_name = "CMD")]
    pub(crate) eval_cmd: Option<String>,
}

/// Arguments of `afs loop run`.
#[derive(Debug, Args)]
pub(crate) struct LoopRunArgs {
    /// Time between iterations: seconds, or e.g. 90s, 30m, 1h, 1d [config: loop.check_interval; default 1h]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub(crate) interval: Option<std::time::Duration>,

    /// Stop after N iterations (default: run until stopped)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_iterations: Option<u64>,

    /// Retrain in the first iteration whatever the triggers say
    #[arg(long)]
    pub(crate) force_first: bool,

    /// Trainer and evaluation commands.
    #[command(flatten)]
    pub(crate) options: LoopOptions,
}

/// Arguments of `afs loop once`.
#[derive(Debug, Args)]
pub(crate) struct LoopOnceArgs {
    /// Retrain whatever the triggers and the cooldown say (not while an experiment runs)
    #[arg(long)]
    pub(crate) force: bool,

    /// Trainer and evaluation commands.
    #[command(flatten)]
    pub(crate) options: LoopOptions,
}

/// Arguments of `afs demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Seed of everything random: the same seed gives the same timeline
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub(crate) seed: u64,

    /// Simulated weeks
    #[arg(long, value_name = "W", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=52))]
    pub(crate) weeks: u32,

    /// Simulated days instead of weeks
    #[arg(long, value_name = "D", conflicts_with = "weeks",
          value_parser = clap::value_parser!(u32).range(1..=366))]
    pub(crate) days: Option<u32>,

    /// Mean requests per simulated hour (traffic follows a daily cycle around it)
    #[arg(long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) requests_per_hour: u32,
}

/// Arguments of `afs config`.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: ConfigCommand,
}

/// The subcommands of `afs config`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration as TOML (with --json, as JSON)
    #[command(
        long_about = "Print the effective configuration: every key of every section with the \
                      value the commands use, after the config file, the environment and --set. \
                      The TOML output starts with a comment naming those layers and is itself \
                      a valid config file; keys that have no default and are not set are left \
                      out. With --json, the same sections as one JSON object.",
        after_help = "Examples:\n  \
                      afs config show > afs.toml   # a full file to start from\n  \
                      afs --set loop.check_interval=30m config show --json | jq .loop"
    )]
    Show,

    /// Check the configuration: print `ok`, or name the bad key and exit 3
    #[command(
        long_about = "Check the configuration as the loop would use it: the config file, the \
                      AFS_<SECTION>__<KEY> environment variables and the --set flags, each \
                      key's type and range, and the combinations the loop needs (e.g. \
                      generator.rehearsal_ratio needs generator.existing). Prints `ok` and \
                      exits 0, or prints the first problem, naming the key and where its value \
                      came from (the file and line, the variable or the flag), and exits 3.",
        after_help = "Examples:\n  afs config check\n  afs --config /etc/afs/afs.toml config check --json"
    )]
    Check,
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
