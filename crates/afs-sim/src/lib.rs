//! Simulated experiments under production-like traffic: synthetic users through the real
//! router, judge and bandit (and, with [`Backend::Sqlite`], the real store and
//! [`AbTest::check`]), with a manual clock, to measure false promotions, false rollbacks,
//! power and harm detection.
//!
//! # Traffic, as production makes it
//!
//! A [`Population`] of users (2,000 by default) sends about `requests_per_hour` requests an
//! hour (a Poisson count around a daily cycle of ±50%). Who sends a request is drawn by each
//! user's activity, which is heavy-tailed (log-normal, σ = 1.8: a few users send most
//! requests). Each user differs persistently from the others: a quality offset, a
//! propensity to give feedback and a propensity to give thumbs up (log-odds offsets). A
//! request is routed **by its user id** with [`HashRouter`], as `afs serve` routes it, so
//! each arm is a fixed group of users (each user's hash position is computed once per run
//! and routed with [`HashRouter::arm_at`], the rule `route` applies to it, so a request
//! costs no hash); [`Routing::PerRequest`] routes each request at
//! random and logs no unit id (the contrast: what a request-level analysis assumes).
//! Feedback arrives late (exponential delay, 3 h mean) and is recorded when it arrives.
//! Before the challenger is deployed, a week of champion traffic gives each user a history
//! (the CUPED covariate).
//!
//! Each simulated hour: generate the hour's requests, log them, record the feedback that
//! arrived, move the clock, check the experiment once, as the continuous loop does.
//!
//! # Backends
//!
//! * [`Backend::Sqlite`]: a real [`SqliteStore`] in a file: `log_batch` with unit ids,
//!   `record_feedback` when each thumb arrives, [`AbTest::check`] reading the store's
//!   rollups and per-unit statistics, recording every decision and applying it.
//! * [`Backend::Memory`]: the same traffic, router, judge and bandit, with the per-unit sums
//!   kept in memory ([`CohortBuilder`], the store's reference definition), so that
//!   thousands of runs take seconds. A test checks that both make the same decisions.
//!
//! The memory mode keeps its own sums and applies the store's rules of a look itself (the
//! states a look names replace the stored ones; a weight change ends a period) instead of
//! running the real `AbTest` on `afs_store_mem::MemStore`: that was tried, decided the same,
//! and cost 13 to 36 times as much (every simulated record logged through the store, about
//! 1.4 s of CPU per 14-day run; the simulation tests went from 48 s to 626 s on two cores),
//! which the statistical suites in CI cannot afford. The SQLite mode and the test that both
//! modes decide the same keep the copy honest.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use afs_store::{
    CohortBuilder, Decision, Experiment, ExperimentPeriod, ExperimentStatus, Feedback,
    FeedbackValue, ManualClock, NewModelVersion, NewUsage, SequentialState, UnitCohort, UnitTally,
    UsageStats, UsageStore, WeightSource,
};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use afs_abtest::{
    bandit_update, unit_position, AbTest, AbTestConfig, Arm, BanditConfig, Comparison, HashRouter,
    Judge, JudgeInput, PeriodStats, PrimaryMetric, Result, Router, RoutingTable, SequentialJudge,
};

/// How one arm's requests behave, on average over users.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmModel {
    /// Mean quality score (before the user's offset).
    pub quality_mean: f64,
    /// Half-width of the uniform per-request quality noise.
    pub quality_spread: f64,
    /// Share of requests that get feedback (for a user with no offset).
    pub feedback_rate: f64,
    /// Share of feedback that is a thumbs up (for a user with no offset).
    pub positive_rate: f64,
    /// Mean latency, ms.
    pub latency_ms: f64,
}

impl ArmModel {
    /// The reference model: quality 0.70 ± 0.25, 20% of requests rated, 70% thumbs up,
    /// 800 ms mean latency.
    pub fn baseline() -> Self {
        ArmModel {
            quality_mean: 0.70,
            quality_spread: 0.25,
            feedback_rate: 0.20,
            positive_rate: 0.70,
            latency_ms: 800.0,
        }
    }
}

/// The simulated users.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Population {
    /// Number of users.
    pub users: u32,
    /// σ of the log-normal activity weights (0 = every user equally active).
    pub activity_sigma: f64,
    /// Standard deviation of each user's persistent quality offset.
    pub quality_sd: f64,
    /// Standard deviation of each user's log-odds offset of giving feedback.
    pub feedback_sd: f64,
    /// Standard deviation of each user's log-odds offset of a thumbs up.
    pub positive_sd: f64,
    /// Relative amplitude of the daily load cycle (0.5: ±50%).
    pub diurnal_amplitude: f64,
    /// Mean delay of feedback after its response, hours (exponential; 0 = immediate).
    pub feedback_delay_hours: f64,
    /// Hours of champion-only traffic before the experiment (the users' history).
    pub history_hours: u32,
}

impl Default for Population {
    fn default() -> Self {
        Population {
            users: 2000,
            activity_sigma: 1.8,
            quality_sd: 0.08,
            feedback_sd: 0.8,
            positive_sd: 0.8,
            diurnal_amplitude: 0.5,
            feedback_delay_hours: 3.0,
            history_hours: 7 * 24,
        }
    }
}

impl Population {
    /// Independent, identical users sending requests at a constant rate with immediate
    /// feedback: the world a request-level analysis assumes.
    pub fn homogeneous() -> Self {
        Population {
            activity_sigma: 0.0,
            quality_sd: 0.0,
            feedback_sd: 0.0,
            positive_sd: 0.0,
            diurnal_amplitude: 0.0,
            feedback_delay_hours: 0.0,
            ..Population::default()
        }
    }
}

/// How requests are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// By user id, sticky (what `afs serve` does): records carry the user as unit id.
    ByUnit,
    /// Each request at random by weight, logged without a unit id.
    PerRequest,
}

/// One kind of simulated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name for reports.
    pub name: String,
    /// Mean requests per simulated hour (both arms together).
    pub requests_per_hour: u32,
    /// The challenger's initial weight.
    pub challenger_weight: f64,
    /// Hours simulated after the deployment (the horizon).
    pub hours: u32,
    /// The users.
    pub population: Population,
    /// How requests are routed.
    pub routing: Routing,
    /// The champion's behaviour.
    pub champion: ArmModel,
    /// The challenger's behaviour.
    pub challenger: ArmModel,
    /// The experiment's settings.
    pub config: AbTestConfig,
    /// Keep simulating to the horizon after the first promotion or rollback decision (which
    /// is then recorded but not applied), so the seed's fixed rule can be followed on the
    /// same traffic. When false the decision is applied and the run ends.
    pub run_to_horizon: bool,
    /// Give the judge the per-unit statistics (true); false shows it only the per-request
    /// rollups, as afs judged before it analysed units (memory backend only).
    pub unit_analysis: bool,
}

impl Scenario {
    fn base(name: &str, challenger: ArmModel) -> Self {
        Scenario {
            name: name.to_string(),
            requests_per_hour: 500,
            challenger_weight: 0.1,
            hours: 14 * 24,
            population: Population::default(),
            routing: Routing::ByUnit,
            champion: ArmModel::baseline(),
            challenger,
            config: AbTestConfig::default(),
            run_to_horizon: false,
            unit_analysis: true,
        }
    }

    /// Identical arms, ~500 requests/h from 2,000 heterogeneous users routed by user at
    /// 90/10, 14 days, default settings (quality primary). Every promotion and every
    /// rollback is wrong.
    pub fn aa() -> Self {
        Scenario {
            run_to_horizon: true,
            ..Self::base("aa", ArmModel::baseline())
        }
    }

    /// A/A with the positive-feedback rate as primary metric.
    pub fn aa_positive_rate() -> Self {
        let mut s = Self::aa();
        s.name = "aa_positive_rate".into();
        s.config.primary_metric = PrimaryMetric::PositiveRate;
        s
    }

    /// A/A with `min_lift` 0: the false-promotion rate of the sequential test alone.
    pub fn aa_statistics_only() -> Self {
        let mut s = Self::aa();
        s.name = "aa_statistics_only".into();
        s.config.min_lift = 0.0;
        s
    }

    /// The better challenger of the requirements: +0.03 quality (0.73 vs 0.70) and a 5%
    /// higher thumbs-up rate (0.735 vs 0.70); quality is primary.
    pub fn power_quality() -> Self {
        Self::base(
            "power_quality",
            ArmModel {
                quality_mean: 0.73,
                positive_rate: 0.735,
                ..ArmModel::baseline()
            },
        )
    }

    /// The challenger's thumbs-up rate is 5% higher (0.735 vs 0.70), quality unchanged;
    /// positive-feedback rate is the primary metric.
    pub fn power_positive_rate() -> Self {
        let mut s = Self::base(
            "power_positive_rate",
            ArmModel {
                positive_rate: 0.735,
                ..ArmModel::baseline()
            },
        );
        s.config.primary_metric = PrimaryMetric::PositiveRate;
        s
    }

    /// The challenger is 10% worse: quality 0.63 and thumbs-up rate 0.63.
    pub fn harm() -> Self {
        Self::base(
            "harm",
            ArmModel {
                quality_mean: 0.63,
                positive_rate: 0.63,
                ..ArmModel::baseline()
            },
        )
    }

    /// This scenario with the challenger at `weight` (name suffixed `_w20` for 0.2).
    pub fn at_weight(mut self, weight: f64) -> Self {
        self.name
            .push_str(&format!("_w{:.0}", (weight * 100.0).round()));
        self.challenger_weight = weight;
        self
    }

    /// This scenario with Thompson-sampling weights (default bandit settings), its name
    /// suffixed with `_bandit`.
    pub fn with_bandit(mut self) -> Self {
        self.name.push_str("_bandit");
        self.config.bandit = Some(BanditConfig::default());
        self
    }

    /// This scenario without CUPED, its name suffixed with `_no_cuped`.
    pub fn without_cuped(mut self) -> Self {
        self.name.push_str("_no_cuped");
        self.config.cuped = false;
        self
    }

    /// This scenario with every request routed at random and logged without a unit id,
    /// its name suffixed with `_per_request`.
    pub fn per_request(mut self) -> Self {
        self.name.push_str("_per_request");
        self.routing = Routing::PerRequest;
        self
    }

    /// This scenario with `aggregation` for the primary metric (the ratio form), its name
    /// suffixed with `_ratio`.
    pub fn with_ratio_primary(mut self) -> Self {
        self.name.push_str("_ratio");
        let primary = self.config.primary_metric.metric();
        self.config.ratio_metrics.push(primary);
        self
    }

    /// This scenario judged per request from the rollups (the judge before unit analysis),
    /// its name suffixed with `_request_level`; with `srm` false the sample-ratio alarm is
    /// off too (suffix `_no_srm`). Memory backend only.
    pub fn request_level(mut self, srm: bool) -> Self {
        self.name.push_str("_request_level");
        self.unit_analysis = false;
        if !srm {
            self.name.push_str("_no_srm");
            self.config.srm_min_deviation = 0.999;
        }
        self
    }

    /// The scenarios the bench reports, in order: the requirements' four at 10% and at
    /// 20%, then the variants.
    pub fn standard() -> Vec<Scenario> {
        let mut out = Vec::new();
        for weight in [0.1, 0.2] {
            for s in [Self::aa(), Self::power_quality(), Self::harm()] {
                out.push(if weight == 0.1 {
                    s
                } else {
                    s.at_weight(weight)
                });
            }
        }
        out.extend([
            Self::aa_statistics_only(),
            Self::aa_positive_rate(),
            Self::power_positive_rate(),
            Self::power_quality().without_cuped(),
            Self::power_quality().with_ratio_primary(),
            Self::aa().per_request(),
            Self::aa().request_level(true),
            Self::aa().request_level(false),
            Self::power_quality().request_level(true),
            Self::aa().with_bandit(),
            Self::power_positive_rate().with_bandit(),
            Self::harm().with_bandit(),
        ]);
        out
    }
}

/// Where a simulation keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Per-unit and per-period sums in memory; same router, judge and bandit.
    Memory,
    /// A real SQLite store per run, in a new file under `dir` (deleted after the run).
    Sqlite {
        /// Directory for the run databases.
        dir: PathBuf,
    },
}

/// What happened in one simulated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The run's seed.
    pub seed: u64,
    /// The first promote or rollback decision, if any.
    pub decision: Option<Decision>,
    /// Hours after deployment at which it was taken.
    pub decided_at_hour: Option<u32>,
    /// Hours after deployment at which the seed's fixed rule would first have promoted.
    pub fixed_rule_promoted_at_hour: Option<u32>,
    /// Looks that ended in `hold`.
    pub held_looks: u32,
    /// Looks taken.
    pub looks: u32,
    /// The decision and reason of the last look.
    pub last_reason: String,
}

/// A small, fast generator for the synthetic traffic (xoshiro256++ seeded by SplitMix64).
struct TrafficRng([u64; 4]);

impl TrafficRng {
    fn new(seed: u64) -> Self {
        let mut s = afs_store::rng::SplitMix64::new(seed);
        TrafficRng([s.next_u64(), s.next_u64(), s.next_u64(), s.next_u64()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller, one of the pair).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Exponential with mean `mean` (0 gives 0).
    fn exponential(&mut self, mean: f64) -> f64 {
        if mean <= 0.0 {
            0.0
        } else {
            -mean * (1.0 - self.next_f64()).ln()
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One simulated user's persistent traits.
struct User {
    id: String,
    quality_offset: f64,
    feedback_offset: f64,
    positive_offset: f64,
}

/// The users of one run and how to draw who sends the next request.
struct Users {
    users: Vec<User>,
    /// Cumulative activity weights, normalised to end at 1.
    cumulative: Vec<f64>,
    /// What each request of a user would otherwise compute again: see [`Known`].
    known: RefCell<Known>,
}

/// Values of a run's users that only change with the experiment or the arm's model, kept
/// so that a request costs neither a BLAKE3 hash nor a `ln`/`exp` pair for them (a third
/// of a simulation's time). They are the same numbers, so the runs are unchanged.
#[derive(Default)]
struct Known {
    /// Each user's [`unit_position`] under the routing seed `.0`.
    positions: Option<(u64, Vec<f64>)>,
    /// Per arm (champion, challenger).
    chances: [Option<Chances>; 2],
}

/// A model's feedback and positive rates, and each user's chance to give feedback and to
/// give a thumbs up under that model.
type Chances = ((f64, f64), Vec<(f64, f64)>);

impl Users {
    fn new(population: &Population, rng: &mut TrafficRng) -> Self {
        let n = population.users.max(1) as usize;
        let mut users = Vec::with_capacity(n);
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0;
        for i in 0..n {
            total += (population.activity_sigma * rng.normal()).exp();
            cumulative.push(total);
            users.push(User {
                id: format!("user-{i}"),
                quality_offset: population.quality_sd * rng.normal(),
                feedback_offset: population.feedback_sd * rng.normal(),
                positive_offset: population.positive_sd * rng.normal(),
            });
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Users {
            users,
            cumulative,
            known: RefCell::default(),
        }
    }

    /// The arm `router` gives `user` under `table` ([`HashRouter::arm_at`] of the user's
    /// position, which is computed once per routing seed).
    fn arm(&self, table: &RoutingTable, user: usize) -> Arm {
        if table.challenger_weight() <= 0.0 {
            return Arm::Champion;
        }
        let mut known = self.known.borrow_mut();
        let seed = table.seed();
        if known.positions.as_ref().is_none_or(|(s, _)| *s != seed) {
            let positions = self
                .users
                .iter()
                .map(|u| unit_position(seed, &u.id))
                .collect();
            known.positions = Some((seed, positions));
        }
        let position = known.positions.as_ref().map_or(1.0, |(_, p)| p[user]);
        HashRouter::arm_at(table, position)
    }

    /// `user`'s chances under `model` serving `arm`: to give feedback, and for that
    /// feedback to be a thumbs up.
    fn chances(&self, arm: Arm, model: &ArmModel, user: usize) -> (f64, f64) {
        let mut known = self.known.borrow_mut();
        let slot = &mut known.chances[usize::from(arm == Arm::Challenger)];
        let rates = (model.feedback_rate, model.positive_rate);
        if slot.as_ref().is_none_or(|(r, _)| *r != rates) {
            let (rate, positive) = (logit(rates.0), logit(rates.1));
            let chances = self
                .users
                .iter()
                .map(|u| {
                    (
                        sigmoid(rate + u.feedback_offset),
                        sigmoid(positive + u.positive_offset),
                    )
                })
                .collect();
            *slot = Some((rates, chances));
        }
        slot.as_ref().map_or((0.0, 0.0), |(_, c)| c[user])
    }

    fn pick(&self, rng: &mut TrafficRng) -> usize {
        let u = rng.next_f64();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.users.len() - 1)
    }
}

/// One synthetic request.
struct Request {
    user: usize,
    arm: Arm,
    at: DateTime<Utc>,
    quality: f64,
    latency_ms: f64,
    /// The thumb its user will give, and when it arrives.
    feedback: Option<(FeedbackValue, DateTime<Utc>)>,
}

fn draw(
    model: &ArmModel,
    user: &User,
    (feedback_chance, positive_chance): (f64, f64),
    population: &Population,
    at: DateTime<Utc>,
    rng: &mut TrafficRng,
) -> (f64, f64, Option<(FeedbackValue, DateTime<Utc>)>) {
    let quality = (model.quality_mean
        + user.quality_offset
        + model.quality_spread * (2.0 * rng.next_f64() - 1.0))
        .clamp(0.0, 1.0);
    let latency_ms = model.latency_ms * (0.5 + rng.next_f64());
    let gives = rng.next_f64() < feedback_chance;
    let positive = rng.next_f64() < positive_chance;
    let feedback = gives.then(|| {
        let value = if positive {
            FeedbackValue::Positive
        } else {
            FeedbackValue::Negative
        };
        let delay = rng.exponential(population.feedback_delay_hours);
        (
            value,
            at + Duration::milliseconds((delay * 3_600_000.0) as i64),
        )
    });
    (quality, latency_ms, feedback)
}

fn sim_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// Generates the requests of the hour starting at `hour_start`, `hour_of_day` giving the
/// daily cycle; `table` routes (champion only before the experiment).
#[allow(clippy::too_many_arguments)]
fn hour_of_traffic(
    scenario: &Scenario,
    users: &Users,
    table: &RoutingTable,
    router: &HashRouter,
    hour_start: DateTime<Utc>,
    hour_of_day: u32,
    rng: &mut TrafficRng,
) -> Vec<Request> {
    let p = &scenario.population;
    let phase = 2.0 * std::f64::consts::PI * f64::from(hour_of_day) / 24.0;
    let rate = f64::from(scenario.requests_per_hour) * (1.0 + p.diurnal_amplitude * phase.sin());
    // Poisson count, normal approximation (rates of hundreds).
    let n = (rate + rate.sqrt() * rng.normal()).round().max(0.0) as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let user = users.pick(rng);
        let arm = match scenario.routing {
            // The router's answer, from the user's position kept for the run.
            Routing::ByUnit => users.arm(table, user),
            Routing::PerRequest => router.route(table, None),
        };
        let model = match arm {
            Arm::Champion => &scenario.champion,
            Arm::Challenger => &scenario.challenger,
        };
        let at = hour_start + Duration::microseconds((rng.next_f64() * 3.6e9) as i64);
        let chances = users.chances(arm, model, user);
        let (quality, latency_ms, feedback) = draw(model, &users.users[user], chances, p, at, rng);
        out.push(Request {
            user,
            arm,
            at,
            quality,
            latency_ms,
            feedback,
        });
    }
    out
}

/// A thumb on its way: ordered by arrival (earliest first in the heap).
#[derive(PartialEq, Eq)]
struct Pending {
    arrives: DateTime<Utc>,
    request: usize,
    value: FeedbackValue,
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .arrives
            .cmp(&self.arrives)
            .then(other.request.cmp(&self.request))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Follows one run's looks: the first terminal decision and the fixed rule's first promotion.
struct Tracker {
    outcome: RunOutcome,
}

impl Tracker {
    fn new(seed: u64) -> Self {
        Tracker {
            outcome: RunOutcome {
                seed,
                decision: None,
                decided_at_hour: None,
                fixed_rule_promoted_at_hour: None,
                held_looks: 0,
                looks: 0,
                last_reason: String::new(),
            },
        }
    }

    /// Records a look at `hour`; returns true when the run can stop.
    fn look(&mut self, hour: u32, c: &Comparison, run_to_horizon: bool) -> bool {
        let o = &mut self.outcome;
        o.looks += 1;
        o.last_reason = format!("{}: {}", c.decision.as_str(), c.reason);
        if c.decision == Decision::Hold {
            o.held_looks += 1;
        }
        if o.decision.is_none() && matches!(c.decision, Decision::Promote | Decision::Rollback) {
            o.decision = Some(c.decision);
            o.decided_at_hour = Some(hour);
        }
        if o.fixed_rule_promoted_at_hour.is_none() && c.seed.fixed_rule_promotes {
            o.fixed_rule_promoted_at_hour = Some(hour);
        }
        if run_to_horizon {
            o.decision.is_some() && o.fixed_rule_promoted_at_hour.is_some()
        } else {
            o.decision.is_some()
        }
    }
}

fn run_config(scenario: &Scenario) -> AbTestConfig {
    let mut config = scenario.config.clone();
    if scenario.run_to_horizon {
        config.enable_auto_promotion = false;
        config.enable_auto_rollback = false;
    }
    config
}

/// The generators of one run: users, traffic, router seed, experiment seed.
struct RunSeeds {
    users: u64,
    traffic: u64,
    router: u64,
    experiment: u64,
}

fn seeds_of(seed: u64) -> RunSeeds {
    let mut s = afs_store::rng::SplitMix64::new(seed);
    RunSeeds {
        users: s.next_u64(),
        traffic: s.next_u64(),
        router: s.next_u64(),
        experiment: s.next_u64(),
    }
}

/// One user's records in one arm, in memory.
#[derive(Clone, Copy)]
struct UnitRow {
    first: DateTime<Utc>,
    tally: UnitTally,
}

/// The in-memory state of one run: what the store would hold.
struct MemoryState {
    /// Per user: `[champion, challenger]` rows.
    units: Vec<[Option<UnitRow>; 2]>,
    /// Records without a unit id (per-request routing), each a unit of its own, summed per
    /// (period, arm) as they arrive; their feedback is added once it counts.
    loose: std::collections::BTreeMap<(u32, bool), UnitCohort>,
    /// Per user: the history before the experiment (covariate).
    history: Vec<UnitTally>,
    /// Feedback given on records that may still be younger than the maturity cut: (record
    /// time, whose row, value).
    immature: Vec<(DateTime<Utc>, Who, FeedbackValue)>,
}

impl MemoryState {
    /// The state before any traffic, for `n_users` users.
    fn new(n_users: usize) -> Self {
        MemoryState {
            units: vec![[None, None]; n_users],
            loose: Default::default(),
            history: vec![UnitTally::default(); n_users],
            immature: Vec::new(),
        }
    }
}

/// Whose sums a record adds to: a user's row in an arm, or (without a unit id) the sums of
/// its period and arm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Unit { user: usize, arm: usize },
    Loose { period: u32, challenger: bool },
}

/// Counts one thumb on a loose record (a unit of one record: its share is 0 or 1).
fn loose_feedback(state: &mut MemoryState, who: Who, value: FeedbackValue) {
    if let Who::Loose { period, challenger } = who {
        if let Some(c) = state.loose.get_mut(&(period, challenger)) {
            let up = f64::from(u8::from(value == FeedbackValue::Positive));
            let down = f64::from(u8::from(value == FeedbackValue::Negative));
            c.positive.add_unit(up, 1, None);
            c.negative.add_unit(down, 1, None);
        }
    }
}

fn memory_cohorts(
    state: &MemoryState,
    experiment: &Experiment,
    cuped: bool,
    cut: Option<DateTime<Utc>>,
) -> Vec<UnitCohort> {
    // Feedback of immature records is removed from a copy of the affected rows.
    let mut builder = CohortBuilder::new();
    let mut young: std::collections::HashMap<Who, UnitTally> = Default::default();
    for (at, who, value) in &state.immature {
        if cut.is_some_and(|c| *at >= c) {
            young
                .entry(*who)
                .or_default()
                .add(None, None, Some(*value), true);
        }
    }
    for (user, rows) in state.units.iter().enumerate() {
        for (arm, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            let mut tally = row.tally;
            if let Some(young) = young.get(&Who::Unit { user, arm }) {
                subtract_feedback(&mut tally, young);
            }
            let moved = rows[1 - arm].is_some_and(|other| other.first < row.first);
            let covariate = (cuped && state.history[user].n > 0).then_some(&state.history[user]);
            builder.add_unit(
                afs_store::units::period_at(experiment, row.first),
                arm == 1,
                &tally,
                !moved,
                false,
                covariate,
            );
        }
    }
    for cohort in state.loose.values() {
        builder.add_cohort(cohort);
    }
    builder.finish()
}

fn add_tally(into: &mut UnitTally, t: &UnitTally) {
    into.n_feedback += t.n_feedback;
    into.n_positive += t.n_positive;
    into.n_negative += t.n_negative;
}

fn subtract_feedback(into: &mut UnitTally, t: &UnitTally) {
    into.n_feedback -= t.n_feedback;
    into.n_positive -= t.n_positive;
    into.n_negative -= t.n_negative;
}

fn add_request(stats: &mut UsageStats, r: &Request) {
    stats.total += 1;
    stats.n_quality += 1;
    stats.sum_quality += r.quality;
    stats.sum_quality_sq += r.quality * r.quality;
    stats.n_latency += 1;
    stats.sum_latency_ms += r.latency_ms;
    stats.sum_latency_ms_sq += r.latency_ms * r.latency_ms;
}

fn add_feedback(stats: &mut UsageStats, value: FeedbackValue) {
    stats.with_feedback += 1;
    match value {
        FeedbackValue::Positive => stats.positive_feedback += 1,
        FeedbackValue::Negative => stats.negative_feedback += 1,
        FeedbackValue::Neutral => stats.neutral_feedback += 1,
    }
}

fn maturity_cut(config: &AbTestConfig, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let hours = config.feedback_maturity_hours;
    (hours > 0.0).then(|| now - Duration::milliseconds((hours * 3_600_000.0) as i64))
}

fn run_memory(scenario: &Scenario, seed: u64) -> Result<RunOutcome> {
    let config = run_config(scenario);
    let judge = SequentialJudge::new(config.clone())?;
    let seeds = seeds_of(seed);
    let mut user_rng = TrafficRng::new(seeds.users);
    let users = Users::new(&scenario.population, &mut user_rng);
    let mut rng = TrafficRng::new(seeds.traffic);
    let router = HashRouter::seeded(seeds.router);
    let t0 = sim_start();
    let mut state = MemoryState::new(users.users.len());
    memory_history(scenario, &users, &router, t0, &mut rng, &mut state);
    let history = scenario.population.history_hours;
    let covariates = config.cuped && config.cuped_lookback_days > 0.0;

    let mut experiment = memory_experiment(scenario, seeds.experiment, t0);
    let mut periods = vec![PeriodStats {
        challenger_weight: scenario.challenger_weight,
        ..PeriodStats::default()
    }];
    let mut ledger = Ledger::default();
    let mut states: Vec<SequentialState> = Vec::new();
    let mut tracker = Tracker::new(seed);
    for hour in 0..scenario.hours {
        let table = RoutingTable::from_experiment(&experiment);
        let hour_start = t0 + Duration::hours(i64::from(hour));
        let period = periods.len() - 1;
        for r in hour_of_traffic(
            scenario,
            &users,
            &table,
            &router,
            hour_start,
            (history + hour) % 24,
            &mut rng,
        ) {
            log_memory_request(
                scenario,
                &mut state,
                &mut ledger,
                &mut periods[period],
                period,
                r,
            );
        }
        let now = hour_start + Duration::hours(1);
        deliver_feedback(&config, &mut state, &mut ledger, &mut periods, now);
        let cut = maturity_cut(&config, now);
        if let Some(cut) = cut {
            mature_feedback(&mut state, cut);
        }
        let units = if scenario.unit_analysis {
            memory_cohorts(&state, &experiment, covariates, cut)
        } else {
            Vec::new()
        };
        let comparison = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            units: &units,
            previous: &states,
            now,
        });
        keep_states(&mut states, &comparison);
        let applied = is_applied(&config, comparison.decision);
        let done = tracker.look(hour + 1, &comparison, scenario.run_to_horizon);
        if applied || done {
            break;
        }
        if comparison.decision == Decision::KeepTesting {
            bandit_step(&config, &mut experiment, &mut periods, &comparison, now);
        }
    }
    Ok(tracker.outcome)
}

/// A week (`history_hours`) of champion traffic before `t0`: the users' history, summed
/// per user in `state` when routing is by user.
fn memory_history(
    scenario: &Scenario,
    users: &Users,
    router: &HashRouter,
    t0: DateTime<Utc>,
    rng: &mut TrafficRng,
    state: &mut MemoryState,
) {
    let champion_only = RoutingTable::champion_only("champion");
    let history = scenario.population.history_hours;
    for h in 0..history {
        let start = t0 - Duration::hours(i64::from(history - h));
        let hour_of_day = h % 24;
        for r in hour_of_traffic(
            scenario,
            users,
            &champion_only,
            router,
            start,
            hour_of_day,
            rng,
        ) {
            if scenario.routing == Routing::ByUnit {
                state.history[r.user].add(
                    Some(r.quality),
                    Some(r.latency_ms),
                    r.feedback.map(|f| f.0),
                    true,
                );
            }
        }
    }
}

/// The memory run's experiment, started at `t0` with the scenario's challenger weight.
fn memory_experiment(scenario: &Scenario, seed: u64, t0: DateTime<Utc>) -> Experiment {
    Experiment {
        id: 1,
        champion: "champion".into(),
        challenger: "challenger".into(),
        status: ExperimentStatus::Running,
        seed,
        challenger_weight: scenario.challenger_weight,
        started_at: t0,
        ended_at: None,
        periods: vec![ExperimentPeriod {
            index: 0,
            started_at: t0,
            ended_at: None,
            challenger_weight: scenario.challenger_weight,
            source: WeightSource::Initial,
        }],
    }
}

/// The memory run's requests of the experiment and the thumbs on their way.
#[derive(Default)]
struct Ledger {
    /// Per request of the experiment: whose row it adds to, its arm, period and time.
    requests: Vec<(Who, usize, usize, DateTime<Utc>)>,
    /// Thumbs given, not yet arrived.
    pending: BinaryHeap<Pending>,
}

/// Logs request `r` of period `period` (whose sums are `current`): added to its arm's
/// sums, to its user's row in that arm (or, routed per request, to its period and arm's
/// loose sums), and to the ledger with its thumb on the way, if any.
fn log_memory_request(
    scenario: &Scenario,
    state: &mut MemoryState,
    ledger: &mut Ledger,
    current: &mut PeriodStats,
    period: usize,
    r: Request,
) {
    let arm = usize::from(r.arm == Arm::Challenger);
    add_request(
        match r.arm {
            Arm::Champion => &mut current.champion,
            Arm::Challenger => &mut current.challenger,
        },
        &r,
    );
    let index = ledger.requests.len();
    let mut tally = UnitTally::default();
    tally.add(Some(r.quality), Some(r.latency_ms), None, true);
    let who = match scenario.routing {
        Routing::ByUnit => {
            let slot = &mut state.units[r.user][arm];
            match slot {
                Some(row) => {
                    row.first = row.first.min(r.at);
                    row.tally
                        .add(Some(r.quality), Some(r.latency_ms), None, true);
                }
                None => {
                    *slot = Some(UnitRow { first: r.at, tally });
                }
            }
            Who::Unit { user: r.user, arm }
        }
        Routing::PerRequest => {
            let key = (period as u32, arm == 1);
            state
                .loose
                .entry(key)
                .or_insert_with(|| UnitCohort {
                    period: key.0,
                    challenger: key.1,
                    ..UnitCohort::default()
                })
                .add_unit(&tally, true, true, None);
            Who::Loose {
                period: key.0,
                challenger: key.1,
            }
        }
    };
    ledger.requests.push((who, arm, period, r.at));
    if let Some((value, arrives)) = r.feedback {
        ledger.pending.push(Pending {
            arrives,
            request: index,
            value,
        });
    }
}

/// Records the feedback that arrived before `now`: in its period and arm's sums and in
/// its user's row; without a maturity wait a loose record's thumb counts at once, with one
/// every thumb waits in [`MemoryState::immature`].
fn deliver_feedback(
    config: &AbTestConfig,
    state: &mut MemoryState,
    ledger: &mut Ledger,
    periods: &mut [PeriodStats],
    now: DateTime<Utc>,
) {
    while ledger.pending.peek().is_some_and(|p| p.arrives < now) {
        let Some(p) = ledger.pending.pop() else { break };
        let (who, arm, period, at) = ledger.requests[p.request];
        let stats = &mut periods[period];
        add_feedback(
            if arm == 1 {
                &mut stats.challenger
            } else {
                &mut stats.champion
            },
            p.value,
        );
        let mut t = UnitTally::default();
        t.add(None, None, Some(p.value), true);
        match who {
            Who::Unit { user, arm } => {
                if let Some(row) = &mut state.units[user][arm] {
                    add_tally(&mut row.tally, &t);
                }
            }
            Who::Loose { .. } => {}
        }
        match who {
            Who::Loose { .. } if config.feedback_maturity_hours <= 0.0 => {
                loose_feedback(state, who, p.value);
            }
            _ if config.feedback_maturity_hours > 0.0 => {
                state.immature.push((at, who, p.value));
            }
            _ => {}
        }
    }
}

/// Ends the wait of the thumbs on records logged before `cut` (a loose record's then
/// counts), keeping those on younger records waiting.
fn mature_feedback(state: &mut MemoryState, cut: DateTime<Utc>) {
    let (mature, young): (Vec<_>, Vec<_>) =
        state.immature.drain(..).partition(|(at, ..)| *at < cut);
    state.immature = young;
    for (_, who, value) in mature {
        loose_feedback(state, who, value);
    }
}

/// Whether the configuration has `decision` applied automatically (a promotion or a
/// rollback): the run then ends.
fn is_applied(config: &AbTestConfig, decision: Decision) -> bool {
    match decision {
        Decision::Promote => config.enable_auto_promotion,
        Decision::Rollback => config.enable_auto_rollback,
        _ => false,
    }
}

/// The store's rule: the states a look names replace the stored ones.
fn keep_states(states: &mut Vec<SequentialState>, comparison: &Comparison) {
    for state in &comparison.states {
        match states.iter_mut().find(|s| s.metric == state.metric) {
            Some(slot) => *slot = state.clone(),
            None => states.push(state.clone()),
        }
    }
}

/// The bandit's move after a look that keeps testing: a new weight ends the current
/// period at `now` and starts one with that weight.
fn bandit_step(
    config: &AbTestConfig,
    experiment: &mut Experiment,
    periods: &mut Vec<PeriodStats>,
    comparison: &Comparison,
    now: DateTime<Utc>,
) {
    let Some(update) = bandit_update(
        config,
        experiment,
        periods,
        (comparison.champion_units, comparison.challenger_units),
        now,
    ) else {
        return;
    };
    if let Some(last) = experiment.periods.last_mut() {
        last.ended_at = Some(now);
    }
    experiment.periods.push(ExperimentPeriod {
        index: experiment.periods.len() as u32,
        started_at: now,
        ended_at: None,
        challenger_weight: update.weight,
        source: WeightSource::Bandit,
    });
    experiment.challenger_weight = update.weight;
    periods.push(PeriodStats {
        challenger_weight: update.weight,
        ..PeriodStats::default()
    });
}

fn record_of(scenario: &Scenario, users: &Users, r: &Request, model: &str) -> NewUsage {
    NewUsage {
        latency_ms: Some(r.latency_ms),
        quality_score: Some(r.quality),
        timestamp: Some(r.at),
        unit_id: match scenario.routing {
            Routing::ByUnit => Some(users.users[r.user].id.clone()),
            Routing::PerRequest => None,
        },
        ..NewUsage::new("simulated query", "simulated response", model)
    }
}

fn run_sqlite(scenario: &Scenario, seed: u64, dir: &std::path::Path) -> Result<RunOutcome> {
    let config = run_config(scenario);
    let seeds = seeds_of(seed);
    let mut user_rng = TrafficRng::new(seeds.users);
    let users = Users::new(&scenario.population, &mut user_rng);
    let mut rng = TrafficRng::new(seeds.traffic);
    let router = HashRouter::seeded(seeds.router);
    let t0 = sim_start();
    let path = dir.join(format!("sim-{}-{seed:016x}.db", scenario.name));
    remove_database(&path);
    let history = scenario.population.history_hours;
    let clock = Arc::new(ManualClock::new(t0 - Duration::hours(i64::from(history))));
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path), clock.clone())?);
    let ab = AbTest::new(store.clone(), config)?;
    ab.set_champion(
        &NewModelVersion::new("champion", "sim://champion"),
        "simulation",
    )?;
    // The users' history: champion traffic with its feedback, before the experiment.
    let table = ab.routing_table()?;
    for h in 0..history {
        let start = t0 - Duration::hours(i64::from(history - h));
        let records: Vec<NewUsage> =
            hour_of_traffic(scenario, &users, &table, &router, start, h % 24, &mut rng)
                .iter()
                .map(|r| NewUsage {
                    feedback: r.feedback.map(|(value, _)| Feedback {
                        value,
                        text: None,
                        at: Some(r.at),
                    }),
                    ..record_of(scenario, &users, r, "champion")
                })
                .collect();
        store.log_batch(records)?;
    }
    clock.set(t0);
    ab.deploy_challenger_with_seed(
        &NewModelVersion::new("challenger", "sim://challenger"),
        Some(scenario.challenger_weight),
        seeds.experiment,
        "simulation",
    )?;
    let mut pending: BinaryHeap<Pending> = BinaryHeap::new();
    let mut ids: Vec<String> = Vec::new();
    let mut tracker = Tracker::new(seed);
    for hour in 0..scenario.hours {
        let table = ab.routing_table()?;
        let hour_start = t0 + Duration::hours(i64::from(hour));
        let requests = hour_of_traffic(
            scenario,
            &users,
            &table,
            &router,
            hour_start,
            (history + hour) % 24,
            &mut rng,
        );
        let records: Vec<NewUsage> = requests
            .iter()
            .map(|r| record_of(scenario, &users, r, table.model(r.arm)))
            .collect();
        let first = ids.len();
        ids.extend(store.log_batch(records)?);
        for (i, r) in requests.iter().enumerate() {
            if let Some((value, arrives)) = r.feedback {
                pending.push(Pending {
                    arrives,
                    request: first + i,
                    value,
                });
            }
        }
        let now = hour_start + Duration::hours(1);
        while pending.peek().is_some_and(|p| p.arrives < now) {
            let Some(p) = pending.pop() else { break };
            clock.set(p.arrives.max(hour_start));
            store.record_feedback(&ids[p.request], p.value, None)?;
        }
        clock.set(now);
        let outcome = ab.check()?;
        let Some(comparison) = outcome.comparison else {
            break;
        };
        let done = tracker.look(hour + 1, &comparison, scenario.run_to_horizon);
        if outcome.applied.is_some() || done {
            break;
        }
    }
    drop(ab);
    drop(store);
    remove_database(&path);
    Ok(tracker.outcome)
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Runs one simulated experiment with `seed`.
pub fn run_experiment(scenario: &Scenario, backend: &Backend, seed: u64) -> Result<RunOutcome> {
    match backend {
        Backend::Memory => run_memory(scenario, seed),
        Backend::Sqlite { dir } => run_sqlite(scenario, seed, dir),
    }
}

/// Rates over many runs of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioRates {
    /// The scenario's name.
    pub scenario: String,
    /// Runs simulated.
    pub runs: usize,
    /// First seed (run `i` uses `base_seed + i`).
    pub base_seed: u64,
    /// Runs whose first terminal decision was a promotion within the horizon.
    pub promoted: usize,
    /// Runs whose first terminal decision was a rollback within the horizon.
    pub rolled_back: usize,
    /// Runs rolled back within 48 hours of deployment.
    pub rolled_back_within_48h: usize,
    /// Runs in which the seed's fixed rule would have promoted within the horizon.
    pub fixed_rule_promoted: usize,
    /// Runs with at least one `hold` look.
    pub held: usize,
    /// Median hours from deployment to the first terminal decision, over runs with one.
    pub median_hours_to_decision: Option<f64>,
    /// Every run's outcome, by seed.
    pub outcomes: Vec<RunOutcome>,
}

impl ScenarioRates {
    fn rate(&self, count: usize) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            count as f64 / self.runs as f64
        }
    }

    /// Share of runs promoted.
    pub fn promotion_rate(&self) -> f64 {
        self.rate(self.promoted)
    }

    /// Share of runs rolled back.
    pub fn rollback_rate(&self) -> f64 {
        self.rate(self.rolled_back)
    }

    /// Share of runs rolled back within 48 hours.
    pub fn rollback_within_48h_rate(&self) -> f64 {
        self.rate(self.rolled_back_within_48h)
    }

    /// Share of runs the seed's fixed rule would have promoted.
    pub fn fixed_rule_promotion_rate(&self) -> f64 {
        self.rate(self.fixed_rule_promoted)
    }

    /// The 95% Wilson interval of a share `count / runs`.
    pub fn interval(&self, count: usize) -> (f64, f64) {
        wilson(count, self.runs)
    }

    /// The rates as JSON (without the per-run outcomes).
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "runs": self.runs,
            "base_seed": self.base_seed,
            "promoted": self.promoted,
            "promotion_rate": self.promotion_rate(),
            "promotion_rate_95": self.interval(self.promoted),
            "rolled_back": self.rolled_back,
            "rollback_rate": self.rollback_rate(),
            "rollback_rate_95": self.interval(self.rolled_back),
            "rolled_back_within_48h": self.rolled_back_within_48h,
            "rollback_within_48h_rate": self.rollback_within_48h_rate(),
            "rollback_within_48h_rate_95": self.interval(self.rolled_back_within_48h),
            "fixed_rule_promoted": self.fixed_rule_promoted,
            "fixed_rule_promotion_rate": self.fixed_rule_promotion_rate(),
            "held": self.held,
            "median_hours_to_decision": self.median_hours_to_decision,
        })
    }
}

impl fmt::Display for ScenarioRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |count: usize| {
            let (lo, hi) = self.interval(count);
            format!(
                "{:>5.1}% [{:.1}, {:.1}]",
                self.rate(count) * 100.0,
                lo * 100.0,
                hi * 100.0
            )
        };
        write!(
            f,
            "{:<28} runs {:>5}  promoted {}  rolled back {} (within 48 h {})  \
             seed rule promoted {:>5.1}%  held {:>4}  median h to decision {}",
            self.scenario,
            self.runs,
            pct(self.promoted),
            pct(self.rolled_back),
            pct(self.rolled_back_within_48h),
            self.fixed_rule_promotion_rate() * 100.0,
            self.held,
            self.median_hours_to_decision
                .map_or("-".to_string(), |h| format!("{h:.0}")),
        )
    }
}

/// The 95% Wilson score interval of `count` successes in `runs` trials.
pub fn wilson(count: usize, runs: usize) -> (f64, f64) {
    if runs == 0 {
        return (0.0, 1.0);
    }
    let (n, p, z) = (runs as f64, count as f64 / runs as f64, 1.959_963_985);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Runs `runs` experiments of `scenario` with seeds `base_seed..base_seed + runs`, spread
/// over the machine's cores, and summarizes them.
pub fn run_scenario(
    scenario: &Scenario,
    backend: &Backend,
    runs: usize,
    base_seed: u64,
) -> Result<ScenarioRates> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, runs.max(1));
    let seeds: Vec<u64> = (0..runs as u64)
        .map(|i| base_seed.wrapping_add(i))
        .collect();
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let results: Vec<Result<Vec<RunOutcome>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| run_experiment(scenario, backend, seed))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    let mut outcomes = Vec::with_capacity(runs);
    for chunk in results {
        outcomes.extend(chunk?);
    }
    outcomes.sort_by_key(|o| o.seed.wrapping_sub(base_seed));
    Ok(summarize(scenario, base_seed, outcomes))
}

fn summarize(scenario: &Scenario, base_seed: u64, outcomes: Vec<RunOutcome>) -> ScenarioRates {
    let count = |f: &dyn Fn(&RunOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let mut hours: Vec<u32> = outcomes.iter().filter_map(|o| o.decided_at_hour).collect();
    hours.sort_unstable();
    let median_hours_to_decision = match hours.len() {
        0 => None,
        n if n % 2 == 1 => Some(f64::from(hours[n / 2])),
        n => Some((f64::from(hours[n / 2 - 1]) + f64::from(hours[n / 2])) / 2.0),
    };
    ScenarioRates {
        scenario: scenario.name.clone(),
        runs: outcomes.len(),
        base_seed,
        promoted: count(&|o| o.decision == Some(Decision::Promote)),
        rolled_back: count(&|o| o.decision == Some(Decision::Rollback)),
        rolled_back_within_48h: count(&|o| {
            o.decision == Some(Decision::Rollback) && o.decided_at_hour.is_some_and(|h| h <= 48)
        }),
        fixed_rule_promoted: count(&|o| o.fixed_rule_promoted_at_hour.is_some()),
        held: count(&|o| o.held_looks > 0),
        median_hours_to_decision,
        outcomes,
    }
}

/// Sticky-routing properties measured over many unit ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingCheck {
    /// Unit ids routed.
    pub units: u64,
    /// Challenger share at weight 0.1.
    pub share_at_10: f64,
    /// Challenger share at weight 0.5.
    pub share_at_50: f64,
    /// Units whose second routing differed from the first (must be 0).
    pub unstable: u64,
    /// Units on the challenger at 10% but on the champion at 50% (must be 0).
    pub moved_back: u64,
}

impl RoutingCheck {
    /// The check as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "units": self.units,
            "share_at_10": self.share_at_10,
            "share_at_50": self.share_at_50,
            "unstable": self.unstable,
            "moved_back": self.moved_back,
        })
    }
}

/// Routes `units` unit ids at weights 0.1 and 0.5 with one experiment seed and measures the
/// split, stickiness and monotonicity.
pub fn routing_check(units: u64, seed: u64) -> RoutingCheck {
    let router = HashRouter::seeded(seed);
    let t10 = RoutingTable::split("champion", "challenger", 0.1, seed).expect("valid weight");
    let t50 = RoutingTable::split("champion", "challenger", 0.5, seed).expect("valid weight");
    let (mut at_10, mut at_50, mut unstable, mut moved_back) = (0u64, 0u64, 0u64, 0u64);
    let mut unit = String::new();
    for i in 0..units {
        unit.clear();
        fmt::write(&mut unit, format_args!("user-{i}")).expect("writing to a string");
        let first = router.route(&t10, Some(&unit));
        if router.route(&t10, Some(&unit)) != first {
            unstable += 1;
        }
        let wider = router.route(&t50, Some(&unit));
        at_10 += u64::from(first == Arm::Challenger);
        at_50 += u64::from(wider == Arm::Challenger);
        if first == Arm::Challenger && wider == Arm::Champion {
            moved_back += 1;
        }
    }
    let n = units.max(1) as f64;
    RoutingCheck {
        units,
        share_at_10: at_10 as f64 / n,
        share_at_50: at_50 as f64 / n,
        unstable,
        moved_back,
    }
}

/// What the bench prints.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// One entry per standard scenario.
    pub scenarios: Vec<ScenarioRates>,
    /// The sticky-routing check over 1,000,000 ids.
    pub routing: RoutingCheck,
}

impl BenchReport {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "scenarios": self.scenarios.iter().map(ScenarioRates::to_json).collect::<Vec<_>>(),
            "routing": self.routing.to_json(),
        })
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.scenarios {
            writeln!(f, "{s}")?;
        }
        let r = &self.routing;
        write!(
            f,
            "{:<22} units {}  share at 10% {:.4}  at 50% {:.4}  unstable {}  moved back {}",
            "sticky_routing", r.units, r.share_at_10, r.share_at_50, r.unstable, r.moved_back
        )
    }
}

/// Runs `runs` experiments of every [`Scenario::standard`] scenario (seeds from
/// `base_seed`) and the routing check: what `cargo xtask bench` prints.
pub fn bench(runs: usize, base_seed: u64, backend: &Backend) -> Result<BenchReport> {
    let scenarios = Scenario::standard()
        .iter()
        .map(|s| run_scenario(s, backend, runs, base_seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchReport {
        scenarios,
        routing: routing_check(1_000_000, base_seed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_positions_and_chances_give_what_the_router_and_the_draw_would() {
        let population = Population {
            users: 300,
            ..Population::default()
        };
        let users = Users::new(&population, &mut TrafficRng::new(7));
        let router = HashRouter::seeded(1);
        let champion_only = RoutingTable::champion_only("a");
        let mut tables = vec![champion_only];
        for (weight, seed) in [(0.0, 3), (0.2, 3), (0.7, 3), (0.7, 11), (1.0, 11)] {
            tables.push(RoutingTable::split("a", "b", weight, seed).unwrap());
        }
        // Tables in turn, so a kept position of one seed must not serve another.
        for table in tables.iter().chain(tables.iter().rev()) {
            for (u, user) in users.users.iter().enumerate() {
                assert_eq!(
                    users.arm(table, u),
                    router.route(table, Some(&user.id)),
                    "user {u}, weight {}, seed {}",
                    table.challenger_weight(),
                    table.seed()
                );
            }
        }
        let models = [
            ArmModel::baseline(),
            ArmModel {
                feedback_rate: 0.35,
                positive_rate: 0.5,
                ..ArmModel::baseline()
            },
        ];
        for model in models.iter().chain(models.iter().rev()) {
            for arm in [Arm::Champion, Arm::Challenger] {
                for (u, user) in users.users.iter().enumerate() {
                    let expected = (
                        sigmoid(logit(model.feedback_rate) + user.feedback_offset),
                        sigmoid(logit(model.positive_rate) + user.positive_offset),
                    );
                    assert_eq!(users.chances(arm, model, u), expected, "user {u}");
                }
            }
        }
    }
}
