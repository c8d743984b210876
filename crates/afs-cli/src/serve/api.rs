//! The route table and the handlers of the JSON API (`/v1/...`), `/healthz` and `/metrics`.
//!
//! Every route is listed once in [`ROUTES`] with its access rule; the router, the token
//! check, the metrics and the OpenAPI test all read that table.

use std::sync::Arc;

use afs_store::{
    EventFilter, EventKind, ExperimentStore, RetrainRun, RunStatus, RunStore, StatsWindow,
    UsageStore,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use chrono::DurationRound as _;
use serde_json::{json, Value};

use super::connections::BodyTimeout;
use super::error::ApiError;
use super::wire::{self, Params, UsageBody};
use super::{auth, dashboard, guard, metrics, AppState};
use crate::output::{rfc3339, RunJson, StatsJson};

/// Who may call a route when tokens are configured (see [`super::auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone.
    Open,
    /// Anyone, unless `--protect-reads`: then a token (header or cookie).
    Read,
    /// A token in the `Authorization` header.
    Write,
    /// A token (header, cookie, or `?token=` which sets the cookie).
    Dashboard,
}

/// One route of the service.
#[derive(Debug)]
pub(super) struct RouteSpec {
    /// Its method.
    pub(super) method: Method,
    /// Its path, as written in the router and in `docs/openapi.yaml`.
    pub(super) path: &'static str,
    /// Who may call it.
    pub(super) access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
    }
}

/// Every route of the service.
pub(super) static ROUTES: &[RouteSpec] = &[
    route(Method::GET, "/", Access::Dashboard),
    route(Method::GET, "/assets/dashboard.js", Access::Open),
    route(Method::GET, "/assets/dashboard.css", Access::Open),
    route(Method::GET, "/healthz", Access::Open),
    route(Method::GET, "/metrics", Access::Read),
    route(Method::GET, "/v1/openapi.yaml", Access::Open),
    route(Method::POST, "/v1/usage", Access::Write),
    route(Method::POST, "/v1/feedback", Access::Write),
    route(Method::GET, "/v1/route", Access::Read),
    route(Method::GET, "/v1/stats", Access::Read),
    route(Method::GET, "/v1/series", Access::Read),
    route(Method::GET, "/v1/status", Access::Read),
    route(Method::GET, "/v1/experiment", Access::Read),
    route(Method::GET, "/v1/history", Access::Read),
    route(Method::GET, "/v1/runs", Access::Read),
];

/// The OpenAPI description of this API, served at `/v1/openapi.yaml`.
const OPENAPI: &str = include_str!("../../../../docs/openapi.yaml");

/// The handler of `spec`.
fn handler(spec: &RouteSpec) -> MethodRouter<Arc<AppState>> {
    match (spec.method.as_str(), spec.path) {
        ("GET", "/") => get(dashboard::page),
        ("GET", "/assets/dashboard.js") => get(dashboard::script),
        ("GET", "/assets/dashboard.css") => get(dashboard::style),
        ("GET", "/healthz") => get(healthz),
        ("GET", "/metrics") => get(metrics_text),
        ("GET", "/v1/openapi.yaml") => get(openapi),
        ("POST", "/v1/usage") => post(post_usage),
        ("POST", "/v1/feedback") => post(post_feedback),
        ("GET", "/v1/route") => get(get_route),
        ("GET", "/v1/stats") => get(get_stats),
        ("GET", "/v1/series") => get(get_series),
        ("GET", "/v1/status") => get(get_status),
        ("GET", "/v1/experiment") => get(get_experiment),
        ("GET", "/v1/history") => get(get_history),
        ("GET", "/v1/runs") => get(get_runs),
        (method, path) => unreachable!("no handler for {method} {path} in ROUTES"),
    }
}

/// The service: every route of [`ROUTES`], the token check, the metrics, the body limit,
/// and JSON answers for unknown paths and methods, all behind the guard (host, origin and
/// content type checks), which wraps the fallbacks too.
pub(super) fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let mut router: Router<Arc<AppState>> = Router::new();
    for spec in ROUTES {
        router = router.route(spec.path, handler(spec));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        // Outermost, so that every answer carries it, the guard's refusals included.
        .layer(axum::middleware::map_response(schema_version))
        .with_state(state)
}

/// The header that names the version of the JSON schema of the answers' bodies (and of
/// `docs/openapi.yaml`, whose `info.version` it equals).
pub(super) const SCHEMA_VERSION_HEADER: &str = "afs-schema-version";

/// Adds [`SCHEMA_VERSION_HEADER`] to an answer.
async fn schema_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        SCHEMA_VERSION_HEADER,
        header::HeaderValue::from(crate::output::SCHEMA_VERSION),
    );
    response
}

/// Runs `work` on the blocking pool (store calls block) and returns its result; a panic in
/// it becomes a 500 instead of taking the connection down.
pub(super) async fn blocking<T, F>(state: &Arc<AppState>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
{
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a request's work panicked");
            ApiError::internal("internal error: the request's work failed")
        })?
}

/// The body, or 413 when it is larger than the limit, 408 when it did not arrive in time.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if let Some(timeout) = BodyTimeout::find(&rejection) {
            ApiError::status(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("{timeout} (--body-timeout)"),
            )
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::status(
                status,
                "payload_too_large",
                "the request body is larger than the server's limit (--max-body-bytes)",
            )
        } else {
            ApiError::status(status, "bad_request", rejection.body_text())
        }
    })
}

async fn not_found(State(state): State<Arc<AppState>>, uri: Uri) -> ApiError {
    state.metrics.unmatched();
    ApiError::status(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} (see /v1/openapi.yaml)", uri.path()),
    )
}

async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
) -> ApiError {
    state.metrics.unmatched();
    ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// `GET /healthz`: the process is up and serving. Does not touch the store.
async fn healthz(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "with_loop": state.with_loop,
        "uptime_secs": state.started.elapsed().as_secs_f64(),
    }))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = blocking(&state, metrics::render).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/openapi.yaml`: this API's description.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

/// `POST /v1/usage`: one record (`{...}` → `{"id"}`) or a batch (`[...]` or
/// `{"records": [...]}` → `{"ids"}`), answered only once committed. A batch is one
/// transaction: a bad record refuses the whole batch and nothing is written.
async fn post_usage(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    // Parsing runs on the blocking pool too: a batch of thousands of records takes
    // milliseconds, which would stall the other connections of an async worker.
    let answer = blocking(&state, move |s| {
        match wire::parse_usage(&body, s.max_field_bytes, s.max_batch)? {
            UsageBody::One(record) => {
                let id = s.serving.log(*record)?;
                s.metrics.logged(1, false);
                Ok(json!({ "id": id }))
            }
            UsageBody::Batch(records) => {
                let n = records.len();
                let ids = s.serving.log_batch(records)?;
                s.metrics.logged(n, true);
                Ok(json!({ "ids": ids }))
            }
        }
    })
    .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `POST /v1/feedback`: `{"id", "value", "text"}` sets or replaces a record's feedback;
/// an unknown id is 404.
async fn post_feedback(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body)?;
    let answer = blocking(&state, move |s| {
        let feedback = wire::parse_feedback(&body, s.max_field_bytes)?;
        s.serving
            .record_feedback(&feedback.id, feedback.value, feedback.text.as_deref())?;
        s.metrics.feedback(feedback.value);
        Ok(json!({
            "id": feedback.id,
            "value": feedback.value.as_i64(),
            "text": feedback.text,
        }))
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/route?unit=U`: the model that serves this unit (sticky), or a weighted random
/// draw without a unit.
async fn get_route(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let params = Params::parse(&uri, &["unit"])?;
    let unit = params.text("unit")?;
    let route = super::routing::route(&state, unit).await?;
    Ok(Json(route).into_response())
}

/// `GET /v1/stats?since=&until=&model=&by_model=`: what `afs stats --json` prints.
async fn get_stats(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(&uri, &["since", "until", "model", "by_model"])?;
    let answer = blocking(&state, move |s| {
        let now = s.store.clock().now();
        let window = StatsWindow {
            since: params.time("since", now)?,
            until: params.time("until", now)?,
            model: params.text("model")?,
        };
        if params.flag("by_model")? {
            let by_model = s.store.stats_by_model(&window)?;
            let map: serde_json::Map<String, Value> = by_model
                .iter()
                .map(|(model, stats)| (model.clone(), to_value(&StatsJson::from(stats))))
                .collect();
            Ok(Value::Object(map))
        } else {
            Ok(to_value(&StatsJson::from(&s.store.stats(&window)?)))
        }
    })
    .await?;
    Ok(Json(answer))
}

/// Most hours `GET /v1/series` returns: 90 days.
const MAX_SERIES_HOURS: u64 = 90 * 24;

/// `GET /v1/series?hours=N&model=M&end=now|latest`: hourly statistics per model over
/// `hours` hours ending with the current hour, for charts. With `end=latest`, when no
/// record lies in that window, the window ends with the hour of the newest record instead
/// (so a database whose records lie in the past, such as the demo's, still shows them).
/// Only hours with records appear.
async fn get_series(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(&uri, &["hours", "model", "end"])?;
    let hours = params.int("hours", 48, 1, MAX_SERIES_HOURS)?;
    let model = params.text("model")?;
    let latest = match params.text("end")?.as_deref() {
        None | Some("now") => false,
        Some("latest") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "end",
                format!("{other:?} is not now or latest"),
            ))
        }
    };
    let answer = blocking(&state, move |s| {
        let now = s.store.clock().now();
        let hour_of = |t: chrono::DateTime<chrono::Utc>| {
            t.duration_trunc(chrono::Duration::hours(1)).unwrap_or(t)
        };
        let now_hour = hour_of(now);
        let hours_back = chrono::Duration::hours(hours as i64 - 1);
        let mut end_hour = now_hour;
        if latest {
            // The hourly rollups, not the log: bounded by the hours of history.
            let all = StatsWindow {
                model: model.clone(),
                ..StatsWindow::default()
            };
            if let Some(newest) = s.store.stats_by_hour(&all)?.into_keys().next_back() {
                // Only when no record lies in the window ending now.
                if newest < now_hour - hours_back {
                    end_hour = hour_of(newest);
                }
            }
        }
        let since = end_hour - hours_back;
        let until = (end_hour < now_hour).then(|| end_hour + chrono::Duration::hours(1));
        let window = StatsWindow {
            since: Some(since),
            until,
            model: model.clone(),
        };
        let mut models = Vec::new();
        for name in s.store.stats_by_model(&window)?.into_keys() {
            let by_hour = s.store.stats_by_hour(&StatsWindow {
                model: Some(name.clone()),
                ..window.clone()
            })?;
            let points: Vec<Value> = by_hour
                .iter()
                .map(|(hour, stats)| {
                    json!({
                        "hour": rfc3339(*hour),
                        "total": stats.total,
                        "with_feedback": stats.with_feedback,
                        "positive_feedback": stats.positive_feedback,
                        "negative_feedback": stats.negative_feedback,
                        "quality_samples": stats.n_quality,
                        "avg_quality_score": stats.avg_quality_score(),
                        "feedback_rate": stats.feedback_rate(),
                        "positive_rate": stats.positive_rate(),
                        "avg_latency_ms": stats.avg_latency_ms(),
                    })
                })
                .collect();
            models.push(json!({ "model": name, "points": points }));
        }
        Ok(json!({
            "now": rfc3339(now),
            "since": rfc3339(since),
            "until": rfc3339(until.unwrap_or(now)),
            "hours": hours,
            "models": models,
        }))
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/status`: what `afs status --json` shows (the loop, retrains, serving models,
/// traffic split, usage), plus this server's own state under `server`.
async fn get_status(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Json<Value>, ApiError> {
    Params::parse(&uri, &[])?;
    let answer = blocking(&state, |s| {
        let mut summary = afs_loop::status_summary(&*s.store)?.to_json();
        if let Value::Object(map) = &mut summary {
            map.insert(
                "server".into(),
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "with_loop": s.with_loop,
                    "auth": s.auth.enabled(),
                    "uptime_secs": s.started.elapsed().as_secs_f64(),
                }),
            );
        }
        Ok(summary)
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/experiment`: the running experiment, the judge's current comparison (metrics
/// with their always-valid intervals, the sample-ratio check, the decision and its reason;
/// computed now, nothing recorded), the serving versions, and the last ended experiment.
async fn get_experiment(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    Params::parse(&uri, &[])?;
    let answer = blocking(&state, |s| {
        let status = s.ab.status()?;
        let now = s.store.clock().now();
        let comparison = match &status.experiment {
            Some(_) => s.ab.compare()?,
            None => None,
        };
        let last_ended = s
            .store
            .experiments()?
            .into_iter()
            .rev()
            .find(|e| e.ended_at.is_some());
        Ok(json!({
            "experiment": status.experiment.as_ref().map(|e| crate::domain_json::experiment(e, now)),
            "comparison": comparison.map(|c| c.to_json()),
            "champion": status.champion.as_ref().map(crate::domain_json::version),
            "challenger": status.challenger.as_ref().map(crate::domain_json::version),
            "last_ended": last_ended.as_ref().map(|e| crate::domain_json::experiment(e, now)),
        }))
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/history?limit=&experiment_id=&kinds=&statistics=`: the experiment event log
/// (deployments, weight changes, decisions, promotions, rollbacks), newest first.
async fn get_history(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(&uri, &["limit", "experiment_id", "kinds", "statistics"])?;
    let limit = params.int("limit", 50, 1, 10_000)?;
    let experiment_id = params
        .get("experiment_id")
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                ApiError::invalid("experiment_id", format!("{text:?} is not an integer"))
            })
        })
        .transpose()?;
    let kinds = match params.get("kinds") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|name| {
                EventKind::parse(name.trim()).ok_or_else(|| {
                    ApiError::invalid(
                        "kinds",
                        format!(
                            "{name:?} is not one of set_champion, deploy, set_weight, promote, \
                             rollback, decision"
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let with_statistics = params.flag("statistics")?;
    let answer = blocking(&state, move |s| {
        let events = s.store.events(&EventFilter {
            experiment_id,
            kinds,
            limit: Some(limit),
            newest_first: true,
        })?;
        Ok(json!({
            "events": events.iter().map(|e| crate::domain_json::event(e, with_statistics)).collect::<Vec<_>>(),
        }))
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/runs?limit=&status=`: retrain runs, newest first, as `afs runs --json`.
async fn get_runs(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(&uri, &["limit", "status"])?;
    let limit = params.int("limit", 20, 1, 10_000)? as usize;
    let status = params
        .get("status")
        .map(|text| {
            RunStatus::parse(text).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!(
                        "{text:?} is not one of running, completed, failed, timed_out, interrupted"
                    ),
                )
            })
        })
        .transpose()?;
    let answer = blocking(&state, move |s| {
        let runs: Vec<RetrainRun> = match status {
            // Run history is small (one row per retrain), so filtering here is cheap.
            Some(status) => s
                .store
                .runs(usize::MAX)?
                .into_iter()
                .filter(|run| run.status == status)
                .take(limit)
                .collect(),
            None => s.store.runs(limit)?,
        };
        let runs: Vec<Value> = runs.iter().map(|r| to_value(&RunJson::from(r))).collect();
        Ok(json!({ "runs": runs }))
    })
    .await?;
    Ok(Json(answer))
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler_and_writes_need_a_token() {
        for spec in ROUTES {
            let _ = handler(spec);
            assert_eq!(
                auth::writes(&spec.method),
                spec.access == Access::Write,
                "{} {}",
                spec.method,
                spec.path
            );
        }
    }

    /// The paths and methods of `docs/openapi.yaml` (two-space indented path keys under
    /// `paths:`, four-space indented method keys under each).
    fn spec_operations(text: &str) -> Vec<(String, String)> {
        let mut in_paths = false;
        let mut path = None;
        let mut out = Vec::new();
        for line in text.lines() {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
                path = Some(
                    p.trim_end()
                        .trim_end_matches(':')
                        .trim_matches('"')
                        .to_string(),
                );
            } else if let Some(m) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
                let m = m.trim_end().trim_end_matches(':');
                if ["get", "post", "put", "delete", "patch"].contains(&m) {
                    out.push((
                        m.to_uppercase(),
                        path.clone().expect("a method outside a path"),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_version_is_the_schema_version() {
        let version = OPENAPI
            .lines()
            .skip_while(|l| l.trim_end() != "info:")
            .find_map(|l| l.trim().strip_prefix("version:"))
            .expect("info.version in docs/openapi.yaml");
        assert_eq!(
            version.trim().trim_matches('"'),
            crate::output::SCHEMA_VERSION.to_string()
        );
    }

    #[test]
    fn the_openapi_file_describes_exactly_the_routes() {
        let operations = spec_operations(OPENAPI);
        assert!(
            operations.len() >= 10,
            "too few operations read: {operations:?}"
        );
        for spec in ROUTES {
            assert!(
                operations
                    .iter()
                    .any(|(m, p)| m == spec.method.as_str() && p == spec.path),
                "{} {} is not in docs/openapi.yaml",
                spec.method,
                spec.path
            );
        }
        for (method, path) in &operations {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.method.as_str() == method && r.path == path),
                "docs/openapi.yaml has {method} {path}, which the router does not serve"
            );
        }
    }
}
