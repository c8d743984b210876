//! `afs serve`: the HTTP service (JSON API under `/v1`, Prometheus metrics, the live
//! dashboard) over the same store and config file as the CLI, optionally running the
//! continuous loop in the same process.
//!
//! Layout: [`api`] holds the handlers and the route table, [`wire`] parses request bodies
//! and query strings with errors naming the field, [`error`] maps library errors to HTTP
//! statuses, [`auth`] checks bearer tokens, [`routing`] caches the routing snapshot,
//! [`metrics`] renders Prometheus text, [`dashboard`] serves the embedded page,
//! [`learning`] builds the loop for `--with-loop`, and [`load`] is the load generator
//! behind the hidden `afs serve load` (a second process for measuring the service).
//!
//! Store calls block, so every handler runs them on tokio's blocking pool: concurrent
//! single-record `POST /v1/usage` requests then reach the store's group commit together and
//! are committed in one transaction, none acknowledged before its commit.

mod api;
mod auth;
mod dashboard;
mod error;
mod learning;
mod load;
mod metrics;
mod routing;
mod wire;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_abtest::AbTest;
use afs_store::SqliteStore;
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cli::GlobalArgs;
use crate::config;
use crate::exit::InvalidInput;
use crate::store_open::{self, Create};

/// Default limit on a request body: 16 MiB, room for a batch of several thousand records.
const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Default limit on the records of one batch. A batch is one transaction that holds the
/// store's writer, so an unbounded batch would stall every single-record request behind it.
const DEFAULT_MAX_BATCH: usize = 10_000;

/// Arguments of `afs serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed)
    #[arg(
        long,
        env = "AFS_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    addr: SocketAddr,

    /// Bearer token that writes and the dashboard require (repeat the flag for several;
    /// AFS_TOKENS takes a comma-separated list). Without any, nothing asks for a token
    #[arg(
        long = "token",
        env = "AFS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    tokens: Vec<String>,

    /// With tokens: require one on the read endpoints (GET /v1/...) and /metrics too
    #[arg(long)]
    protect_reads: bool,

    /// Largest request body accepted, in bytes; a larger one gets 413
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    max_body_bytes: usize,

    /// Most records accepted in one batch; a larger batch gets 400
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH, value_name = "N")]
    max_batch: usize,

    /// Run the continuous learning loop (triggers, retrain, experiments) in this process
    #[arg(long)]
    with_loop: bool,

    /// Trainer command for --with-loop, as for `afs retrain` (default: train_cmd in [trainer])
    #[arg(long, value_name = "CMD", requires = "with_loop")]
    train_cmd: Option<String>,

    /// Trainer timeout in seconds (default: timeout_secs in [trainer], else a day)
    #[arg(long, value_name = "SECS", requires = "with_loop")]
    train_timeout: Option<u64>,

    /// Time between loop iterations: seconds, or 30m, 1h, 1d (default: check_interval in [loop], else 1h)
    #[arg(long, value_name = "DURATION", requires = "with_loop", value_parser = crate::time_arg::parse_duration)]
    check_interval: Option<Duration>,

    /// With --with-loop: the champion to register when the database has none (default: champion in [loop])
    #[arg(long, value_name = "NAME", requires_all = ["with_loop", "champion_path"])]
    champion: Option<String>,

    /// Where the --champion model lives (a path or URI)
    #[arg(long, value_name = "PATH", requires = "champion")]
    champion_path: Option<String>,

    /// Seconds to wait at shutdown for in-flight requests and the loop's current iteration
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    shutdown_timeout: u64,

    /// Threads serving requests [default: one per CPU]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,

    /// Tools that come with the service.
    #[command(subcommand)]
    tool: Option<ServeTool>,
}

/// Hidden helpers of `afs serve`.
#[derive(Debug, Subcommand)]
enum ServeTool {
    /// Generate load against a running `afs serve` and print throughput and latency as JSON
    #[command(hide = true)]
    Load(load::LoadArgs),
}

/// What every handler shares.
pub(super) struct AppState {
    /// The store (the usage log, runs, experiments).
    store: Arc<SqliteStore>,
    /// Experiment reads (status, comparison, history) with the config file's judge settings.
    ab: AbTest<SqliteStore>,
    /// The routing snapshot behind `GET /v1/route`.
    routing: routing::RoutingCache,
    /// Request and write counters.
    metrics: metrics::Metrics,
    /// Token checks.
    auth: auth::Auth,
    /// Limit on any one text field, from the store's settings.
    max_field_bytes: usize,
    /// Limit on the records of one batch.
    max_batch: usize,
    /// Whether the loop runs in this process.
    with_loop: bool,
    /// When the server started.
    started: Instant,
}

/// Runs `afs serve` (or its load generator) until SIGTERM or SIGINT.
pub(crate) fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(ServeTool::Load(load_args)) = &args.tool {
        return load::run(load_args);
    }
    let auth = auth::Auth::new(&args.tokens, args.protect_reads)?;
    if args.max_body_bytes == 0 {
        return Err(InvalidInput("invalid --max-body-bytes: must be > 0".into()).into());
    }
    if args.max_batch == 0 {
        return Err(InvalidInput("invalid --max-batch: must be > 0".into()).into());
    }
    let config = config::load(global.config.as_deref())?;
    let store_config = config.sqlite_config(&global.db);
    let max_field_bytes = store_config.max_field_bytes;
    let store = Arc::new(store_open::open(store_config, Create::IfMissing)?);
    let learning = if args.with_loop {
        Some(learning::build(store.clone(), &config, args)?)
    } else {
        None
    };
    let ab =
        AbTest::new(store.clone(), config.abtest.clone()).context("invalid [abtest] settings")?;
    let state = Arc::new(AppState {
        store,
        ab,
        routing: routing::RoutingCache::new(),
        metrics: metrics::Metrics::new(api::ROUTES),
        auth,
        max_field_bytes,
        max_batch: args.max_batch,
        with_loop: learning.is_some(),
        started: Instant::now(),
    });

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        builder.worker_threads(usize::from(n));
    }
    let runtime = builder
        .thread_name("afs-serve")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    let result = runtime.block_on(serve(state, args, learning, global.json));
    // Every handler's blocking work has finished once the server drained; this only bounds
    // the wait for a routing refresh or a metrics scrape cut off by the timeout.
    runtime.shutdown_timeout(shutdown_timeout);
    result
}

/// Binds, prints the address, serves until a signal, drains, and stops the loop.
async fn serve(
    state: Arc<AppState>,
    args: &ServeArgs,
    learning: Option<learning::Learning>,
    json: bool,
) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives right after the address is printed must
    // drain the server, not kill the process.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let app = api::router(state.clone(), args.max_body_bytes);

    let loop_thread = learning.as_ref().map(|l| l.start()).transpose()?;
    announce(addr, json, &state)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await
    });

    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    eprintln!("afs serve: {signal} received: draining in-flight requests");
    tracing::info!(signal, "shutting down");
    let deadline = Instant::now() + Duration::from_secs(args.shutdown_timeout);
    // The loop starts no new iteration from now on; one in progress finishes below.
    if let Some(learning) = &learning {
        learning.request_stop();
    }
    let _ = stop_tx.send(true);

    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(anyhow::Error::new(e).context("the server failed")),
        Ok(Err(e)) => return Err(anyhow::anyhow!("the server task failed: {e}")),
        Err(_) => eprintln!(
            "afs serve: requests still in flight after {}s; stopping anyway",
            args.shutdown_timeout
        ),
    }
    if let Some(thread) = loop_thread {
        let left = deadline.saturating_duration_since(Instant::now());
        learning::join(thread, left).await;
    }
    eprintln!("afs serve: stopped");
    Ok(())
}

/// Prints the bound address on stdout, as one line a script can parse:
/// `listening on http://127.0.0.1:8080` (or a JSON object with `--json`).
fn announce(addr: SocketAddr, json: bool, state: &AppState) -> anyhow::Result<()> {
    let url = format!("http://{addr}");
    let mut stdout = std::io::stdout().lock();
    if json {
        let line = serde_json::json!({
            "listening": url,
            "with_loop": state.with_loop,
            "auth": state.auth.enabled(),
        });
        writeln!(stdout, "{line}")?;
    } else {
        writeln!(stdout, "listening on {url}")?;
    }
    stdout.flush()?;
    tracing::info!(%addr, with_loop = state.with_loop, auth = state.auth.enabled(), "serving");
    Ok(())
}
