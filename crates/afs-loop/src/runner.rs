//! `ContinuousLearningLoop`: logging and routing for the serving path, and the iteration that
//! checks the experiment, retrains when triggered, gates, deploys and promotes or rolls back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use afs_abtest::{AbTest, Judge, Route, Router, RoutingTable};
use afs_datagen::{BoxError, QualityScorer};
use afs_store::{
    Decision, ErrorKind, ExperimentStore, FeedbackValue, Lease, LeaseStore, NewModelVersion,
    NewUsage, RetrainRun, RunOutcome, RunStatus, RunStore, UsageStore,
};
use afs_trigger::{AutoRetrainer, RetrainOutcome, RetrainTrigger, TrainOutput, Trainer, Trigger};

pub(crate) use afs_store::rng::splitmix64 as splitmix;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::LoopConfig;
use crate::error::{LoopError, Result};
use crate::eval::{run_gate, GateJob};
use crate::report::{
    DeployStep, ExperimentStep, IterationReport, LoopRunSummary, RetrainStep, StopReason,
};
use crate::serving::Serving;
use crate::state::{InProgress, IterationRecord, LoopState};
use crate::status::{status_summary, StatusSummary};
use crate::stop::StopSignal;

/// A store the loop can run on: the usage log, retrain runs and state, experiments, and
/// leases (which loop acts). Every backend is all of these in one database.
pub trait LoopStore: UsageStore + RunStore + ExperimentStore + LeaseStore {}

impl<S: UsageStore + RunStore + ExperimentStore + LeaseStore + ?Sized> LoopStore for S {}

/// The longest the loop naps before re-reading its clock while it waits for the next
/// iteration. A manual clock moved by another thread is noticed within this time (or at
/// once after [`StopSignal::wake`]).
const MAX_NAP: Duration = Duration::from_secs(1);

/// Options of one iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IterationOptions {
    /// Retrain whatever the triggers and the cooldown say (still not while an experiment
    /// runs: one challenger is tested at a time).
    pub force_retrain: bool,
}

/// The continuous learning loop (the seed's `ContinuousLearningLoop`).
///
/// It is `Send + Sync`: share it in an `Arc` between the threads of a service, which call
/// [`log_usage`](Self::log_usage), [`record_feedback`](Self::record_feedback) and
/// [`route`](Self::route) on the serving path, and one background thread running
/// [`run_loop`](Self::run_loop). Iterations of one loop never overlap (they take a lock).
/// Across threads, processes and hosts, **one loop acts at a time**: an iteration runs only
/// while its loop holds the store's lease [`LOOP_LEASE`] ([`LeaseStore`]).
/// [`run_loop`](Self::run_loop) takes it and keeps it until it returns; a loop that finds it
/// held stands by, trying again every check interval, so a second `afs serve --loop` on
/// another host takes over when the first one stops or dies (the backend releases a dead
/// holder's lease). A single [`run_iteration`](Self::run_iteration) while another loop holds
/// the lease fails with [`LoopError::Conflict`].
///
/// # One iteration
///
/// 1. Runs left `running` by dead processes are marked failed, once whatever is left of
///    their trainer's process group has been stopped ([`afs_trigger::recover_stale_runs`]);
///    an iteration left unfinished by a dead process is recorded as interrupted.
/// 2. If an experiment runs, it is judged ([`AbTest::check`]); a promotion or rollback is
///    applied when the config allows, and a promotion resets the triggers' quality
///    reference ([`afs_trigger::reset_after_promotion`]).
/// 3. If an experiment still runs, retraining is **deferred**: one challenger is tested at a
///    time, and a dataset drawn while two models serve would mix their traffic.
/// 4. Otherwise the triggers are checked and, when one fires, a run generates the dataset and
///    calls the trainer ([`AutoRetrainer::check_and_retrain`]).
/// 5. A trained model must pass the evaluation gate, if one is configured.
/// 6. It is deployed: as challenger with `abtest.initial_challenger_traffic` when A/B testing
///    is on; as champion when there is no champion yet, or when A/B testing is off and
///    automatic promotion on; otherwise it is only reported.
///
/// Every step's outcome is in the [`IterationReport`]; failures of the work itself (a failed
/// trainer, a rejected model) are recorded there and in the persisted status, and are not
/// errors. The status ([`LoopState`]) is written at the start of the iteration, at each
/// phase and at the end, so a process killed mid-iteration leaves a trace the next start
/// turns into an "interrupted" record.
pub struct ContinuousLearningLoop<S: LoopStore> {
    store: Arc<S>,
    config: LoopConfig,
    ab: AbTest<S>,
    trainer: Box<dyn Trainer>,
    /// Logging, feedback and routing: the serving path `afs serve` uses too.
    serving: Arc<Serving<S>>,
    scorer: Option<Arc<dyn QualityScorer>>,
    /// Retraining policies of the caller's own, checked after the configured ones.
    policies: Vec<Arc<dyn Trigger>>,
    routing_seed: Option<u64>,
    /// Stops a dataset generation under way (see [`Self::with_generation_stop`]).
    generation_stop: Option<Arc<AtomicBool>>,
    stop: StopSignal,
    iteration_lock: Mutex<()>,
    /// The lease [`LOOP_LEASE`] while this loop holds it.
    lease: Mutex<Option<Lease>>,
}

/// The name of the lease a loop holds while it acts (see [`ContinuousLearningLoop`]).
pub const LOOP_LEASE: &str = "loop";

impl<S: LoopStore> std::fmt::Debug for ContinuousLearningLoop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousLearningLoop")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside an iteration is caught and recorded; the data behind these locks stays
    // valid, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A policy shared between the triggers the loop builds for each iteration.
struct SharedPolicy(Arc<dyn Trigger>);

impl Trigger for SharedPolicy {
    fn trigger_type(&self) -> afs_trigger::TriggerType {
        self.0.trigger_type()
    }

    fn check(
        &self,
        ctx: &mut afs_trigger::CheckContext<'_>,
    ) -> std::result::Result<afs_trigger::TriggerResult, afs_trigger::TriggerError> {
        self.0.check(ctx)
    }
}

/// A scorer shared between the retrainers the loop builds for each iteration.
struct SharedScorer(Arc<dyn QualityScorer>);

impl QualityScorer for SharedScorer {
    fn score(&self, query: &str, response: &str) -> std::result::Result<f64, BoxError> {
        self.0.score(query, response)
    }
}

impl<S: LoopStore> ContinuousLearningLoop<S> {
    /// A loop over `store` with `config` (validated) and `trainer`, routing with a
    /// [`afs_abtest::HashRouter`] and judging with the default sequential judge.
    ///
    /// Construction recovers what a dead process left behind (runs left `running`, an
    /// unfinished iteration) and registers `config.initial_champion` when the store has no
    /// champion yet.
    pub fn new(store: Arc<S>, config: LoopConfig, trainer: Box<dyn Trainer>) -> Result<Self> {
        config.validate()?;
        if let Some(gate) = &config.eval_gate {
            // A bad template is refused now, not after the first retrain.
            crate::eval::template(gate).map_err(|e| LoopError::InvalidConfig {
                key: "loop.eval_cmd".into(),
                reason: e.to_string(),
            })?;
        }
        let mut ab_config = config.abtest.clone();
        ab_config.enable_auto_promotion = config.auto_promotion();
        let ab = AbTest::new(store.clone(), ab_config)?;
        let serving = Arc::new(Serving::new(Arc::clone(&store)));
        let this = ContinuousLearningLoop {
            store,
            config,
            ab,
            serving,
            trainer,
            scorer: None,
            policies: Vec::new(),
            routing_seed: None,
            generation_stop: None,
            stop: StopSignal::new(),
            iteration_lock: Mutex::new(()),
            lease: Mutex::new(None),
        };
        this.recover()?;
        if let Some(champion) = &this.config.initial_champion {
            if this.store.champion()?.is_none() {
                this.ab
                    .set_champion(champion, "initial champion from the loop configuration")?;
                tracing::info!(champion = %champion.name, "registered the initial champion");
            }
        }
        Ok(this)
    }

    /// Routes with `router` instead of the default hash router (in [`Self::route`] and in
    /// everything that serves through [`Self::serving`], `afs serve` included).
    pub fn with_router(mut self, router: Box<dyn Router>) -> Self {
        self.serving = Arc::new(Serving::with_router(self.store.clone(), router));
        self
    }

    /// The serving path of this loop: logging, feedback and routing with its router, whose
    /// routing snapshot the loop refreshes at once when it deploys, promotes or rolls back.
    pub fn serving(&self) -> Arc<Serving<S>> {
        self.serving.clone()
    }

    /// Judges experiments with `judge` instead of the default sequential judge.
    pub fn with_judge(mut self, judge: Box<dyn Judge>) -> Self {
        self.ab = self.ab.with_judge(judge);
        self
    }

    /// Adds a retraining policy of the caller's own, checked after the configured ones in
    /// every iteration (see `afs_trigger::RetrainTrigger::with_policy`).
    pub fn with_trigger_policy(mut self, policy: Arc<dyn Trigger>) -> Self {
        self.policies.push(policy);
        self
    }

    /// Scores records that have no quality score with `scorer` when generating datasets
    /// (default: the heuristic scorer).
    pub fn with_scorer(mut self, scorer: Arc<dyn QualityScorer>) -> Self {
        self.scorer = Some(scorer);
        self
    }

    /// Derives each experiment's routing seed from `seed` and the number of experiments so
    /// far, instead of drawing it at random: the same history routes the same units the same
    /// way (simulations, reproducible tests).
    pub fn with_routing_seed(mut self, seed: u64) -> Self {
        self.routing_seed = Some(seed);
        self
    }

    /// Stops a retrain's dataset generation as soon as `flag` is set; the run is then
    /// recorded as `interrupted` (see [`AutoRetrainer::stop_generation_on`]). The same flag
    /// stops an evaluation gate under way (the model is then not deployed). Give it the
    /// flag the trainer is interrupted with, so one signal stops whichever is running.
    pub fn with_generation_stop(mut self, flag: Arc<AtomicBool>) -> Self {
        self.generation_stop = Some(flag);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &LoopConfig {
        &self.config
    }

    /// The experiment manager the loop uses (for operations the loop does not wrap).
    pub fn ab_test(&self) -> &AbTest<S> {
        &self.ab
    }

    /// Logs one production call; returns its id (the seed's `log_usage`).
    pub fn log_usage(&self, record: NewUsage) -> Result<String> {
        self.serving.log(record)
    }

    /// Logs many calls in one transaction; returns their ids in input order.
    pub fn log_batch(&self, records: Vec<NewUsage>) -> Result<Vec<String>> {
        self.serving.log_batch(records)
    }

    /// Records a user's feedback on record `id`.
    pub fn record_feedback(
        &self,
        id: &str,
        value: FeedbackValue,
        text: Option<&str>,
    ) -> Result<()> {
        self.serving.record_feedback(id, value, text)
    }

    /// The model that serves a request from `unit` (a user or session id; `None` for a
    /// weighted random draw). Uses a routing snapshot at most [`crate::ROUTING_REFRESH`] old,
    /// and one refreshed at once after this loop changes the deployment. Fails with
    /// `AbTestError::NoChampion` before a champion exists.
    pub fn route(&self, unit: Option<&str>) -> Result<Route> {
        let routed = self.serving.route(unit)?;
        Ok(Route {
            arm: routed.arm,
            model: routed.model,
        })
    }

    /// The current routing snapshot (cached as described in [`route`](Self::route)).
    pub fn routing_table(&self) -> Result<RoutingTable> {
        match self.serving.deployment()? {
            Some(deployment) => Ok(deployment.table),
            None => Err(afs_abtest::AbTestError::NoChampion.into()),
        }
    }

    fn invalidate_routing(&self) {
        self.serving.invalidate();
    }

    /// A handle on this loop's stop request, for a signal-handling thread or a server.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Asks [`run_loop`](Self::run_loop) to return: a sleeping loop wakes at once, an
    /// iteration in progress finishes first. The request stays until
    /// [`StopSignal::reset`].
    pub fn stop(&self) {
        self.stop.request_stop();
    }

    /// The status: loop state, retrains, serving models, traffic split, usage, last errors
    /// (the seed's `get_status_summary`). The same as [`crate::status_summary`] on the store.
    pub fn status_summary(&self) -> Result<StatusSummary> {
        status_summary(&*self.store)
    }

    /// Runs iterations every `check_interval` of the store's clock (the first at once) until
    /// a stop is requested or `max_iterations` ran; calls `on_iteration` after each.
    ///
    /// An iteration that fails or panics is recorded and the loop goes on. Between
    /// iterations the loop naps on the [`StopSignal`], so a stop wakes it at once; an
    /// iteration in progress when the stop comes finishes before the loop returns.
    pub fn run_loop(
        &self,
        max_iterations: Option<u64>,
        on_iteration: &mut dyn FnMut(&Result<IterationReport>),
    ) -> LoopRunSummary {
        let mut summary = LoopRunSummary {
            iterations: 0,
            failed_iterations: 0,
            stop_reason: StopReason::Stopped,
        };
        let interval = chrono::Duration::from_std(self.config.check_interval)
            .unwrap_or(chrono::Duration::days(365_000));
        loop {
            if self.stop.is_stop_requested() {
                summary.stop_reason = StopReason::Stopped;
                return summary;
            }
            if max_iterations.is_some_and(|max| summary.iterations >= max) {
                summary.stop_reason = StopReason::MaxIterations;
                return summary;
            }
            let started = self.store.clock().now();
            match self.hold_lease() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(
                        "another loop acts on this database (it holds the `{LOOP_LEASE}` \
                         lease); standing by"
                    );
                    if self.nap_until(started.checked_add_signed(interval)) {
                        summary.stop_reason = StopReason::Stopped;
                        *lock(&self.lease) = None;
                        return summary;
                    }
                    continue;
                }
                Err(e) => tracing::error!(error = %e, "cannot check the loop lease; trying again"),
            }
            let result = self.run_iteration();
            summary.iterations += 1;
            match &result {
                Ok(report) => tracing::info!("{}", report.summary()),
                Err(e) => {
                    summary.failed_iterations += 1;
                    tracing::error!(error = %e, "iteration failed; the loop goes on");
                }
            }
            on_iteration(&result);
            if max_iterations.is_some_and(|max| summary.iterations >= max) {
                summary.stop_reason = StopReason::MaxIterations;
                *lock(&self.lease) = None;
                return summary;
            }
            // An interval beyond the calendar's end means the next iteration never comes.
            if self.nap_until(started.checked_add_signed(interval)) {
                summary.stop_reason = StopReason::Stopped;
                *lock(&self.lease) = None;
                return summary;
            }
        }
    }

    /// Waits until `due` on the store's clock (forever for `None`); true when a stop was
    /// asked for meanwhile.
    fn nap_until(&self, due: Option<DateTime<Utc>>) -> bool {
        loop {
            let left = match due {
                Some(due) => match (due - self.store.clock().now()).to_std() {
                    Ok(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => MAX_NAP,
            };
            if self.stop.wait(left.min(MAX_NAP)) {
                return true;
            }
        }
    }

    /// Takes the loop lease unless this loop holds it already; false while another holds it.
    fn hold_lease(&self) -> Result<bool> {
        let mut lease = lock(&self.lease);
        if lease.is_none() {
            *lease = self.store.try_lease(LOOP_LEASE)?;
        }
        Ok(lease.is_some())
    }

    /// One iteration (the seed's `run_iteration`); see the type's documentation.
    pub fn run_iteration(&self) -> Result<IterationReport> {
        self.run_iteration_with(IterationOptions::default())
    }

    /// One iteration with `options`.
    ///
    /// Returns an error when the store fails or a panic was caught; the error is recorded in
    /// the persisted status either way (as far as the store allows).
    pub fn run_iteration_with(&self, options: IterationOptions) -> Result<IterationReport> {
        let _guard = lock(&self.iteration_lock);
        // One loop acts at a time: this iteration runs under the loop lease, held for it
        // alone unless run_loop holds it already.
        let held_before = lock(&self.lease).is_some();
        if !self.hold_lease()? {
            return Err(LoopError::Conflict(format!(
                "another loop acts on this database (it holds the `{LOOP_LEASE}` lease); \
                 stop it, or let it do the work"
            )));
        }
        let result = self.run_iteration_leased(options);
        if !held_before {
            *lock(&self.lease) = None;
        }
        result
    }

    /// [`Self::run_iteration_with`] once the lease is held.
    fn run_iteration_leased(&self, options: IterationOptions) -> Result<IterationReport> {
        let recovered = self.recover()?;
        let started_at = self.store.clock().now();
        let mut state = LoopState::load(&*self.store)?;
        state.iterations += 1;
        let number = state.iterations;
        state.last_check_at = Some(started_at);
        state.in_progress = Some(InProgress {
            number,
            started_at,
            phase: "start".into(),
            pid: std::process::id(),
            identity: afs_store::process::identity(std::process::id()),
        });
        state.save(&*self.store)?;

        let result = catch_unwind(AssertUnwindSafe(|| {
            self.iterate(number, started_at, recovered, options)
        }))
        .unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(iteration = number, %message, "iteration panicked");
            self.fail_own_runs(&message);
            Err(LoopError::Panicked {
                iteration: number,
                message,
            })
        });
        self.invalidate_routing();
        match (self.finish(number, started_at, &result), result) {
            (Ok(()), result) => result,
            (Err(finish_error), Ok(_)) => Err(finish_error),
            (Err(finish_error), Err(e)) => {
                tracing::error!(error = %finish_error, "could not record the failed iteration");
                Err(e)
            }
        }
    }

    /// Marks runs left by dead processes failed and an iteration left unfinished by a dead
    /// process interrupted. Returns the ids of the recovered runs.
    fn recover(&self) -> Result<Vec<String>> {
        // Leftovers of a dead process's trainer are stopped before its run is failed.
        let recovered = afs_trigger::recover_stale_runs(&*self.store)?;
        let mut state = LoopState::load(&*self.store)?;
        let Some(in_progress) = state.in_progress.clone() else {
            return Ok(recovered);
        };
        let alive = match in_progress.identity.as_str() {
            // A state written before identities were recorded: the pid's process, if any.
            "" => i32::try_from(in_progress.pid)
                .ok()
                .and_then(afs_store::process::proc_stat)
                .is_some_and(|s| !s.zombie),
            identity => {
                afs_store::process::liveness(in_progress.pid, identity)
                    != afs_store::process::Liveness::Dead
            }
        };
        if in_progress.pid == std::process::id() || alive {
            // Ours (a loop in this process is at work), another live process's, or one on
            // another host that cannot be checked from here.
            return Ok(recovered);
        }
        let now = self.store.clock().now();
        let mut message = format!(
            "iteration {} was interrupted during {}: its process (pid {}) stopped before it finished",
            in_progress.number, in_progress.phase, in_progress.pid
        );
        if !recovered.is_empty() {
            message.push_str(&format!(
                "; its retrain run {} was marked failed",
                recovered.join(", ")
            ));
        }
        tracing::warn!("{message}");
        state.interrupted_iterations += 1;
        state.last_iteration = Some(IterationRecord {
            number: in_progress.number,
            started_at: in_progress.started_at,
            finished_at: now,
            outcome: "interrupted".into(),
            summary: message.clone(),
        });
        state.push_error(now, Some(in_progress.number), message);
        state.in_progress = None;
        state.save(&*self.store)?;
        Ok(recovered)
    }

    fn set_phase(&self, number: u64, phase: &str) -> Result<()> {
        let mut state = LoopState::load(&*self.store)?;
        if let Some(in_progress) = state.in_progress.as_mut().filter(|p| p.number == number) {
            in_progress.phase = phase.to_string();
            state.save(&*self.store)?;
        }
        Ok(())
    }

    fn finish(
        &self,
        number: u64,
        started_at: DateTime<Utc>,
        result: &Result<IterationReport>,
    ) -> Result<()> {
        let now = self.store.clock().now();
        let mut state = LoopState::load(&*self.store)?;
        let (outcome, summary) = match result {
            Ok(report) => {
                for error in &report.errors {
                    state.push_error(now, Some(number), error.clone());
                }
                ("ok", report.summary())
            }
            Err(e) => {
                state.failed_iterations += 1;
                state.push_error(now, Some(number), e.to_string());
                ("failed", format!("iteration {number} failed: {e}"))
            }
        };
        state.last_iteration = Some(IterationRecord {
            number,
            started_at,
            finished_at: now,
            outcome: outcome.into(),
            summary,
        });
        if state
            .in_progress
            .as_ref()
            .is_some_and(|p| p.number == number)
        {
            state.in_progress = None;
        }
        state.save(&*self.store)
    }

    /// After a panic: a run this process left `running` would block every later retrain
    /// until the process exits, so it is failed now. Iterations never overlap within one
    /// loop, so a running run owned by this process is the panicked iteration's.
    fn fail_own_runs(&self, message: &str) {
        let pid = std::process::id();
        let Ok(runs) = self.store.runs(16) else {
            return;
        };
        for run in runs
            .iter()
            .filter(|r| r.status == RunStatus::Running && r.owner_pid == pid)
        {
            let outcome = RunOutcome {
                status: RunStatus::Failed,
                model_path: None,
                metrics: None,
                error: Some(format!("the iteration panicked: {message}")),
            };
            if let Err(e) = self.store.finish_run(&run.id, outcome) {
                tracing::error!(run = %run.id, error = %e, "could not fail the run of a panicked iteration");
            }
        }
    }

    fn iterate(
        &self,
        number: u64,
        started_at: DateTime<Utc>,
        recovered: Vec<String>,
        options: IterationOptions,
    ) -> Result<IterationReport> {
        let mut report = IterationReport {
            number,
            started_at,
            finished_at: started_at,
            recovered_runs: recovered,
            experiment: None,
            retrain: RetrainStep::NotTriggered {
                reason: String::new(),
            },
            gate: None,
            deploy: None,
            notes: Vec::new(),
            errors: Vec::new(),
        };
        for id in &report.recovered_runs {
            report.notes.push(format!(
                "retrain run {id} was left running by a process that died; marked failed"
            ));
        }

        if self.store.running_experiment()?.is_some() {
            self.set_phase(number, "experiment check")?;
            self.check_experiment(&mut report)?;
            self.invalidate_routing();
        }

        if let Some(experiment) = self.store.running_experiment()? {
            let reason = format!(
                "experiment {} is testing {} against {}; retraining waits until it ends",
                experiment.id, experiment.challenger, experiment.champion
            );
            report.notes.push(format!("retrain deferred: {reason}"));
            report.retrain = RetrainStep::Deferred { reason };
            report.finished_at = self.store.clock().now();
            return Ok(report);
        }

        self.set_phase(number, "retrain")?;
        let retrainer = self.retrainer(self.store.clock().now())?;
        let outcome = retrainer.check_and_retrain(
            &*self.store,
            self.trainer.as_ref(),
            options.force_retrain,
        )?;
        if let Some((run, output)) = record_retrain(&mut report, outcome) {
            self.deploy_new_model(number, &run, &output, &mut report)?;
            self.invalidate_routing();
        }
        report.finished_at = self.store.clock().now();
        Ok(report)
    }

    fn check_experiment(&self, report: &mut IterationReport) -> Result<()> {
        let outcome = self.ab.check()?;
        let Some(comparison) = outcome.comparison else {
            return Ok(());
        };
        let step = ExperimentStep {
            experiment_id: comparison.experiment_id,
            champion: comparison.champion.clone(),
            challenger: comparison.challenger.clone(),
            elapsed_hours: comparison.elapsed_hours,
            decision: comparison.decision,
            applied: outcome.applied,
            reason: comparison.reason.clone(),
            new_weight: outcome.new_weight,
        };
        match outcome.applied {
            Some(Decision::Promote) => {
                afs_trigger::reset_after_promotion(&*self.store)?;
                report.notes.push(format!(
                    "promoted {} to champion (replacing {}): {}; the triggers' quality baseline was reset",
                    step.challenger, step.champion, step.reason
                ));
            }
            Some(Decision::Rollback) => report.notes.push(format!(
                "rolled back {} ({} stays champion): {}",
                step.challenger, step.champion, step.reason
            )),
            _ => report.notes.push(format!(
                "experiment {} ({} vs {}, {:.1} h): {}: {}",
                step.experiment_id,
                step.champion,
                step.challenger,
                step.elapsed_hours,
                step.decision.as_str(),
                step.reason
            )),
        }
        if let Some(weight) = step.new_weight {
            report.notes.push(format!(
                "the bandit set {}'s share of traffic to {:.1}%",
                step.challenger,
                weight * 100.0
            ));
        }
        report.experiment = Some(step);
        Ok(())
    }

    fn retrainer(&self, now: DateTime<Utc>) -> Result<AutoRetrainer> {
        let mut trigger = RetrainTrigger::new(self.config.trigger.clone())?;
        for policy in &self.policies {
            trigger = trigger.with_policy(Box::new(SharedPolicy(policy.clone())));
        }
        let mut generator = self.config.generator.clone();
        if let Some(window) = self.config.training_window {
            let since = chrono::Duration::from_std(window)
                .ok()
                .and_then(|w| now.checked_sub_signed(w));
            if let Some(since) = since {
                generator.since = Some(generator.since.map_or(since, |s| s.max(since)));
            }
        }
        let mut retrainer = AutoRetrainer::new(trigger, generator, self.config.retrainer.clone());
        if let Some(flag) = &self.generation_stop {
            retrainer = retrainer.stop_generation_on(flag.clone());
        }
        Ok(match &self.scorer {
            Some(scorer) => retrainer.with_scorer(Box::new(SharedScorer(scorer.clone()))),
            None => retrainer,
        })
    }

    fn deploy_new_model(
        &self,
        number: u64,
        run: &RetrainRun,
        output: &TrainOutput,
        report: &mut IterationReport,
    ) -> Result<()> {
        let name = self.model_name(output)?;
        let dataset_path = run.dataset_path.clone().unwrap_or_default();
        let not_deployed = |reason: String| DeployStep::NotDeployed {
            name: Some(name.clone()),
            model_path: output.model_path.clone(),
            reason,
        };
        if let Some(reason) =
            self.gate_rejects(number, run, output, &name, &dataset_path, report)?
        {
            report.notes.push(format!("not deployed: {reason}"));
            report.errors.push(reason.clone());
            report.deploy = Some(not_deployed(reason));
            return Ok(());
        }

        self.set_phase(number, "deploy")?;
        let version = NewModelVersion {
            name: name.clone(),
            model_path: output.model_path.clone(),
            dataset: (!dataset_path.is_empty()).then(|| dataset_path.clone()),
            run_id: Some(run.id.clone()),
        };
        let step = match self.deploy(&version, &run.id) {
            Ok(step) => step,
            // The store refused (a name used before, a concurrent change): the model is not
            // deployed and the loop goes on; a broken database is an error.
            Err(LoopError::AbTest(e))
                if matches!(
                    e.kind(),
                    ErrorKind::Conflict | ErrorKind::InvalidInput | ErrorKind::NotFound
                ) =>
            {
                let reason = format!("deploying {name} was refused: {e}");
                report.errors.push(reason.clone());
                not_deployed(reason)
            }
            Err(e) => return Err(e),
        };
        report.notes.push(deploy_note(&step));
        report.deploy = Some(step);
        Ok(())
    }

    /// Runs the evaluation gate, when there is one, on the new model; returns why it
    /// rejected the model, if it did. The gate's outcome goes into `report`.
    fn gate_rejects(
        &self,
        number: u64,
        run: &RetrainRun,
        output: &TrainOutput,
        name: &str,
        dataset_path: &str,
        report: &mut IterationReport,
    ) -> Result<Option<String>> {
        let Some(gate) = &self.config.eval_gate else {
            return Ok(None);
        };
        self.set_phase(number, "evaluation gate")?;
        let outcome = run_gate(
            gate,
            &GateJob {
                model_path: &output.model_path,
                run_id: &run.id,
                run_dir: Path::new(&run.run_dir),
                dataset_path,
                stop: self.generation_stop.as_deref(),
            },
        );
        let passed = outcome.passed;
        let detail = outcome.detail.clone();
        report.gate = Some(outcome);
        if !passed {
            return Ok(Some(format!(
                "the evaluation gate rejected {name}: {detail}"
            )));
        }
        report
            .notes
            .push(format!("the evaluation gate passed {name} ({detail})"));
        Ok(None)
    }

    /// Puts `version` where the settings say: champion when there is none, else challenger
    /// (A/B testing on), else champion (automatic promotion on), else nowhere.
    fn deploy(&self, version: &NewModelVersion, run_id: &str) -> Result<DeployStep> {
        if self.store.champion()?.is_none() {
            let reason = "no champion was set: the first trained model becomes champion";
            return self.make_champion(version, reason);
        }
        if self.config.enable_ab_testing {
            let weight = self.config.abtest.initial_challenger_traffic;
            let reason = format!("trained by retrain run {run_id}");
            let experiment = match self.routing_seed {
                Some(base) => {
                    let seed = splitmix(base ^ (self.store.experiments()?.len() as u64 + 1));
                    self.ab
                        .deploy_challenger_with_seed(version, Some(weight), seed, &reason)
                }
                None => self.ab.deploy_challenger(version, Some(weight), &reason),
            }?;
            return Ok(DeployStep::Challenger {
                name: version.name.clone(),
                model_path: version.model_path.clone(),
                weight: experiment.challenger_weight,
                experiment_id: experiment.id,
            });
        }
        if self.config.enable_auto_promotion {
            return self.make_champion(version, "A/B testing is off and automatic promotion is on");
        }
        Ok(DeployStep::NotDeployed {
            name: Some(version.name.clone()),
            model_path: version.model_path.clone(),
            reason: "A/B testing and automatic promotion are off: the model waits for an operator"
                .into(),
        })
    }

    fn make_champion(&self, version: &NewModelVersion, reason: &str) -> Result<DeployStep> {
        self.ab.set_champion(version, reason)?;
        afs_trigger::reset_after_promotion(&*self.store)?;
        Ok(DeployStep::Champion {
            name: version.name.clone(),
            model_path: version.model_path.clone(),
            reason: reason.to_string(),
        })
    }

    /// The name of a new model: the trainer's `model_name` metric, or `<stem>-v<N>`.
    fn model_name(&self, output: &TrainOutput) -> Result<String> {
        if let Some(Value::String(name)) = output.metrics.get("model_name") {
            if !name.trim().is_empty() {
                return Ok(name.clone());
            }
        }
        let champion = self.store.champion()?;
        let stem = match (&self.config.model_stem, &champion) {
            (Some(stem), _) => stem.clone(),
            (None, Some(champion)) => split_version(&champion.name).0.to_string(),
            (None, None) => "model".to_string(),
        };
        let versions = self.store.model_versions()?;
        Ok(next_version_name(
            &stem,
            versions.iter().map(|v| v.name.as_str()),
        ))
    }
}

/// Splits `nayru-v12` into (`nayru`, Some(12)); a name without a `-v<digits>` suffix is its
/// own stem.
fn split_version(name: &str) -> (&str, Option<u64>) {
    if let Some((stem, number)) = name.rsplit_once("-v") {
        if !stem.is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = number.parse() {
                return (stem, Some(n));
            }
        }
    }
    (name, None)
}

/// `<stem>-v<N>` with `N` one above every version of `stem` in `names` (a bare `stem`
/// counts as version 1).
fn next_version_name<'a>(stem: &str, names: impl Iterator<Item = &'a str>) -> String {
    let highest = names
        .filter_map(|name| match split_version(name) {
            (s, Some(n)) if s == stem => Some(n),
            (s, None) if s == stem => Some(1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    format!("{stem}-v{}", highest + 1)
}

/// Writes a retrain's outcome into `report` (its step, notes and errors); returns the run
/// and the trainer's output when a model was trained, for deployment.
fn record_retrain(
    report: &mut IterationReport,
    outcome: RetrainOutcome,
) -> Option<(RetrainRun, TrainOutput)> {
    match outcome {
        RetrainOutcome::NotTriggered(trigger) => {
            report.notes.push(format!("no retrain: {}", trigger.reason));
            report.retrain = RetrainStep::NotTriggered {
                reason: trigger.reason,
            };
        }
        RetrainOutcome::AlreadyRunning { reason, .. } => {
            report.notes.push(format!("no retrain: {reason}"));
            report.retrain = RetrainStep::AlreadyRunning { reason };
        }
        RetrainOutcome::Refused {
            run,
            trigger,
            dataset,
        } => {
            let reason = run.error.clone().unwrap_or_default();
            report.notes.push(format!(
                "retrain triggered ({}): {}",
                trigger_name(&trigger.trigger_type),
                trigger.reason
            ));
            report
                .errors
                .push(format!("retrain run {}: {reason}", run.id));
            report.retrain = RetrainStep::Refused {
                run_id: run.id,
                n_samples: dataset.final_count,
                reason,
            };
        }
        RetrainOutcome::Failed { run, trigger } => {
            let error = run.error.clone().unwrap_or_default();
            report.notes.push(format!(
                "retrain triggered ({}): {}",
                trigger_name(&trigger.trigger_type),
                trigger.reason
            ));
            report.errors.push(format!(
                "retrain run {} {}: {error}",
                run.id,
                run.status.as_str()
            ));
            report.retrain = RetrainStep::Failed {
                run_id: run.id,
                status: run.status,
                error,
            };
        }
        RetrainOutcome::Completed {
            run,
            trigger,
            dataset,
            output,
        } => {
            let trigger_type = trigger_name(&trigger.trigger_type);
            report.notes.push(format!(
                "retrain triggered ({trigger_type}): {}",
                trigger.reason
            ));
            let dataset_path = run.dataset_path.clone().unwrap_or_default();
            report.notes.push(format!(
                "retrain run {} trained on {} samples ({dataset_path}); the trainer reported {}",
                run.id, dataset.final_count, output.model_path
            ));
            report.retrain = RetrainStep::Completed {
                run_id: run.id.clone(),
                trigger_type: trigger_type.to_string(),
                trigger_reason: trigger.reason.clone(),
                dataset_path,
                n_samples: dataset.final_count,
                model_path: output.model_path.clone(),
                metrics: output.metrics.clone(),
            };
            return Some((run, output));
        }
    }
    None
}

/// The report's note on where a new model went.
fn deploy_note(step: &DeployStep) -> String {
    match step {
        DeployStep::Challenger {
            name,
            weight,
            experiment_id,
            ..
        } => format!(
            "deployed {name} as challenger with {:.0}% of traffic (experiment {experiment_id})",
            weight * 100.0
        ),
        DeployStep::Champion { name, reason, .. } => {
            format!("made {name} the champion: {reason}")
        }
        DeployStep::NotDeployed { reason, .. } => format!("not deployed: {reason}"),
    }
}

fn trigger_name(trigger_type: &Option<afs_trigger::TriggerType>) -> &'static str {
    trigger_type.map_or("manual", afs_trigger::TriggerType::as_str)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_up_per_stem() {
        let check = |stem: &str, names: &[&str], expected: &str| {
            assert_eq!(next_version_name(stem, names.iter().copied()), expected);
        };
        check("nayru", &[], "nayru-v1");
        check("nayru", &["nayru-v1"], "nayru-v2");
        check("nayru", &["nayru-v1", "nayru-v7", "other-v9"], "nayru-v8");
        check("gpt-prod", &["gpt-prod"], "gpt-prod-v2");
        check("a-v", &["a-v-v3"], "a-v-v4");
        assert_eq!(split_version("nayru-v12"), ("nayru", Some(12)));
        assert_eq!(split_version("nayru-vx"), ("nayru-vx", None));
        assert_eq!(split_version("-v3"), ("-v3", None));
    }
}
