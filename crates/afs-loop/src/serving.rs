//! The serving path, once for every caller: `afs serve`, the continuous loop's own
//! `log_usage`/`route`, the demo. [`Serving`] logs calls and feedback, and routes a request
//! with its [`Router`] over a snapshot of the deployment (champion, challenger, weight) read
//! from the store at most once per [`ROUTING_REFRESH`], so a busy server does not query the
//! store per request while a change made by another process (an operator's promotion) is
//! seen within that time. While one caller refreshes a stale snapshot, the others keep
//! routing with it instead of all reading the store at once; a change made through this
//! process (the loop deploying or promoting) invalidates it at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use afs_abtest::{AbTestError, Arm, HashRouter, Router, RoutingTable};
use afs_store::{ExperimentStore, FeedbackValue, ModelVersion, NewUsage, UsageStore};

use crate::error::Result;

/// How long a routing snapshot is reused before the store is read again, so that changes
/// made by another process (an operator's manual promotion) are seen within this time.
pub const ROUTING_REFRESH: Duration = Duration::from_secs(1);

/// The deployment as of one read of the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The models and the challenger's weight, as the router sees them.
    pub table: RoutingTable,
    /// The champion's version.
    pub champion: ModelVersion,
    /// The challenger's version while an experiment runs.
    pub challenger: Option<ModelVersion>,
    /// The running experiment, if any.
    pub experiment_id: Option<i64>,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The arm.
    pub arm: Arm,
    /// The model to call (the `model` to log its usage with).
    pub model: String,
    /// That model's version (its id and where it lives).
    pub version: ModelVersion,
    /// The running experiment, if any.
    pub experiment_id: Option<i64>,
    /// The challenger's share of traffic (0 without an experiment).
    pub challenger_weight: f64,
}

/// `None` in the cache: no champion is set yet.
type Snapshot = Option<Deployment>;

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Logging, feedback and routing over one store. `Send + Sync`: share it in an `Arc`
/// between a service's threads.
pub struct Serving<S: ?Sized> {
    store: Arc<S>,
    router: Box<dyn Router>,
    snapshot: RwLock<Option<(Arc<Snapshot>, Instant)>>,
    /// Whether a caller is refreshing the snapshot now.
    refreshing: AtomicBool,
}

impl<S: ?Sized> std::fmt::Debug for Serving<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl<S: UsageStore + ExperimentStore + ?Sized> Serving<S> {
    /// Serving over `store`, routing with a [`HashRouter`] (sticky by unit).
    pub fn new(store: Arc<S>) -> Self {
        Self::with_router(store, Box::new(HashRouter::new()))
    }

    /// Serving over `store`, routing with `router`.
    pub fn with_router(store: Arc<S>, router: Box<dyn Router>) -> Self {
        Serving {
            store,
            router,
            snapshot: RwLock::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Logs one production call; returns its id once it is committed.
    pub fn log(&self, record: NewUsage) -> Result<String> {
        Ok(self.store.log(record)?)
    }

    /// Logs many calls in one transaction; returns their ids in input order.
    pub fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        Ok(self.store.log_batch(records)?)
    }

    /// Records a user's feedback on record `id`.
    pub fn record_feedback(
        &self,
        id: &str,
        value: FeedbackValue,
        text: Option<&str>,
    ) -> Result<()> {
        Ok(self.store.record_feedback(id, value, text)?)
    }

    /// Where a request from `unit` goes (a user or session id, sticky; `None` for a
    /// weighted random draw), reading the store when the snapshot is stale. Fails with
    /// `AbTestError::NoChampion` before a champion exists.
    pub fn route(&self, unit: Option<&str>) -> Result<Routed> {
        let snapshot = match self.cached() {
            Some((snapshot, true)) => snapshot,
            _ => self.refresh()?,
        };
        self.apply(&snapshot, unit)
    }

    /// [`route`](Self::route) without reading the store: `None` when the snapshot is stale
    /// and no other caller is refreshing it (then call `route`, where blocking is allowed).
    /// A caller that must not block (an async handler) tries this first.
    pub fn route_cached(&self, unit: Option<&str>) -> Option<Result<Routed>> {
        match self.cached() {
            Some((snapshot, true)) => Some(self.apply(&snapshot, unit)),
            Some((snapshot, false)) if self.refreshing.load(Ordering::Acquire) => {
                Some(self.apply(&snapshot, unit))
            }
            _ => None,
        }
    }

    /// The deployment as of the current snapshot (read from the store when stale); `None`
    /// before a champion exists.
    pub fn deployment(&self) -> Result<Option<Deployment>> {
        let snapshot = match self.cached() {
            Some((snapshot, true)) => snapshot,
            _ => self.refresh()?,
        };
        Ok(snapshot.as_ref().clone())
    }

    /// Forgets the snapshot: the next request reads the store (after a change made in this
    /// process).
    pub fn invalidate(&self) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached snapshot and whether it is fresh enough.
    fn cached(&self) -> Option<(Arc<Snapshot>, bool)> {
        let guard = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map(|(snapshot, at)| (snapshot.clone(), at.elapsed() < ROUTING_REFRESH))
    }

    /// Reads the deployment from the store and caches it. While another caller is at it,
    /// a stale snapshot is used instead.
    fn refresh(&self) -> Result<Arc<Snapshot>> {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            if let Some((snapshot, _)) = self.cached() {
                return Ok(snapshot);
            }
        }
        let _clear = ClearOnDrop(&self.refreshing);
        let snapshot = Arc::new(self.read_deployment()?);
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) =
            Some((snapshot.clone(), Instant::now()));
        Ok(snapshot)
    }

    fn read_deployment(&self) -> Result<Snapshot> {
        let Some(champion) = self.store.champion()? else {
            return Ok(None);
        };
        Ok(Some(match self.store.running_experiment()? {
            Some(experiment) => Deployment {
                table: RoutingTable::from_experiment(&experiment),
                challenger: Some(self.store.model_version(&experiment.challenger)?),
                experiment_id: Some(experiment.id),
                champion,
            },
            None => Deployment {
                table: RoutingTable::champion_only(champion.name.clone()),
                champion,
                challenger: None,
                experiment_id: None,
            },
        }))
    }

    fn apply(&self, snapshot: &Snapshot, unit: Option<&str>) -> Result<Routed> {
        let Some(deployment) = snapshot else {
            return Err(AbTestError::NoChampion.into());
        };
        let arm = self.router.route(&deployment.table, unit);
        let version = match (arm, &deployment.challenger) {
            (Arm::Challenger, Some(challenger)) => challenger,
            _ => &deployment.champion,
        };
        Ok(Routed {
            arm,
            model: deployment.table.model(arm).to_string(),
            version: version.clone(),
            experiment_id: deployment.experiment_id,
            challenger_weight: deployment.table.challenger_weight(),
        })
    }
}
