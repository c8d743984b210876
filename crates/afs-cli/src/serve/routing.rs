//! `GET /v1/route`: the library's serving path ([`afs_loop::Serving`]) routes, with the
//! router of the loop when the loop runs in this process (so a router set with
//! `ContinuousLearningLoop::with_router` is the one the server uses). Its snapshot of the
//! deployment is read from the store at most once per [`afs_loop::ROUTING_REFRESH`]; a
//! request routes without blocking while the snapshot is fresh (or another request is
//! refreshing it), and reads the store on the blocking pool otherwise.

use std::sync::Arc;

use afs_abtest::AbTestError;
use afs_loop::{LoopError, Routed};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;

/// The answer of `GET /v1/route`.
#[derive(Debug, Serialize)]
pub(super) struct RouteJson {
    /// The model to call (the `model` to log its usage with).
    model: String,
    /// `champion` or `challenger`.
    arm: &'static str,
    /// The model version's id in the store.
    version_id: i64,
    /// Where the model lives.
    model_path: String,
    /// The unit that was routed, if one was given.
    unit: Option<String>,
    /// The running experiment, if any.
    experiment_id: Option<i64>,
    /// The challenger's share of traffic (0 without an experiment).
    challenger_weight: f64,
}

impl RouteJson {
    fn new(routed: Routed, unit: Option<String>) -> Self {
        RouteJson {
            arm: routed.arm.as_str(),
            version_id: routed.version.id,
            model_path: routed.version.model_path,
            model: routed.model,
            unit,
            experiment_id: routed.experiment_id,
            challenger_weight: routed.challenger_weight,
        }
    }
}

/// Routes one request from `unit` (sticky), or at random without one.
pub(super) async fn route(
    state: &Arc<AppState>,
    unit: Option<String>,
) -> Result<RouteJson, ApiError> {
    let routed = match state.serving.route_cached(unit.as_deref()) {
        Some(routed) => routed,
        None => {
            let unit = unit.clone();
            super::api::blocking(state, move |s| Ok(s.serving.route(unit.as_deref()))).await?
        }
    };
    match routed {
        Ok(routed) => Ok(RouteJson::new(routed, unit)),
        Err(LoopError::AbTest(AbTestError::NoChampion)) => Err(ApiError::status(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "no champion is set: register one with `afs ab set-champion` (or `afs serve \
             --with-loop --champion NAME --champion-path PATH`)",
        )),
        Err(e) => Err(e.into()),
    }
}
