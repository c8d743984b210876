//! `afs-bench serve-load` (hidden): a load generator for a running `afs serve`, run by the
//! serve group ([`crate::serve`]) as a second process so that it measures the service the
//! way its clients see it.
//!
//! It opens N keep-alive HTTP/1.1 connections on loopback and sends requests back to back
//! on each (a closed loop: one request in flight per connection) for a bounded time and
//! count, then prints one JSON object: requests, errors, records written, throughput and
//! latency percentiles measured after a warm-up. The HTTP client is written by hand over
//! tokio's TCP stream so that the generator costs as little CPU as possible next to the
//! server on the same machine. It refuses any address that is not loopback.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest run allowed, so a mistyped duration cannot load the machine for long.
const MAX_DURATION_SECS: f64 = 600.0;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// `POST /v1/usage` with one record per request.
    Usage,
    /// `POST /v1/usage` with `--batch-size` records per request.
    Batch,
    /// `GET /v1/route?unit=...` with a different unit per request.
    Route,
}

/// Arguments of `afs-bench serve-load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080 (loopback addresses only)
    #[arg(long, value_name = "URL")]
    url: String,

    /// What to send
    #[arg(long, value_enum, default_value = "usage")]
    scenario: Scenario,

    /// Concurrent connections, each with one request in flight
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,

    /// How long to send, after the warm-up, in seconds (at most 600)
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,

    /// Warm-up before measuring, in seconds (its requests are not counted)
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,

    /// Stop after this many requests in all (warm-up included)
    #[arg(long, default_value_t = 2_000_000, value_name = "N")]
    max_requests: u64,

    /// Records per request for `--scenario batch`
    #[arg(long, default_value_t = 1000, value_name = "N")]
    batch_size: usize,

    /// Bearer token to send (needed for writes when the server has tokens)
    #[arg(long, env = "AFS_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Model name of the records sent
    #[arg(long, default_value = "load-v1", value_name = "NAME")]
    model: String,

    /// Threads of the generator (default 1, leaving the other cores to the server)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,

    /// Send at this many requests per second in all, on a fixed schedule, instead of as fast
    /// as the server answers; latency then counts from each request's scheduled time, so a
    /// slow answer that delays the next request is not hidden
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnectionReport {
    /// Latencies of measured requests, in microseconds.
    latencies_us: Vec<u32>,
    /// Measured requests answered 2xx.
    ok: u64,
    /// Measured requests answered otherwise, or failed on the connection.
    errors: u64,
    /// Records written by measured requests.
    records: u64,
    /// First error seen, for the report.
    first_error: Option<String>,
    /// When the last measured request finished.
    last_done: Option<Instant>,
}

/// Plan shared by the connections.
struct Plan {
    addr: SocketAddr,
    host: String,
    scenario: Scenario,
    batch_size: usize,
    token: Option<String>,
    model: String,
    started: Instant,
    measure_from: Instant,
    deadline: Instant,
    max_requests: u64,
    issued: AtomicU64,
    /// With `--rate`: the time between two requests of one connection.
    interval: Option<Duration>,
    connections: u16,
}

/// Runs the generator and prints its report as one JSON line.
pub(crate) fn run(args: &LoadArgs) -> anyhow::Result<()> {
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_SECS) {
        bail!(
            "invalid --duration: {} is not within (0, {MAX_DURATION_SECS}]",
            args.duration
        );
    }
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0 && rate <= 1e6))
    {
        bail!("invalid --rate: must be within (0, 1000000]");
    }
    if !(0.0..=60.0).contains(&args.warmup) {
        bail!("invalid --warmup: must be within [0, 60]");
    }
    if args.scenario == Scenario::Batch && !(1..=100_000).contains(&args.batch_size) {
        bail!("invalid --batch-size: must be within [1, 100000]");
    }
    let (addr, host) = loopback_addr(&args.url)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        addr,
        host,
        scenario: args.scenario,
        batch_size: args.batch_size,
        token: args.token.clone(),
        model: args.model.clone(),
        started,
        measure_from,
        deadline: measure_from + Duration::from_secs_f64(args.duration),
        max_requests: args.max_requests,
        issued: AtomicU64::new(0),
        interval: args
            .rate
            .map(|rate| Duration::from_secs_f64(f64::from(args.connections) / rate)),
        connections: args.connections,
    });
    let reports = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(connection(plan.clone(), usize::from(i))))
            .collect();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(task.await.unwrap_or_default());
        }
        reports
    });
    print_report(args, &plan, reports)
}

/// The socket address of a loopback URL `http://HOST:PORT`, and its `Host` header.
fn loopback_addr(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("invalid --url {url:?}: must start with http://"))?;
    let host = rest.trim_end_matches('/');
    if host.contains('/') {
        bail!("invalid --url {url:?}: give the server's base URL, without a path");
    }
    let addrs: Vec<SocketAddr> = host
        .to_socket_addrs()
        .with_context(|| format!("invalid --url {url:?}"))?
        .collect();
    match addrs.into_iter().find(|a| a.ip().is_loopback()) {
        Some(addr) => Ok((addr, host.to_string())),
        None => bail!("invalid --url {url:?}: the load generator only targets loopback addresses"),
    }
}

/// One record of the load, distinct per connection and request.
fn record(body: &mut String, model: &str, conn: usize, i: u64) {
    use std::fmt::Write as _;
    let _ = write!(
        body,
        "{{\"query\":\"load query {conn}-{i}: how does the service hold up?\",\
         \"response\":\"a response of moderate length for request {i} on connection {conn}\",\
         \"model\":\"{model}\",\"quality_score\":0.{q},\"latency_ms\":{lat},\"unit\":\"user-{unit}\"}}",
        q = 50 + (i % 50),
        lat = 20 + (i % 200),
        unit = (conn as u64 * 7919 + i) % 5000,
    );
}

/// The bytes of request `i` on connection `conn`, and the records it writes.
fn request(plan: &Plan, conn: usize, i: u64) -> (Vec<u8>, u64) {
    let auth = plan
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let post = |body: String| {
        format!(
            "POST /v1/usage HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            plan.host,
            body.len()
        )
        .into_bytes()
    };
    match plan.scenario {
        Scenario::Usage => {
            let mut body = String::with_capacity(256);
            record(&mut body, &plan.model, conn, i);
            (post(body), 1)
        }
        Scenario::Batch => {
            let mut body = String::with_capacity(plan.batch_size * 230 + 2);
            body.push('[');
            for k in 0..plan.batch_size as u64 {
                if k > 0 {
                    body.push(',');
                }
                record(&mut body, &plan.model, conn, i * plan.batch_size as u64 + k);
            }
            body.push(']');
            (post(body), plan.batch_size as u64)
        }
        Scenario::Route => (
            format!(
                "GET /v1/route?unit=user-{} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
                (conn as u64 * 7919 + i) % 100_000,
                plan.host
            )
            .into_bytes(),
            0,
        ),
    }
}

/// Sends requests on one keep-alive connection until the plan's deadline or count.
async fn connection(plan: Arc<Plan>, conn: usize) -> ConnectionReport {
    let started_at = plan.started;
    let mut report = ConnectionReport::default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut i = 0u64;
    loop {
        if Instant::now() >= plan.deadline
            || plan.issued.fetch_add(1, Ordering::Relaxed) >= plan.max_requests
        {
            return report;
        }
        let (bytes, records) = request(&plan, conn, i);
        i += 1;
        let started = match plan.interval {
            // Connection `conn` sends at offsets conn/connections of the interval, so the
            // requests of all connections are spread evenly over time.
            Some(interval) => {
                let due = started_at
                    + interval.mul_f64(i as f64 - 1.0 + conn as f64 / f64::from(plan.connections));
                if due >= plan.deadline {
                    return report;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let measured = started >= plan.measure_from;
        if stream.is_none() {
            match TcpStream::connect(plan.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(e) => {
                    report.errors += u64::from(measured);
                    report
                        .first_error
                        .get_or_insert_with(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let outcome = exchange(s, &bytes, &mut buf).await;
        let elapsed = started.elapsed();
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                if measured {
                    report.ok += 1;
                    report.records += records;
                }
            }
            Ok(status) => {
                report.errors += u64::from(measured);
                report.first_error.get_or_insert_with(|| {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&buf))
                });
            }
            Err(e) => {
                report.errors += u64::from(measured);
                report.first_error.get_or_insert_with(|| e.to_string());
                stream = None;
            }
        }
        if measured {
            report
                .latencies_us
                .push(elapsed.as_micros().min(u128::from(u32::MAX)) as u32);
            report.last_done = Some(Instant::now());
        }
    }
}

/// Writes one request and reads its response; returns the status. The body is left in `buf`.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    stream.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .context("response without Content-Length")?;
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..header_end);
    Ok(status)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn print_report(
    args: &LoadArgs,
    plan: &Plan,
    reports: Vec<ConnectionReport>,
) -> anyhow::Result<()> {
    let mut latencies: Vec<u32> = Vec::new();
    let (mut ok, mut errors, mut records) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut last_done = plan.measure_from;
    for r in reports {
        latencies.extend(r.latencies_us);
        ok += r.ok;
        errors += r.errors;
        records += r.records;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        if let Some(t) = r.last_done {
            last_done = last_done.max(t);
        }
    }
    latencies.sort_unstable();
    let elapsed = last_done
        .saturating_duration_since(plan.measure_from)
        .as_secs_f64()
        .max(1e-9);
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / latencies.len() as f64 / 1000.0
    };
    let report = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "url": args.url,
        "connections": args.connections,
        "rate": args.rate,
        "batch_size": (args.scenario == Scenario::Batch).then_some(args.batch_size),
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "records": records,
        "elapsed_secs": elapsed,
        "requests_per_sec": (ok + errors) as f64 / elapsed,
        "records_per_sec": records as f64 / elapsed,
        "latency_ms": {
            "mean": mean,
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
            "max": percentile(&latencies, 1.0),
        },
    });
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_a_target() {
        assert!(loopback_addr("http://127.0.0.1:8080").is_ok());
        assert!(loopback_addr("http://[::1]:8080/").is_ok());
        assert!(loopback_addr("http://10.1.2.3:8080").is_err());
        assert!(loopback_addr("https://127.0.0.1:8080").is_err());
        assert!(loopback_addr("http://127.0.0.1:8080/v1").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn records_are_valid_json() {
        let mut body = String::new();
        record(&mut body, "m", 3, 17);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["model"], "m");
        assert_eq!(value["quality_score"], 0.67);
    }
}
