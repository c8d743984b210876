//! The routing snapshot behind `GET /v1/route`: the champion, the challenger and its weight,
//! read from the store at most once per [`afs_loop::ROUTING_REFRESH`], so a busy server does
//! not query the store per request while a promotion (by the loop or an operator's `afs ab`
//! in another process) is seen within that time.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use afs_abtest::{Arm, HashRouter, Router, RoutingTable};
use afs_store::ModelVersion;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;

/// The serving models as of one read of the store.
#[derive(Debug, Clone)]
enum Snapshot {
    /// No champion is set yet: nothing to route to.
    NoChampion,
    /// The table and the versions it names.
    Serving {
        table: RoutingTable,
        champion: ModelVersion,
        challenger: Option<ModelVersion>,
        experiment_id: Option<i64>,
    },
}

/// A cached snapshot and the router that applies it.
pub(super) struct RoutingCache {
    snapshot: RwLock<Option<(Arc<Snapshot>, Instant)>>,
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
            router: HashRouter::new(),
        }
    }

    /// The snapshot if it is fresh enough.
    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let guard = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(_, at)| at.elapsed() < afs_loop::ROUTING_REFRESH)
            .map(|(snapshot, _)| snapshot.clone())
    }

    /// Reads the serving state from the store (blocking) and caches it.
    fn refresh(&self, state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
        let status = state.ab.status()?;
        let snapshot = Arc::new(match (status.champion, status.experiment) {
            (None, _) => Snapshot::NoChampion,
            (Some(champion), Some(experiment)) => Snapshot::Serving {
                table: RoutingTable::from_experiment(&experiment),
                champion,
                challenger: status.challenger,
                experiment_id: Some(experiment.id),
            },
            (Some(champion), None) => Snapshot::Serving {
                table: RoutingTable::champion_only(champion.name.clone()),
                champion,
                challenger: None,
                experiment_id: None,
            },
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
        let snapshot = match self.fresh() {
            Some(snapshot) => snapshot,
            None => super::api::blocking(state, |s| s.routing.refresh(s)).await?,
        };
        let Snapshot::Serving {
            table,
            champion,
            challenger,
            experiment_id,
        } = snapshot.as_ref()
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
