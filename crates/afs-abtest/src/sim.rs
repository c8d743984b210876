//! Simulated experiments: synthetic traffic through the real router, store and judge with a
//! manual clock, to measure false-promotion rate, power and harm detection.
//!
//! Each run deploys a challenger, then for every simulated hour routes
//! `requests_per_hour` requests with [`HashRouter`], draws each request's quality, feedback
//! and latency from its arm's [`ArmModel`], logs the hour, moves the clock and checks the
//! experiment once, as the continuous loop does.
//!
//! Two backends run the same runs:
//! * [`Backend::Sqlite`]: the real [`SqliteStore`] in a file, logging each hour with
//!   `log_batch` and checking with [`AbTest::check`], which reads the rollups, records every
//!   decision and applies promotions and rollbacks in the store.
//! * [`Backend::Memory`]: the same router, judge and bandit, with the per-period sums kept in
//!   memory instead of SQLite, so that thousands of runs take seconds. Given a seed it makes
//!   the same decisions as the SQLite backend (a test checks this), so its rates are the
//!   store's rates.
//!
//! Traffic model: quality is uniform on `quality_mean ± quality_spread`; a request gets
//! feedback with probability `feedback_rate`, thumbs up with probability `positive_rate`
//! (thumbs down otherwise); latency is uniform on `latency_ms × [0.5, 1.5)`. Requests carry
//! no unit id, so routing is the router's weighted random draw.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use afs_store::{
    Decision, Experiment, ExperimentPeriod, ExperimentStatus, Feedback, FeedbackValue, ManualClock,
    NewModelVersion, NewUsage, SequentialState, SqliteConfig, SqliteStore, UsageStats, UsageStore,
    WeightSource,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use crate::bandit::bandit_update;
use crate::comparison::Comparison;
use crate::config::{AbTestConfig, BanditConfig, PrimaryMetric};
use crate::error::Result;
use crate::judge::{Judge, JudgeInput, PeriodStats, SequentialJudge};
use crate::manager::AbTest;
use crate::router::{Arm, HashRouter, Router, RoutingTable};

/// How one arm's requests behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmModel {
    /// Mean quality score.
    pub quality_mean: f64,
    /// Half-width of the uniform quality distribution around the mean.
    pub quality_spread: f64,
    /// Share of requests that get feedback.
    pub feedback_rate: f64,
    /// Share of feedback that is a thumbs up (the rest are thumbs down).
    pub positive_rate: f64,
    /// Mean latency, ms.
    pub latency_ms: f64,
}

impl ArmModel {
    /// The reference model: quality 0.70 ± 0.25 (sd 0.144), 20% of requests rated, 70%
    /// thumbs up, 800 ms mean latency.
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

/// One kind of simulated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name for reports.
    pub name: String,
    /// Requests per simulated hour (both arms together).
    pub requests_per_hour: u32,
    /// The challenger's initial weight.
    pub challenger_weight: f64,
    /// Hours simulated (the horizon).
    pub hours: u32,
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
}

impl Scenario {
    fn base(name: &str, challenger: ArmModel) -> Self {
        Scenario {
            name: name.to_string(),
            requests_per_hour: 500,
            challenger_weight: 0.1,
            hours: 14 * 24,
            champion: ArmModel::baseline(),
            challenger,
            config: AbTestConfig::default(),
            run_to_horizon: false,
        }
    }

    /// Identical arms, 500 requests/h at 90/10, 14 days, default settings (quality primary).
    /// Every promotion is a false promotion.
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

    /// The challenger's mean quality is 0.03 higher (0.73 vs 0.70); quality is primary.
    pub fn power_quality() -> Self {
        Self::base(
            "power_quality",
            ArmModel {
                quality_mean: 0.73,
                ..ArmModel::baseline()
            },
        )
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

    /// This scenario with Thompson-sampling weights (default bandit settings), its name
    /// suffixed with `_bandit`.
    pub fn with_bandit(mut self) -> Self {
        self.name.push_str("_bandit");
        self.config.bandit = Some(BanditConfig::default());
        self
    }

    /// The scenarios the bench reports, in order.
    pub fn standard() -> Vec<Scenario> {
        vec![
            Self::aa(),
            Self::aa_statistics_only(),
            Self::aa_positive_rate(),
            Self::power_positive_rate(),
            Self::power_quality(),
            Self::harm(),
            Self::aa().with_bandit(),
            Self::power_positive_rate().with_bandit(),
            Self::harm().with_bandit(),
        ]
    }
}

/// Where a simulation keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Per-period sums in memory; same router, judge and bandit.
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

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TrafficRng {
    fn new(seed: u64) -> Self {
        let mut s = seed;
        TrafficRng([
            splitmix(&mut s),
            splitmix(&mut s),
            splitmix(&mut s),
            splitmix(&mut s),
        ])
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
}

/// One synthetic request.
struct Request {
    arm: Arm,
    quality: f64,
    feedback: Option<FeedbackValue>,
    latency_ms: f64,
}

fn draw(model: &ArmModel, arm: Arm, rng: &mut TrafficRng) -> Request {
    let quality =
        (model.quality_mean + model.quality_spread * (2.0 * rng.next_f64() - 1.0)).clamp(0.0, 1.0);
    let u = rng.next_f64();
    let feedback = if u < model.feedback_rate * model.positive_rate {
        Some(FeedbackValue::Positive)
    } else if u < model.feedback_rate {
        Some(FeedbackValue::Negative)
    } else {
        None
    };
    let latency_ms = model.latency_ms * (0.5 + rng.next_f64());
    Request {
        arm,
        quality,
        feedback,
        latency_ms,
    }
}

fn add(stats: &mut UsageStats, r: &Request) {
    stats.total += 1;
    stats.n_quality += 1;
    stats.sum_quality += r.quality;
    stats.sum_quality_sq += r.quality * r.quality;
    stats.n_latency += 1;
    stats.sum_latency_ms += r.latency_ms;
    stats.sum_latency_ms_sq += r.latency_ms * r.latency_ms;
    match r.feedback {
        Some(FeedbackValue::Positive) => {
            stats.with_feedback += 1;
            stats.positive_feedback += 1;
        }
        Some(FeedbackValue::Negative) => {
            stats.with_feedback += 1;
            stats.negative_feedback += 1;
        }
        Some(FeedbackValue::Neutral) => {
            stats.with_feedback += 1;
            stats.neutral_feedback += 1;
        }
        None => {}
    }
}

fn sim_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// Generates one hour of traffic.
fn hour_of_traffic(
    scenario: &Scenario,
    table: &RoutingTable,
    router: &HashRouter,
    rng: &mut TrafficRng,
) -> Vec<Request> {
    (0..scenario.requests_per_hour)
        .map(|_| {
            let arm = router.route(table, None);
            let model = match arm {
                Arm::Champion => &scenario.champion,
                Arm::Challenger => &scenario.challenger,
            };
            draw(model, arm, rng)
        })
        .collect()
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

fn seeds_of(seed: u64) -> (u64, u64, u64) {
    let mut s = seed;
    (splitmix(&mut s), splitmix(&mut s), splitmix(&mut s))
}

fn run_memory(scenario: &Scenario, seed: u64) -> Result<RunOutcome> {
    let config = run_config(scenario);
    let judge = SequentialJudge::new(config.clone())?;
    let (traffic_seed, router_seed, experiment_seed) = seeds_of(seed);
    let mut rng = TrafficRng::new(traffic_seed);
    let router = HashRouter::seeded(router_seed);
    let t0 = sim_start();
    let mut experiment = Experiment {
        id: 1,
        champion: "champion".into(),
        challenger: "challenger".into(),
        status: ExperimentStatus::Running,
        seed: experiment_seed,
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
    };
    let mut periods = vec![PeriodStats {
        challenger_weight: scenario.challenger_weight,
        ..PeriodStats::default()
    }];
    let mut states: Vec<SequentialState> = Vec::new();
    let mut tracker = Tracker::new(seed);
    for hour in 0..scenario.hours {
        let table = RoutingTable::from_experiment(&experiment);
        let current = periods.last_mut().expect("at least one period");
        for request in hour_of_traffic(scenario, &table, &router, &mut rng) {
            match request.arm {
                Arm::Champion => add(&mut current.champion, &request),
                Arm::Challenger => add(&mut current.challenger, &request),
            }
        }
        let now = t0 + Duration::hours(i64::from(hour) + 1);
        let comparison = judge.judge(&JudgeInput {
            experiment: &experiment,
            periods: &periods,
            previous: &states,
            now,
        });
        // The store's rule: the states a look names replace the stored ones.
        for state in &comparison.states {
            match states.iter_mut().find(|s| s.metric == state.metric) {
                Some(slot) => *slot = state.clone(),
                None => states.push(state.clone()),
            }
        }
        let applied = match comparison.decision {
            Decision::Promote => config.enable_auto_promotion,
            Decision::Rollback => config.enable_auto_rollback,
            _ => false,
        };
        let done = tracker.look(hour + 1, &comparison, scenario.run_to_horizon);
        if applied || done {
            break;
        }
        if comparison.decision == Decision::KeepTesting {
            if let Some(update) = bandit_update(&config, &experiment, &periods, now) {
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
        }
    }
    Ok(tracker.outcome)
}

fn run_sqlite(scenario: &Scenario, seed: u64, dir: &std::path::Path) -> Result<RunOutcome> {
    let config = run_config(scenario);
    let (traffic_seed, router_seed, experiment_seed) = seeds_of(seed);
    let mut rng = TrafficRng::new(traffic_seed);
    let router = HashRouter::seeded(router_seed);
    let t0 = sim_start();
    let path = dir.join(format!("sim-{}-{seed:016x}.db", scenario.name));
    remove_database(&path);
    let clock = Arc::new(ManualClock::new(t0));
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path), clock.clone())?);
    let ab = AbTest::new(store.clone(), config)?;
    ab.set_champion(
        &NewModelVersion::new("champion", "sim://champion"),
        "simulation",
    )?;
    ab.deploy_challenger_with_seed(
        &NewModelVersion::new("challenger", "sim://challenger"),
        Some(scenario.challenger_weight),
        experiment_seed,
        "simulation",
    )?;
    let mut tracker = Tracker::new(seed);
    let spacing_us = 3_600_000_000 / i64::from(scenario.requests_per_hour.max(1));
    for hour in 0..scenario.hours {
        let table = ab.routing_table()?;
        let hour_start = t0 + Duration::hours(i64::from(hour));
        let records: Vec<NewUsage> = hour_of_traffic(scenario, &table, &router, &mut rng)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let at = hour_start + Duration::microseconds(i as i64 * spacing_us);
                NewUsage {
                    latency_ms: Some(r.latency_ms),
                    quality_score: Some(r.quality),
                    timestamp: Some(at),
                    feedback: r.feedback.map(|value| Feedback {
                        value,
                        text: None,
                        at: Some(at),
                    }),
                    ..NewUsage::new("simulated query", "simulated response", table.model(r.arm))
                }
            })
            .collect();
        store.log_batch(records)?;
        clock.set(t0 + Duration::hours(i64::from(hour) + 1));
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

    /// The rates as JSON (without the per-run outcomes).
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "runs": self.runs,
            "base_seed": self.base_seed,
            "promoted": self.promoted,
            "promotion_rate": self.promotion_rate(),
            "rolled_back": self.rolled_back,
            "rollback_rate": self.rollback_rate(),
            "rolled_back_within_48h": self.rolled_back_within_48h,
            "rollback_within_48h_rate": self.rollback_within_48h_rate(),
            "fixed_rule_promoted": self.fixed_rule_promoted,
            "fixed_rule_promotion_rate": self.fixed_rule_promotion_rate(),
            "held": self.held,
            "median_hours_to_decision": self.median_hours_to_decision,
        })
    }
}

impl fmt::Display for ScenarioRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<22} runs {:>5}  promoted {:>6.2}%  rolled back {:>6.2}% (within 48 h {:>6.2}%)  \
             seed fixed rule promoted {:>6.2}%  held {:>4}  median h to decision {}",
            self.scenario,
            self.runs,
            self.promotion_rate() * 100.0,
            self.rollback_rate() * 100.0,
            self.rollback_within_48h_rate() * 100.0,
            self.fixed_rule_promotion_rate() * 100.0,
            self.held,
            self.median_hours_to_decision
                .map_or("-".to_string(), |h| format!("{h:.0}")),
        )
    }
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
