//! `GET /metrics`: Prometheus text format. Counters of what this process served and wrote,
//! kept in atomics on the request path, and gauges read from the store's rollups, runs and
//! event log at each scrape (so they are right whichever process wrote the data).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_store::{
    EventKind, ExperimentStore, FeedbackValue, RunStatus, RunStore, StatsWindow, UsageStats,
    UsageStore,
};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::api::RouteSpec;
use super::error::ApiError;
use super::guard::Refusal;
use super::AppState;

/// The most `model` label values a scrape exports: the serving models first, then those
/// with the most records in the last 24 hours, then over the whole log. Every model name
/// ever logged would make the scrape (and the series in Prometheus) grow without bound.
const MAX_MODEL_LABELS: usize = 20;

/// The longest `model` label value, in bytes; a longer name is cut (see [`model_label`]).
const MAX_LABEL_BYTES: usize = 128;

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
    /// Requests that matched no route or method (answered 404 or 405); the route layers
    /// never see them, so the fallbacks count them.
    unmatched: AtomicU64,
    in_flight: AtomicU64,
    records_logged: AtomicU64,
    batches_logged: AtomicU64,
    /// Feedback recorded, by value: negative, neutral, positive.
    feedback: [AtomicU64; 3],
    /// Requests refused by the guard, by [`Refusal::ALL`].
    refused: [AtomicU64; Refusal::ALL.len()],
    started_unix: f64,
}

impl Metrics {
    /// Counters for the routes of `routes`, all at zero.
    pub(super) fn new(routes: &'static [RouteSpec]) -> Self {
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
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
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

    /// Counts a request that matched no route or no method of its route.
    pub(super) fn unmatched(&self) {
        self.unmatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the guard refused.
    pub(super) fn refused(&self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
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
        route.sum_nanos.fetch_add(
            elapsed.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        route.classes[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Middleware: times every request and counts it under its route and status class.
pub(super) async fn track(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
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

/// A model name as a label value, escaped: a name longer than [`MAX_LABEL_BYTES`] is cut
/// on a character boundary and ends with `…` and a hash of the whole name, so that two long
/// names sharing a prefix stay two series.
fn model_label(name: &str) -> String {
    if name.len() <= MAX_LABEL_BYTES {
        return label(name);
    }
    let mut end = MAX_LABEL_BYTES - 28;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    label(&format!("{}…{:016x}", &name[..end], fnv1a(name.as_bytes())))
}

/// The 64-bit FNV-1a hash of `bytes` (stable across builds, unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The models exported with a `model` label, at most [`MAX_MODEL_LABELS`]: those of
/// `serving` first, then by records in `day`, then by records in `all`, then by name.
fn exported_models<'a>(
    serving: &[&'a str],
    all: &'a BTreeMap<String, UsageStats>,
    day: &BTreeMap<String, UsageStats>,
) -> Vec<&'a str> {
    let mut chosen: Vec<&'a str> = Vec::new();
    for name in serving {
        if !chosen.contains(name) {
            chosen.push(name);
        }
    }
    let mut rest: Vec<(&'a str, u64, u64)> = all
        .iter()
        .filter(|(name, _)| !chosen.contains(&name.as_str()))
        .map(|(name, s)| (name.as_str(), day.get(name).map_or(0, |d| d.total), s.total))
        .collect();
    rest.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    chosen.extend(rest.into_iter().map(|(name, _, _)| name));
    chosen.truncate(MAX_MODEL_LABELS);
    chosen
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

/// Writes one metric family: its `# HELP` and `# TYPE` lines, then one sample per
/// `(labels, value)`, where `labels` is the text between the braces (empty for none).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) {
    header(out, name, kind, help);
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {}", num(value));
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {}", num(value));
        }
    }
}

/// A summary without quantiles: `NAME_sum` and `NAME_count` per label set.
fn summary(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64, f64)>,
) {
    header(out, name, "summary", help);
    for (labels, sum, count) in samples {
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", num(sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", num(count));
    }
}

/// A sample without labels.
fn plain(value: f64) -> [(String, f64); 1] {
    [(String::new(), value)]
}

/// Renders every metric. Reads the store: call it on the blocking pool.
pub(super) fn render(state: &AppState) -> Result<String, ApiError> {
    let snapshot = Snapshot::read(state)?;
    let mut out = String::with_capacity(8192);
    write_process(&mut out, state);
    write_models(&mut out, &snapshot);
    write_serving(&mut out, &snapshot);
    write_http(&mut out, &state.metrics);
    Ok(out)
}

/// What a scrape reports from the store: read first, then written out.
struct Snapshot {
    /// The exported models' statistics over all time.
    all: std::collections::BTreeMap<String, afs_store::UsageStats>,
    /// Models in the store left out of the per-model metrics.
    omitted: usize,
    status: afs_abtest::AbStatus,
    /// Retrain runs by status.
    runs: Vec<(RunStatus, u64)>,
    promotions: u64,
    rollbacks: u64,
    last_decision: Option<afs_store::Decision>,
    loop_state: afs_loop::LoopState,
}

impl Snapshot {
    fn read(state: &AppState) -> Result<Snapshot, ApiError> {
        let store = &*state.store;
        let now = store.clock().now();
        let mut all = store.stats_by_model(&StatsWindow::default())?;
        let day = store.stats_by_model(&StatsWindow {
            since: Some(now - chrono::Duration::hours(24)),
            ..StatsWindow::default()
        })?;
        // Counted by the store, not read row by row: a scrape costs the same after years.
        let mut runs = Vec::new();
        for status in [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::TimedOut,
            RunStatus::Interrupted,
        ] {
            runs.push((status, store.count_runs(status)?));
        }
        let promotions = store.count_events(EventKind::Promote)?;
        let status = state.ab.status()?;
        let last_decision = match &status.experiment {
            Some(e) => store
                .events(&afs_store::EventFilter {
                    experiment_id: Some(e.id),
                    kinds: vec![EventKind::Decision],
                    limit: Some(1),
                    newest_first: true,
                })?
                .into_iter()
                .next()
                .and_then(|event| event.decision),
            None => None,
        };
        let rollbacks = store.count_events(EventKind::Rollback)?;
        // Only a bounded set of models gets series of its own.
        let serving: Vec<&str> = status
            .champion
            .iter()
            .map(|c| c.name.as_str())
            .chain(status.experiment.iter().map(|e| e.challenger.as_str()))
            .collect();
        let exported: Vec<String> = exported_models(&serving, &all, &day)
            .into_iter()
            .map(str::to_string)
            .collect();
        let omitted = all.keys().filter(|name| !exported.contains(name)).count();
        all.retain(|name, _| exported.contains(name));
        let loop_state = afs_loop::LoopState::load(store)?;
        Ok(Snapshot {
            all,
            omitted,
            status,
            runs,
            promotions,
            rollbacks,
            last_decision,
            loop_state,
        })
    }
}

/// A counter's value as a sample.
fn load(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// The `model` label of a model's series.
fn model(name: &str) -> String {
    format!("model=\"{}\"", model_label(name))
}

/// The binary, and what this process wrote.
fn write_process(out: &mut String, state: &AppState) {
    let m = &state.metrics;
    family(
        out,
        "afs_build_info",
        "gauge",
        "Version of the afs binary serving (always 1).",
        [(
            format!(
                "version=\"{}\",with_loop=\"{}\"",
                env!("CARGO_PKG_VERSION"),
                state.with_loop
            ),
            1.0,
        )],
    );
    family(
        out,
        "afs_process_start_time_seconds",
        "gauge",
        "When this server started, in Unix seconds.",
        plain(m.started_unix),
    );

    // What this process wrote.
    family(
        out,
        "afs_usage_records_logged_total",
        "counter",
        "Usage records logged through this server since it started.",
        plain(load(&m.records_logged)),
    );
    family(
        out,
        "afs_usage_batches_logged_total",
        "counter",
        "Batches logged through this server since it started.",
        plain(load(&m.batches_logged)),
    );
    family(
        out,
        "afs_feedback_recorded_total",
        "counter",
        "Feedback recorded through this server since it started, by value.",
        ["negative", "neutral", "positive"]
            .iter()
            .zip(&m.feedback)
            .map(|(value, n)| (format!("value=\"{value}\""), load(n))),
    );
}

/// What the store holds, per exported model.
fn write_models(out: &mut String, snapshot: &Snapshot) {
    let Snapshot { all, omitted, .. } = snapshot;
    family(
        out,
        "afs_model_labels_omitted",
        "gauge",
        "Models in the store left out of the per-model metrics (at most 20 are exported: \
         the serving ones, then the busiest of the last 24 hours).",
        plain(*omitted as f64),
    );
    // Per model: counts and sums in base units, so PromQL can take any window
    // (`rate(afs_model_quality_score_sum[1h]) / rate(afs_model_quality_score_count[1h])`)
    // and add instances up. They are the store's totals: they fall only when records are
    // deleted (prune, dedupe, forget), which Prometheus treats as a counter reset.
    family(
        out,
        "afs_model_records_total",
        "counter",
        "Usage records in the store, per model.",
        all.iter().map(|(name, s)| (model(name), s.total as f64)),
    );
    family(
        out,
        "afs_model_feedback_total",
        "counter",
        "Records in the store with feedback, per model and value (the values partition the \
         records with feedback).",
        all.iter().flat_map(|(name, s)| {
            [
                ("negative", s.negative_feedback),
                ("neutral", s.neutral_feedback),
                ("positive", s.positive_feedback),
            ]
            .map(|(value, n)| (format!("{},value=\"{value}\"", model(name)), n as f64))
        }),
    );
    summary(
        out,
        "afs_model_quality_score",
        "Quality scores (0 to 1) of the records in the store, per model: their sum and count.",
        all.iter()
            .map(|(name, s)| (model(name), s.sum_quality, s.n_quality as f64)),
    );
    summary(
        out,
        "afs_model_latency_seconds",
        "Model latency of the records in the store, per model, in seconds: sum and count.",
        all.iter()
            .map(|(name, s)| (model(name), s.sum_latency_ms / 1000.0, s.n_latency as f64)),
    );
    family(
        out,
        "afs_model_tokens_total",
        "counter",
        "Tokens of the records in the store, per model.",
        all.iter()
            .map(|(name, s)| (model(name), s.total_tokens as f64)),
    );
}

/// Serving state, experiments, retrains and the loop.
fn write_serving(out: &mut String, snapshot: &Snapshot) {
    let Snapshot {
        status,
        runs,
        promotions,
        rollbacks,
        last_decision,
        loop_state,
        ..
    } = snapshot;
    write_routing(out, status);
    write_outcomes(out, *promotions, *rollbacks);
    write_retrains(out, runs);
    write_loop(out, loop_state, *last_decision);
}

/// Each serving model's share of traffic, and whether an experiment runs.
fn write_routing(out: &mut String, status: &afs_abtest::AbStatus) {
    let challenger_weight = status
        .experiment
        .as_ref()
        .map_or(0.0, |e| e.challenger_weight);
    let shares = status
        .champion
        .iter()
        .map(|c| (&c.name, "champion", 1.0 - challenger_weight))
        .chain(
            status
                .experiment
                .iter()
                .map(|e| (&e.challenger, "challenger", challenger_weight)),
        );
    family(
        out,
        "afs_traffic_share",
        "gauge",
        "Share of traffic routed to each serving model.",
        shares.map(|(name, arm, share)| (format!("{},arm=\"{arm}\"", model(name)), share)),
    );
    family(
        out,
        "afs_experiment_running",
        "gauge",
        "1 while a champion/challenger experiment runs.",
        plain(f64::from(u8::from(status.experiment.is_some()))),
    );
}

/// The experiments' outcomes: challengers promoted and rolled back.
fn write_outcomes(out: &mut String, promotions: u64, rollbacks: u64) {
    family(
        out,
        "afs_promotions_total",
        "counter",
        "Challengers promoted to champion (from the store's event log).",
        plain(promotions as f64),
    );
    family(
        out,
        "afs_rollbacks_total",
        "counter",
        "Challengers rolled back (from the store's event log).",
        plain(rollbacks as f64),
    );
}

/// Retrain runs: the finished ones by final status, and whether one is running.
fn write_retrains(out: &mut String, runs: &[(RunStatus, u64)]) {
    family(
        out,
        "afs_retrain_runs_total",
        "counter",
        "Finished retrain runs in the store, by final status (the statuses partition them).",
        runs.iter()
            .filter(|(status, _)| *status != RunStatus::Running)
            .map(|(status, n)| (format!("status=\"{}\"", status.as_str()), *n as f64)),
    );
    family(
        out,
        "afs_retrain_running",
        "gauge",
        "1 while a retrain run is running.",
        plain(
            runs.iter()
                .find(|(status, _)| *status == RunStatus::Running)
                .map_or(0.0, |(_, n)| *n as f64),
        ),
    );
}

/// The continuous loop's iterations and last check, and the judge's last decision.
fn write_loop(
    out: &mut String,
    loop_state: &afs_loop::LoopState,
    last_decision: Option<afs_store::Decision>,
) {
    family(
        out,
        "afs_loop_iterations_total",
        "counter",
        "Iterations of the continuous loop on this database (any process), by outcome (the \
         outcomes partition them: sum() is every iteration).",
        [
            (
                "ok",
                loop_state
                    .iterations
                    .saturating_sub(loop_state.failed_iterations)
                    .saturating_sub(loop_state.interrupted_iterations),
            ),
            ("failed", loop_state.failed_iterations),
            ("interrupted", loop_state.interrupted_iterations),
        ]
        .map(|(outcome, n)| (format!("outcome=\"{outcome}\""), n as f64)),
    );
    family(
        out,
        "afs_loop_last_check_timestamp_seconds",
        "gauge",
        "When the continuous loop last checked (Unix seconds; absent before its first check).",
        loop_state
            .last_check_at
            .map(|at| (String::new(), at.timestamp_millis() as f64 / 1000.0)),
    );
    family(
        out,
        "afs_experiment_last_decision",
        "gauge",
        "The judge's last recorded decision on the running experiment: 1 on that decision's \
         series (hold means the data is suspect, e.g. a sample-ratio mismatch).",
        last_decision.map(|d| (format!("decision=\"{}\"", d.as_str()), 1.0)),
    );
}

/// Requests served by this process.
fn write_http(out: &mut String, m: &Metrics) {
    family(
        out,
        "afs_http_requests_in_flight",
        "gauge",
        "Requests being served now.",
        plain(load(&m.in_flight)),
    );
    let by_class = m.routes.iter().flat_map(|route| {
        CLASSES
            .iter()
            .zip(&route.classes)
            .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
            .map(|(class, n)| {
                let labels = format!(
                    "method=\"{}\",route=\"{}\",status=\"{class}\"",
                    route.method, route.path
                );
                (labels, load(n))
            })
    });
    family(
        out,
        "afs_http_requests_refused_total",
        "counter",
        "Requests refused before routing, by reason: host (421), origin (403), content_type \
         (415).",
        Refusal::ALL
            .iter()
            .zip(&m.refused)
            .map(|(why, n)| (format!("reason=\"{}\"", why.as_str()), load(n))),
    );
    let unmatched = (
        "method=\"any\",route=\"unmatched\",status=\"4xx\"".to_string(),
        load(&m.unmatched),
    );
    family(
        out,
        "afs_http_requests_total",
        "counter",
        "Requests served, by route and status class.",
        by_class.chain([unmatched]),
    );
    header(
        out,
        "afs_http_request_duration_seconds",
        "histogram",
        "Time from receiving a request to its response, by route.",
    );
    for route in &m.routes {
        let labels = format!("method=\"{}\",route=\"{}\"", route.method, route.path);
        let mut cumulative = 0u64;
        for (upper, n) in BUCKETS.iter().zip(&route.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "afs_http_request_duration_seconds_bucket{{{labels},le=\"{upper}\"}} {cumulative}"
            );
        }
        cumulative += route.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "afs_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let sum = route.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "afs_http_request_duration_seconds_sum{{{labels}}} {}",
            num(sum)
        );
        let _ = writeln!(
            out,
            "afs_http_request_duration_seconds_count{{{labels}}} {cumulative}"
        );
    }
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
    fn long_model_names_are_cut_on_a_character_boundary_and_stay_distinct() {
        assert_eq!(model_label("nayru-v1"), "nayru-v1");
        let exact = "m".repeat(MAX_LABEL_BYTES);
        assert_eq!(model_label(&exact), exact);
        let long_a = format!("{}a", "é".repeat(500_000));
        let long_b = format!("{}b", "é".repeat(500_000));
        let (a, b) = (model_label(&long_a), model_label(&long_b));
        assert!(a.len() <= MAX_LABEL_BYTES, "{}", a.len());
        assert!(a.starts_with("éé") && a.contains('…'), "{a}");
        assert_ne!(a, b, "a hash of the whole name keeps them apart");
        let quoted = format!("\"{}\n", "\\".repeat(200));
        let escaped = model_label(&quoted);
        assert!(!escaped.contains('\n'));
        assert!(escaped.starts_with("\\\"\\\\"), "{escaped}");
    }

    #[test]
    fn at_most_twenty_models_are_exported_serving_ones_first() {
        let stats = |total: u64| UsageStats {
            total,
            ..UsageStats::default()
        };
        let all: BTreeMap<String, UsageStats> = (0..50)
            .map(|i| (format!("m{i:02}"), stats(100 + i)))
            .collect();
        let day: BTreeMap<String, UsageStats> =
            [("m03".to_string(), stats(5)), ("m01".to_string(), stats(9))].into();
        let chosen = exported_models(&["m00", "gone"], &all, &day);
        assert_eq!(chosen.len(), MAX_MODEL_LABELS);
        assert_eq!(&chosen[..5], ["m00", "gone", "m01", "m03", "m49"]);
        assert!(!chosen.contains(&"m02"), "the least used are left out");
    }

    #[test]
    fn latencies_fall_into_buckets() {
        let specs = super::super::api::ROUTES;
        let metrics = Metrics::new(specs);
        let first = &specs[0];
        metrics.observe(
            first.method.as_str(),
            Some(first.path),
            200,
            Duration::from_micros(300),
        );
        metrics.observe(
            first.method.as_str(),
            Some(first.path),
            500,
            Duration::from_secs(60),
        );
        metrics.observe("GET", Some("/nowhere"), 404, Duration::from_micros(1));
        let route = &metrics.routes[0];
        assert_eq!(
            route.buckets[1].load(Ordering::Relaxed),
            1,
            "0.3 ms is in the 0.5 ms bucket"
        );
        assert_eq!(
            route.buckets[BUCKETS.len()].load(Ordering::Relaxed),
            1,
            "60 s is in +Inf"
        );
        assert_eq!(route.classes[1].load(Ordering::Relaxed), 1);
        assert_eq!(route.classes[4].load(Ordering::Relaxed), 1);
        assert_eq!(metrics.unmatched.load(Ordering::Relaxed), 1);
    }
}
