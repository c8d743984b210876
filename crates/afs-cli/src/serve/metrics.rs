//! `GET /metrics`: Prometheus text format. Counters of what this process served and wrote,
//! kept in atomics on the request path, and gauges read from the store's rollups, runs and
//! event log at each scrape (so they are right whichever process wrote the data).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_store::{
    EventFilter, EventKind, ExperimentStore, FeedbackValue, RunStatus, RunStore, StatsWindow,
    UsageStats, UsageStore,
};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::api::RouteSpec;
use super::error::ApiError;
use super::AppState;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Status classes counted per route: 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency and outcomes of one route.
struct RouteMetrics {
    method: &'static str,
    path: &'static str,
    /// Requests per latency bucket (not cumulative; the last slot is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies, in nanoseconds.
    sum_nanos: AtomicU64,
    /// Requests per status class.
    classes: [AtomicU64; 5],
}

/// The process's counters.
pub(super) struct Metrics {
    routes: Vec<RouteMetrics>,
    /// Requests that matched no route (answered 404 or 405).
    unmatched: AtomicU64,
    in_flight: AtomicU64,
    records_logged: AtomicU64,
    batches_logged: AtomicU64,
    /// Feedback recorded, by value: negative, neutral, positive.
    feedback: [AtomicU64; 3],
    started_unix: f64,
}

impl Metrics {
    /// Counters for the routes of `routes`, all at zero.
    pub(super) fn new(routes: &[RouteSpec]) -> Self {
        Metrics {
            routes: routes
                .iter()
                .map(|r| RouteMetrics {
                    method: r.method.as_str(),
                    path: r.path,
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_nanos: AtomicU64::new(0),
                    classes: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            unmatched: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            records_logged: AtomicU64::new(0),
            batches_logged: AtomicU64::new(0),
            feedback: std::array::from_fn(|_| AtomicU64::new(0)),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Counts `n` records written by one request (a batch when `batch`).
    pub(super) fn logged(&self, n: usize, batch: bool) {
        self.records_logged.fetch_add(n as u64, Ordering::Relaxed);
        if batch {
            self.batches_logged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one feedback recorded.
    pub(super) fn feedback(&self, value: FeedbackValue) {
        let slot = (value.as_i64() + 1) as usize;
        self.feedback[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, method: &str, path: Option<&str>, status: u16, elapsed: Duration) {
        let Some(route) = path.and_then(|p| {
            self.routes
                .iter()
                .find(|r| r.path == p && r.method == method)
        }) else {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|upper| secs <= *upper)
            .unwrap_or(BUCKETS.len());
        route.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        route
            .sum_nanos
            .fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        route.classes[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Middleware: times every request and counts it under its route and status class.
pub(super) async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.extensions().get::<MatchedPath>().cloned();
    let metrics = &state.metrics;
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(request).await;
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics.observe(
        method.as_str(),
        path.as_ref().map(MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Escapes a label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A number as Prometheus writes it (`NaN`, `+Inf` for the odd ones).
fn num(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// Renders every metric. Reads the store: call it on the blocking pool.
pub(super) fn render(state: &AppState) -> Result<String, ApiError> {
    let store = &*state.store;
    let now = store.clock().now();
    let all = store.stats_by_model(&StatsWindow::default())?;
    let day = store.stats_by_model(&StatsWindow {
        since: Some(now - chrono::Duration::hours(24)),
        ..StatsWindow::default()
    })?;
    let runs = store.runs(usize::MAX)?;
    let count_events = |kind: EventKind| -> Result<usize, ApiError> {
        Ok(store
            .events(&EventFilter {
                kinds: vec![kind],
                ..EventFilter::default()
            })?
            .len())
    };
    let promotions = count_events(EventKind::Promote)?;
    let rollbacks = count_events(EventKind::Rollback)?;
    let status = state.ab.status()?;
    let loop_state = afs_loop::LoopState::load(store)?;

    let mut out = String::with_capacity(8192);
    let m = &state.metrics;

    header(&mut out, "afs_build_info", "gauge", "Version of the afs binary serving (always 1).");
    let _ = writeln!(
        out,
        "afs_build_info{{version=\"{}\",with_loop=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        state.with_loop
    );
    header(&mut out, "afs_process_start_time_seconds", "gauge", "When this server started, in Unix seconds.");
    let _ = writeln!(out, "afs_process_start_time_seconds {}", num(m.started_unix));

    // What this process wrote.
    header(&mut out, "afs_usage_records_logged_total", "counter", "Usage records logged through this server since it started.");
    let _ = writeln!(out, "afs_usage_records_logged_total {}", m.records_logged.load(Ordering::Relaxed));
    header(&mut out, "afs_usage_batches_logged_total", "counter", "Batches logged through this server since it started.");
    let _ = writeln!(out, "afs_usage_batches_logged_total {}", m.batches_logged.load(Ordering::Relaxed));
    header(&mut out, "afs_feedback_recorded_total", "counter", "Feedback recorded through this server since it started, by value.");
    for (i, value) in ["negative", "neutral", "positive"].iter().enumerate() {
        let _ = writeln!(
            out,
            "afs_feedback_recorded_total{{value=\"{value}\"}} {}",
            m.feedback[i].load(Ordering::Relaxed)
        );
    }

    // What the store holds, per model.
    let per_model = |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&UsageStats) -> Option<f64>, stats: &BTreeMap<String, UsageStats>| {
        header(out, name, kind, help);
        for (model, s) in stats {
            if let Some(v) = f(s) {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), num(v));
            }
        }
    };
    per_model(&mut out, "afs_records", "gauge", "Usage records in the store, per model.", &|s| Some(s.total as f64), &all);
    per_model(&mut out, "afs_records_with_feedback", "gauge", "Records with feedback in the store, per model.", &|s| Some(s.with_feedback as f64), &all);
    header(&mut out, "afs_feedback", "gauge", "Records in the store by feedback value, per model.");
    for (model, s) in &all {
        for (value, n) in [
            ("negative", s.negative_feedback),
            ("neutral", s.neutral_feedback),
            ("positive", s.positive_feedback),
        ] {
            let _ = writeln!(out, "afs_feedback{{model=\"{}\",value=\"{value}\"}} {n}", label(model));
        }
    }
    let windowed = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&UsageStats) -> Option<f64>| {
        header(out, name, "gauge", help);
        for (window, stats) in [("all", &all), ("24h", &day)] {
            for (model, s) in stats {
                if let Some(v) = f(s) {
                    let _ = writeln!(
                        out,
                        "{name}{{model=\"{}\",window=\"{window}\"}} {}",
                        label(model),
                        num(v)
                    );
                }
            }
        }
    };
    windowed(&mut out, "afs_model_quality", "Mean quality score per model, over the whole log (window=\"all\") and the last 24 hours.", &UsageStats::avg_quality_score);
    windowed(&mut out, "afs_model_feedback_rate", "Share of records with feedback per model.", &|s| Some(s.feedback_rate()));
    windowed(&mut out, "afs_model_positive_rate", "Share of positive feedback among records with feedback, per model.", &UsageStats::positive_rate);
    windowed(&mut out, "afs_model_latency_ms", "Mean latency in milliseconds per model.", &UsageStats::avg_latency_ms);

    // Serving state and experiments.
    header(&mut out, "afs_traffic_share", "gauge", "Share of traffic routed to each serving model.");
    if let Some(champion) = &status.champion {
        let weight = status.experiment.as_ref().map_or(0.0, |e| e.challenger_weight);
        let _ = writeln!(out, "afs_traffic_share{{model=\"{}\",arm=\"champion\"}} {}", label(&champion.name), num(1.0 - weight));
        if let Some(e) = &status.experiment {
            let _ = writeln!(out, "afs_traffic_share{{model=\"{}\",arm=\"challenger\"}} {}", label(&e.challenger), num(weight));
        }
    }
    header(&mut out, "afs_experiment_running", "gauge", "1 while a champion/challenger experiment runs.");
    let _ = writeln!(out, "afs_experiment_running {}", u8::from(status.experiment.is_some()));
    header(&mut out, "afs_promotions_total", "counter", "Challengers promoted to champion (from the store's event log).");
    let _ = writeln!(out, "afs_promotions_total {promotions}");
    header(&mut out, "afs_rollbacks_total", "counter", "Challengers rolled back (from the store's event log).");
    let _ = writeln!(out, "afs_rollbacks_total {rollbacks}");

    header(&mut out, "afs_retrains", "gauge", "Retrain runs in the store, by status.");
    for run_status in [
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Interrupted,
    ] {
        let n = runs.iter().filter(|r| r.status == run_status).count();
        let _ = writeln!(out, "afs_retrains{{status=\"{}\"}} {n}", run_status.as_str());
    }
    header(&mut out, "afs_loop_iterations_total", "counter", "Iterations of the continuous loop on this database (any process), by outcome.");
    let _ = writeln!(out, "afs_loop_iterations_total{{outcome=\"all\"}} {}", loop_state.iterations);
    let _ = writeln!(out, "afs_loop_iterations_total{{outcome=\"failed\"}} {}", loop_state.failed_iterations);
    let _ = writeln!(out, "afs_loop_iterations_total{{outcome=\"interrupted\"}} {}", loop_state.interrupted_iterations);

    // Requests served by this process.
    header(&mut out, "afs_http_requests_in_flight", "gauge", "Requests being served now.");
    let _ = writeln!(out, "afs_http_requests_in_flight {}", m.in_flight.load(Ordering::Relaxed));
    header(&mut out, "afs_http_requests_total", "counter", "Requests served, by route and status class.");
    for route in &m.routes {
        for (i, class) in CLASSES.iter().enumerate() {
            let n = route.classes[i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "afs_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{class}\"}} {n}",
                    route.method, route.path
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "afs_http_requests_total{{method=\"\",route=\"unmatched\",status=\"4xx\"}} {}",
        m.unmatched.load(Ordering::Relaxed)
    );
    header(&mut out, "afs_http_request_duration_seconds", "histogram", "Time from receiving a request to its response, by route.");
    for route in &m.routes {
        let labels = format!("method=\"{}\",route=\"{}\"", route.method, route.path);
        let mut cumulative = 0u64;
        for (i, upper) in BUCKETS.iter().enumerate() {
            cumulative += route.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "afs_http_request_duration_seconds_bucket{{{labels},le=\"{upper}\"}} {cumulative}");
        }
        cumulative += route.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "afs_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = route.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "afs_http_request_duration_seconds_sum{{{labels}}} {}", num(sum));
        let _ = writeln!(out, "afs_http_request_duration_seconds_count{{{labels}}} {cumulative}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("plain-v1"), "plain-v1");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn latencies_fall_into_buckets() {
        let specs = super::super::api::ROUTES;
        let metrics = Metrics::new(specs);
        let first = &specs[0];
        metrics.observe(first.method.as_str(), Some(first.path), 200, Duration::from_micros(300));
        metrics.observe(first.method.as_str(), Some(first.path), 500, Duration::from_secs(60));
        metrics.observe("GET", Some("/nowhere"), 404, Duration::from_micros(1));
        let route = &metrics.routes[0];
        assert_eq!(route.buckets[1].load(Ordering::Relaxed), 1, "0.3 ms is in the 0.5 ms bucket");
        assert_eq!(route.buckets[BUCKETS.len()].load(Ordering::Relaxed), 1, "60 s is in +Inf");
        assert_eq!(route.classes[1].load(Ordering::Relaxed), 1);
        assert_eq!(route.classes[4].load(Ordering::Relaxed), 1);
        assert_eq!(metrics.unmatched.load(Ordering::Relaxed), 1);
    }
}
