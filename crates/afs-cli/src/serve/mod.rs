//! `afs serve`: the HTTP service (JSON API under `/v1`, Prometheus metrics, the live
//! dashboard) over the same store and config file as the CLI, optionally running the
//! continuous loop in the same process.
//!
//! Layout: [`api`] holds the handlers and the route table, [`wire`] parses request bodies
//! and query strings with errors naming the field, [`error`] maps library errors to HTTP
//! statuses, [`guard`] refuses requests for other hosts, cross-origin writes and bodies that
//! are not JSON, [`auth`] checks bearer tokens, [`connections`] accepts connections within
//! a limit and with header and body deadlines, [`routing`] caches the routing snapshot,
//! [`metrics`] renders Prometheus text, [`dashboard`] serves the embedded page,
//! and [`learning`] builds the loop for `--with-loop`. (The load generator that measures the
//! service lives in the bench harness, `bench/src/load.rs`.)
//!
//! Store calls block, so every handler runs them on tokio's blocking pool: concurrent
//! single-record `POST /v1/usage` requests then reach the store's group commit together and
//! are committed in one transaction, none acknowledged before its commit.

mod api;
mod auth;
mod connections;
mod dashboard;
mod error;
mod guard;
mod learning;
mod metrics;
mod routing;
mod wire;

pub(crate) use connections::MAX_CONNECTIONS_LIMIT;
pub(crate) use guard::{parse_allowed_host, parse_allowed_origin};

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::any_store::AnyStore;
use afs_abtest::AbTest;
use anyhow::Context;
use clap::Args;

use crate::cli::GlobalArgs;
use crate::config;
use crate::exit::{InvalidInput, Usage};
use crate::store_open::{self, Create};

/// Arguments of `afs serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed)
    /// [default: addr in [serve], else 127.0.0.1:8080]
    #[arg(long, env = "AFS_ADDR", value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,

    /// Bearer token that writes and the dashboard require (repeat the flag for several;
    /// AFS_TOKENS takes a comma-separated list), instead of tokens and token_file in
    /// [serve]. Without any, nothing asks for a token
    #[arg(
        long = "token",
        env = "AFS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    tokens: Vec<String>,

    /// With tokens: require one on the read endpoints (GET /v1/...) and /metrics too
    /// (also protect_reads in [serve])
    #[arg(long)]
    protect_reads: bool,

    /// Largest request body accepted, in bytes; a larger one gets 413 [default:
    /// max_body_bytes in [serve], else 16777216]
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,

    /// Most records accepted in one batch; a larger batch gets 400 [default: max_batch in
    /// [serve], else 10000]
    #[arg(long, value_name = "N")]
    max_batch: Option<usize>,

    /// Run the continuous learning loop (triggers, retrain, experiments) in this process
    /// (also with_loop in [serve])
    #[arg(long)]
    with_loop: bool,

    /// Trainer command for --with-loop, as for `afs retrain` (default: train_cmd in [trainer])
    #[arg(long, value_name = "CMD")]
    train_cmd: Option<String>,

    /// Trainer timeout in seconds (default: timeout_secs in [trainer], else a day)
    #[arg(long, value_name = "SECS")]
    train_timeout: Option<u64>,

    /// Time between loop iterations: seconds, or 30m, 1h, 1d (default: check_interval in [loop], else 1h)
    #[arg(long, value_name = "DURATION", value_parser = crate::time_arg::parse_duration)]
    check_interval: Option<Duration>,

    /// With --with-loop: the champion to register when the database has none (default: champion in [loop])
    #[arg(long, value_name = "NAME", requires = "champion_path")]
    champion: Option<String>,

    /// Where the --champion model lives (a path or URI)
    #[arg(long, value_name = "PATH", requires = "champion")]
    champion_path: Option<String>,

    /// Seconds to wait at shutdown for in-flight requests and the loop's current iteration
    /// [default: shutdown_timeout_secs in [serve], else 30]
    #[arg(long, value_name = "SECS")]
    shutdown_timeout: Option<u64>,

    /// Host name served besides the loopback ones (repeat the flag for several, or give a
    /// comma-separated list), instead of allowed_hosts in [serve]. Other hosts get 421
    /// while the server listens on loopback or any host is listed
    #[arg(long = "allowed-host", value_delimiter = ',', value_name = "HOST")]
    allowed_hosts: Vec<String>,

    /// Origin (scheme://host[:port]) whose web pages may write (repeat the flag for several,
    /// or give a comma-separated list), instead of allowed_origins in [serve]. Other
    /// cross-origin writes get 403
    #[arg(long = "allowed-origin", value_delimiter = ',', value_name = "ORIGIN")]
    allowed_origins: Vec<String>,

    /// Most connections open at once; more wait to be accepted [default: max_connections in
    /// [serve], else 1024]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Seconds a connection has to send a complete request head, also the keep-alive idle
    /// time [default: header_timeout_secs in [serve], else 10]
    #[arg(long, value_name = "SECS")]
    header_timeout: Option<u64>,

    /// Seconds a request has to send its body once its head is in; later is 408 [default:
    /// body_timeout_secs in [serve], else 30]
    #[arg(long, value_name = "SECS")]
    body_timeout: Option<u64>,

    /// Seconds an answer may wait for its client to read any of it; then the connection is
    /// closed [default: write_timeout_secs in [serve], else 30]
    #[arg(long, value_name = "SECS")]
    write_timeout: Option<u64>,

    /// Threads serving requests [default: one per CPU]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
}

/// The settings of this server: the flags (and `AFS_ADDR`, `AFS_TOKENS`) over `[serve]`.
struct Settings {
    addr: SocketAddr,
    max_body_bytes: usize,
    shutdown_timeout: Duration,
    limits: connections::Limits,
}

/// The flags that only mean something with the loop, by name, when given.
fn loop_flags(args: &ServeArgs) -> Vec<&'static str> {
    [
        ("--train-cmd", args.train_cmd.is_some()),
        ("--train-timeout", args.train_timeout.is_some()),
        ("--check-interval", args.check_interval.is_some()),
        ("--champion", args.champion.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect()
}

/// What every handler shares.
pub(super) struct AppState {
    /// The store (the usage log, runs, experiments).
    store: Arc<AnyStore>,
    /// Experiment reads (status, comparison, history) with the config file's judge settings.
    ab: AbTest<AnyStore>,
    /// The serving path (logging, feedback, routing): the loop's when it runs here.
    serving: Arc<afs_loop::Serving<AnyStore>>,
    /// Request and write counters.
    metrics: metrics::Metrics,
    /// Token checks.
    auth: auth::Auth,
    /// Host, origin and content type checks.
    guard: guard::Guard,
    /// Limit on any one text field, from the store's settings.
    max_field_bytes: usize,
    /// Limit on the records of one batch.
    max_batch: usize,
    /// Whether the loop runs in this process.
    with_loop: bool,
    /// When the server started.
    started: Instant,
}

/// Runs `afs serve` until SIGTERM or SIGINT.
pub(crate) fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<()> {
    check_flags(args)?;
    let config = config::load(global)?;
    let s = &config.serve;
    let with_loop = args.with_loop || s.with_loop;
    let loop_only = loop_flags(args);
    if !with_loop && !loop_only.is_empty() {
        return Err(Usage(format!(
            "{} only apply with --with-loop (or with_loop = true in [serve])",
            loop_only.join(", ")
        ))
        .into());
    }
    let auth = auth_of(args, &config)?;
    let (allowed_hosts, allowed_origins) = allowed_hosts_and_origins(args, s)?;
    let settings = settings_of(args, s);
    let guard = guard::Guard::new(settings.addr, allowed_hosts, allowed_origins);
    let max_batch = args.max_batch.unwrap_or(s.max_batch);
    let store_config = config.store_config(&global.db);
    let max_field_bytes = store_config.max_field_bytes();
    refuse_missing_file(&store_config)?;
    let store = Arc::new(store_open::open(store_config, Create::Never)?);
    let learning = if with_loop {
        Some(learning::build(store.clone(), &config, args)?)
    } else {
        None
    };
    let ab =
        AbTest::new(store.clone(), config.abtest.clone()).context("invalid [abtest] settings")?;
    // One serving path: the loop's, with its router, when it runs in this process (its
    // deployments then reach routing at once); the library's default otherwise.
    let serving = match &learning {
        Some(learning) => learning.serving(),
        None => Arc::new(afs_loop::Serving::new(store.clone())),
    };
    let state = Arc::new(AppState {
        store,
        ab,
        serving,
        metrics: metrics::Metrics::new(api::ROUTES),
        auth,
        guard,
        max_field_bytes,
        max_batch,
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
    let shutdown_timeout = settings.shutdown_timeout;
    // The store is dropped here, after the runtime, never inside it: a PostgreSQL store's
    // connections close by blocking on a runtime of their own, which cannot start on a
    // thread that drives async tasks (it panicked at shutdown).
    let store_owner = state.clone();
    let result = runtime.block_on(serve(state, &settings, learning, global.json));
    // Every handler's blocking work has finished once the server drained; this only bounds
    // the wait for a routing refresh or a metrics scrape cut off by the timeout.
    runtime.shutdown_timeout(shutdown_timeout);
    drop(store_owner);
    result
}

/// Refuses flag values out of range, before anything is read.
fn check_flags(args: &ServeArgs) -> anyhow::Result<()> {
    if args.max_body_bytes == Some(0) {
        return Err(InvalidInput("invalid --max-body-bytes: must be > 0".into()).into());
    }
    if args.max_batch == Some(0) {
        return Err(InvalidInput("invalid --max-batch: must be > 0".into()).into());
    }
    if args
        .max_connections
        .is_some_and(|n| !(1..=MAX_CONNECTIONS_LIMIT).contains(&n))
    {
        return Err(InvalidInput(format!(
            "invalid --max-connections: must be within 1..={MAX_CONNECTIONS_LIMIT}"
        ))
        .into());
    }
    for (flag, value) in [
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--write-timeout", args.write_timeout),
    ] {
        if value == Some(0) {
            return Err(InvalidInput(format!("invalid {flag}: must be > 0")).into());
        }
    }
    Ok(())
}

/// The token check: tokens from the flags (or `AFS_TOKENS`) replace those of the
/// configuration.
fn auth_of(args: &ServeArgs, config: &config::Config) -> anyhow::Result<auth::Auth> {
    let s = &config.serve;
    let (tokens, tokens_from) = if args.tokens.is_empty() {
        let key = if s.tokens.is_empty() && s.token_file.is_some() {
            "serve.token_file"
        } else {
            "serve.tokens"
        };
        (config.serve_tokens()?, config.key_name(key))
    } else {
        (args.tokens.clone(), "--token (or AFS_TOKENS)".to_string())
    };
    let protect_from = if args.protect_reads {
        "--protect-reads".to_string()
    } else {
        config.key_name("serve.protect_reads")
    };
    auth::Auth::new(
        &tokens,
        args.protect_reads || s.protect_reads,
        &tokens_from,
        &protect_from,
    )
}

/// The host names and origins the guard admits: those of the flags replace those of the
/// configuration.
fn allowed_hosts_and_origins(
    args: &ServeArgs,
    s: &config::ServeSettings,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let allowed_hosts = if args.allowed_hosts.is_empty() {
        s.allowed_hosts.clone()
    } else {
        args.allowed_hosts
            .iter()
            .map(|h| parse_allowed_host(h))
            .collect::<Result<_, _>>()
            .map_err(|reason| InvalidInput(format!("invalid --allowed-host: {reason}")))?
    };
    let allowed_origins = if args.allowed_origins.is_empty() {
        s.allowed_origins.clone()
    } else {
        args.allowed_origins
            .iter()
            .map(|o| parse_allowed_origin(o))
            .collect::<Result<_, _>>()
            .map_err(|reason| InvalidInput(format!("invalid --allowed-origin: {reason}")))?
    };
    Ok((allowed_hosts, allowed_origins))
}

/// The service's settings: each flag, or else its key of `[serve]`.
fn settings_of(args: &ServeArgs, s: &config::ServeSettings) -> Settings {
    Settings {
        addr: args.addr.unwrap_or(s.addr),
        max_body_bytes: args.max_body_bytes.unwrap_or(s.max_body_bytes),
        shutdown_timeout: args
            .shutdown_timeout
            .map_or(s.shutdown_timeout, Duration::from_secs),
        limits: connections::Limits {
            max_connections: args.max_connections.unwrap_or(s.max_connections),
            header_timeout: args
                .header_timeout
                .map_or(s.header_timeout, Duration::from_secs),
            body_timeout: args
                .body_timeout
                .map_or(s.body_timeout, Duration::from_secs),
            write_timeout: args
                .write_timeout
                .map_or(s.write_timeout, Duration::from_secs),
        },
    }
}

/// Serving an empty database that a typo in --db created would hide the mistake: like every
/// command but `log`, `import` and `ab set-champion`, serve needs an existing one (a
/// PostgreSQL database without afs's tables is refused when opened).
fn refuse_missing_file(store_config: &crate::any_store::StoreConfig) -> anyhow::Result<()> {
    if let Some(path) = store_config.file().filter(|path| !path.exists()) {
        anyhow::bail!(
            "database {path} does not exist, and afs serve does not create one: create it \
             first (`afs --db {path} import /dev/null` makes an empty one; `afs log`, \
             `afs import` and `afs ab set-champion` create it too), or pass --db PATH (or set \
             AFS_DB) naming an existing database",
            path = path.display()
        );
    }
    Ok(())
}

/// Binds, prints the address, serves until a signal, drains, and stops the loop.
async fn serve(
    state: Arc<AppState>,
    settings: &Settings,
    learning: Option<learning::Learning>,
    json: bool,
) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives right after the address is printed must
    // drain the server, not kill the process.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;

    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let app = api::router(state.clone(), settings.max_body_bytes);

    let loop_thread = learning.as_ref().map(|l| l.start()).transpose()?;
    announce(addr, json, &state)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(connections::serve(listener, app, settings.limits, stop_rx));

    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    eprintln!("afs serve: {signal} received: draining in-flight requests");
    tracing::info!(signal, "shutting down");
    let deadline = Instant::now() + settings.shutdown_timeout;
    // The loop starts no new iteration from now on; one in progress finishes below.
    if let Some(learning) = &learning {
        learning.request_stop();
    }
    let _ = stop_tx.send(true);

    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::anyhow!("the server task failed: {e}")),
        Err(_) => eprintln!(
            "afs serve: requests still in flight after {}s; stopping anyway",
            settings.shutdown_timeout.as_secs()
        ),
    }
    if let (Some(thread), Some(learning)) = (loop_thread, &learning) {
        let left = deadline.saturating_duration_since(Instant::now());
        learning::join(learning, thread, left).await;
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
        writeln!(stdout, "{}", crate::output::json_text(&line)?)?;
    } else {
        writeln!(stdout, "listening on {url}")?;
    }
    stdout.flush()?;
    tracing::info!(
        %addr,
        with_loop = state.with_loop,
        auth = state.auth.enabled(),
        host_check = state.guard.checks_host(),
        "serving"
    );
    Ok(())
}
