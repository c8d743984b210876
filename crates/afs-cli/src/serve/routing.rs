//! The routing snapshot behind `GET /v1/route`: the champion, the challenger and its weight,
//! read from the store at most once per [`afs_loop::ROUTING_REFRESH`], so a busy server does
//! not query the store per request while a promotion (by the loop or an operator's `afs ab`
//! in another process) is seen within that time. While one request refreshes a stale
//! snapshot, the others keep routing with it instead of all reading the store at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use afs_abtest::{Arm, HashRouter, Router, RoutingTable};
use afs_store::ModelVersion;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;

/// The serving models as of one read of the store; `None` in the cache means that no
/// champion was set yet.
#[derive(Debug, Clone)]
struct Serving {
    table: RoutingTable,
    champion: ModelVersion,
    challenger: Option<ModelVersion>,
    experiment_id: Option<i64>,
}

type Snapshot = Option<Serving>;

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A cached snapshot and the router that applies it.
pub(super) struct RoutingCache {
    snapshot: RwLock<Option<(Arc<Snapshot>, Instant)>>,
    /// Whether a request is refreshing the snapshot now.
    refreshing: AtomicBool,
    router: HashRouter,
}

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

impl RoutingCache {
    /// An empty cache: the first request reads the store.
    pub(super) fn new() -> Self {
        RoutingCache {
            snapshot: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            router: HashRouter::new(),
        }
    }

    /// The cached snapshot and whether it is fresh enough.
    fn cached(&self) -> Option<(Arc<Snapshot>, bool)> {
        let guard = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map(|(snapshot, at)| (snapshot.clone(), at.elapsed() < afs_loop::ROUTING_REFRESH))
    }

    /// The snapshot to route with: the cached one while fresh, or while another request
    /// is refreshing it; otherwise a new one read on the blocking pool.
    async fn snapshot(&self, state: &Arc<AppState>) -> Result<Arc<Snapshot>, ApiError> {
        let stale = match self.cached() {
            Some((snapshot, true)) => return Ok(snapshot),
            other => other.map(|(snapshot, _)| snapshot),
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            if let Some(snapshot) = stale {
                return Ok(snapshot);
            }
        }
        // The flag is cleared by the blocking task, which runs to the end (or panics) even
        // when this request is dropped because its client went away.
        super::api::blocking(state, |s| {
            let _clear = ClearOnDrop(&s.routing.refreshing);
            s.routing.refresh(s)
        })
        .await
    }

    /// Reads the serving state from the store (blocking) and caches it.
    fn refresh(&self, state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
        let status = state.ab.status()?;
        let snapshot = Arc::new(match (status.champion, status.experiment) {
            (None, _) => None,
            (Some(champion), Some(experiment)) => Some(Serving {
                table: RoutingTable::from_experiment(&experiment),
                champion,
                challenger: status.challenger,
                experiment_id: Some(experiment.id),
            }),
            (Some(champion), None) => Some(Serving {
                table: RoutingTable::champion_only(champion.name.clone()),
                champion,
                challenger: None,
                experiment_id: None,
            }),
        });
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) =
            Some((snapshot.clone(), Instant::now()));
        Ok(snapshot)
    }

    /// Routes one request from `unit` (sticky), or at random without one. Reads the store
    /// on the blocking pool only when the snapshot is stale.
    pub(super) async fn route(
        &self,
        state: &Arc<AppState>,
        unit: Option<String>,
    ) -> Result<RouteJson, ApiError> {
        let snapshot = self.snapshot(state).await?;
        let Some(Serving {
            table,
            champion,
            challenger,
            experiment_id,
        }) = snapshot.as_ref()
        else {
            return Err(ApiError::status(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                "no champion is set: register one with `afs ab set-champion` (or `afs serve \
                 --with-loop --champion NAME --champion-path PATH`)",
            ));
        };
        let arm = self.router.route(table, unit.as_deref());
        let version = match (arm, challenger) {
            (Arm::Challenger, Some(challenger)) => challenger,
            _ => champion,
        };
        Ok(RouteJson {
            model: table.model(arm).to_string(),
            arm: arm.as_str(),
            version_id: version.id,
            model_path: version.model_path.clone(),
            unit,
            experiment_id: *experiment_id,
            challenger_weight: table.challenger_weight(),
        })
    }
}
