//! The end-to-end demo: weeks of simulated production traffic through the real loop, store,
//! triggers, trainer call and experiments, with a manual clock, in seconds of real time.
//!
//! Simulated users (unit ids) send queries to whichever model the router picks; each
//! response gets a quality score and, sometimes, a thumbs up or down drawn from the serving
//! model's *hidden true quality*. The users look like production's: their activity is
//! heavy-tailed (log-normal weights, so a few users send most requests), each has a
//! persistent offset of the quality they get (some ask harder questions) and of their
//! propensity to give a thumbs up, and feedback arrives hours after the response (recorded
//! with `record_feedback` when it arrives, as a real client would). Every simulated hour the
//! traffic is logged with one `log_batch`, the feedback that arrived is recorded, the clock
//! moves one hour, and the loop runs one iteration: triggers fire,
//! datasets are generated, and a built-in demo trainer produces a new model whose hidden true
//! quality is the champion's plus or minus a random step — some better, some worse, and the
//! timeline says which. Challengers are deployed, tested, promoted or rolled back by the real
//! judge, which never sees the hidden truth; the timeline compares its decisions with it.
//!
//! Everything random comes from `seed`: the same seed and config give the same timeline.
//!
//! The demo runs on the store its caller opens ([`run`] hands it the demo's manual clock):
//! `afs demo` opens a SQLite database, and the database and the run directories are left
//! behind for the other `afs` commands. Any [`LoopStore`] will do, for instance the
//! in-memory store in a test.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use afs_abtest::AbTestConfig;
use afs_datagen::GeneratorConfig;
use afs_loop::{
    ContinuousLearningLoop, DeployStep, ExperimentStep, IterationReport, LoopConfig, LoopError,
    LoopStore, Result, RetrainStep,
};
use afs_store::rng::splitmix64 as splitmix;
use afs_store::{
    Clock, Decision, FeedbackValue, ManualClock, NewModelVersion, NewUsage, StatsWindow,
};
use afs_trigger::{FnTrainer, RetrainerConfig, TrainJob, TrainOutput, TriggerConfig};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};

/// Constants mixed into the seed so the traffic, the trainer and the routing draw from
/// independent streams.
const TRAFFIC_STREAM: u64 = 0x0074_7261_6666_6963;
const TRAINER_STREAM: u64 = 0x0074_7261_696e_6572;
const ROUTING_STREAM: u64 = 0x0000_726f_7574_6572;
const USERS_STREAM: u64 = 0x0000_0075_7365_7273;

/// Spread (σ of the log) of the users' activity weights: with σ = 1.5 the most active 10% of
/// users send about 60% of the requests, and the top 1% about 20%.
const ACTIVITY_SIGMA: f64 = 1.5;
/// Standard deviation of a user's persistent offset of the quality they get.
const USER_QUALITY_SD: f64 = 0.05;
/// Standard deviation of a user's persistent log-odds offset of giving a thumbs up.
const USER_THUMBS_SD: f64 = 0.5;
/// Median delay of feedback after the response, in hours (log-normal, σ of the log 1).
const FEEDBACK_DELAY_MEDIAN_HOURS: f64 = 2.0;
const FEEDBACK_DELAY_SIGMA: f64 = 1.0;
/// Longest feedback delay, in hours: later feedback never comes.
const FEEDBACK_DELAY_MAX_HOURS: f64 = 72.0;
/// Most users a demo draws from (each has an activity weight in memory).
const MAX_USERS: u32 = 10_000_000;

/// The model serving when the demo starts.
pub const FIRST_MODEL: &str = "nayru-v1";

/// Settings of a demo run.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// The database the demo's store lives in, named in the summary and in messages (the
    /// caller opens the store; it must not hold data yet).
    pub db_path: PathBuf,
    /// Where run directories (datasets, manifests, models) go.
    pub output_dir: PathBuf,
    /// Seed of everything random: the same seed gives the same timeline (default 42).
    pub seed: u64,
    /// Simulated days (default 28: four weeks).
    pub days: u32,
    /// Mean requests per simulated hour; traffic follows a daily cycle around it (default 200).
    pub requests_per_hour: u32,
    /// Distinct users (sticky routing units) drawn from (default 100,000; many users keep
    /// the arms' traffic shares close to their weights). Their activity is heavy-tailed, so
    /// far fewer of them send requests in a given week.
    pub users: u32,
    /// When the simulation starts (default 2026-01-05 00:00 UTC). A caller that wants the
    /// database to look recent to other commands can start it `days` before now.
    pub start: DateTime<Utc>,
    /// Hidden true quality of the first model (default 0.70).
    pub initial_quality: f64,
    /// Share of requests that get a thumbs up or down, some hours later (default 0.35).
    pub feedback_rate: f64,
    /// Chance that a new model is better than the champion (default 0.5).
    pub better_share: f64,
    /// Smallest and largest change a retrain makes to the true quality, on the logit scale
    /// (default 0.1 and 0.3: about ±0.02 to ±0.06 at a quality of 0.7, less near 0 or 1, so
    /// improvements get harder as the model gets better).
    pub quality_step: (f64, f64),
    /// Chance that the demo trainer crashes, to show a failure being recorded (default 0.1).
    pub trainer_failure_rate: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            db_path: "afs-demo.db".into(),
            output_dir: "afs-demo-output".into(),
            seed: 42,
            days: 28,
            requests_per_hour: 200,
            users: 100_000,
            start: Utc
                .with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
                .single()
                .expect("a valid date"),
            initial_quality: 0.70,
            feedback_rate: 0.35,
            better_share: 0.5,
            quality_step: (0.1, 0.3),
            trainer_failure_rate: 0.1,
        }
    }
}

impl DemoConfig {
    /// Checks every setting; the first problem names its key as `demo.<field>`.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(LoopError::InvalidConfig {
                key: format!("demo.{field}"),
                reason,
            })
        };
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if self.days == 0 || self.days > 3660 {
            return bad("days", format!("{} is not within 1..=3660", self.days));
        }
        if self.requests_per_hour == 0 || self.requests_per_hour > 100_000 {
            return bad(
                "requests_per_hour",
                format!("{} is not within 1..=100000", self.requests_per_hour),
            );
        }
        if self.users == 0 || self.users > MAX_USERS {
            return bad(
                "users",
                format!("{} is not within 1..={MAX_USERS}", self.users),
            );
        }
        if !(self.initial_quality > 0.0 && self.initial_quality < 1.0) {
            return bad(
                "initial_quality",
                format!("{} is not within (0, 1)", self.initial_quality),
            );
        }
        if !unit(self.feedback_rate) || self.feedback_rate == 0.0 {
            return bad(
                "feedback_rate",
                format!("{} is not within (0, 1]", self.feedback_rate),
            );
        }
        if !unit(self.better_share) {
            return bad(
                "better_share",
                format!("{} is not within [0, 1]", self.better_share),
            );
        }
        let (lo, hi) = self.quality_step;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 5.0) {
            return bad(
                "quality_step",
                format!("({lo}, {hi}) must satisfy 0 < min <= max <= 5"),
            );
        }
        if !unit(self.trainer_failure_rate) || self.trainer_failure_rate == 1.0 {
            return bad(
                "trainer_failure_rate",
                format!("{} is not within [0, 1)", self.trainer_failure_rate),
            );
        }
        Ok(())
    }

    /// The loop settings the demo runs with: the defaults, except a retrain after about a
    /// day of new traffic (`min_new_samples` = 24 × `requests_per_hour`), datasets of at most
    /// 2,000 samples from the last 7 days without redaction (the traffic is synthetic), and
    /// challengers starting with 20% of traffic so that a test ends within days.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            check_interval: Duration::from_secs(3600),
            trigger: TriggerConfig {
                min_new_samples: u64::from(self.requests_per_hour) * 24,
                ..TriggerConfig::default()
            },
            generator: GeneratorConfig {
                redact: false,
                max_samples: Some(2000),
                ..GeneratorConfig::default()
            },
            abtest: AbTestConfig {
                initial_challenger_traffic: 0.2,
                ..AbTestConfig::default()
            },
            retrainer: RetrainerConfig {
                output_dir: self.output_dir.clone(),
                ..RetrainerConfig::default()
            },
            training_window: Some(Duration::from_secs(7 * 24 * 3600)),
            initial_champion: Some(NewModelVersion::new(
                FIRST_MODEL,
                self.output_dir
                    .join("models")
                    .join(FIRST_MODEL)
                    .join("model.json")
                    .to_string_lossy(),
            )),
            ..LoopConfig::default()
        }
    }
}

/// What a timeline event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DemoEventKind {
    /// The simulation starts.
    Start,
    /// A simulated day ended: its traffic per model.
    Day,
    /// A trigger fired and the demo trainer produced a model.
    Retrain,
    /// A retrain failed or was refused; the loop recorded it and goes on.
    RetrainFailed,
    /// A new model was deployed (as challenger, or as champion).
    Deploy,
    /// The judge promoted a challenger.
    Promote,
    /// The judge rolled a challenger back.
    Rollback,
    /// The judge held an experiment (the data looked untrustworthy).
    Hold,
    /// An iteration failed; the loop goes on.
    Error,
    /// The simulation ended.
    Finish,
}

impl DemoEventKind {
    /// Lowercase name: `start`, `day`, `retrain`, `retrain_failed`, `deploy`, `promote`,
    /// `rollback`, `hold`, `error`, `finish`.
    pub fn as_str(self) -> &'static str {
        match self {
            DemoEventKind::Start => "start",
            DemoEventKind::Day => "day",
            DemoEventKind::Retrain => "retrain",
            DemoEventKind::RetrainFailed => "retrain_failed",
            DemoEventKind::Deploy => "deploy",
            DemoEventKind::Promote => "promote",
            DemoEventKind::Rollback => "rollback",
            DemoEventKind::Hold => "hold",
            DemoEventKind::Error => "error",
            DemoEventKind::Finish => "finish",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoEvent {
    /// Simulated time.
    pub at: DateTime<Utc>,
    /// Simulated day, from 1.
    pub day: u32,
    /// Hour of that day, 0–23.
    pub hour: u32,
    /// What it is about.
    pub kind: DemoEventKind,
    /// What happened, in plain words.
    pub message: String,
}

impl fmt::Display for DemoEvent {
    /// `day  3 14:00  promote   promoted nayru-v2 ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "day {:>2} {:02}:00  {:<14} {}",
            self.day,
            self.hour,
            self.kind.as_str(),
            self.message
        )
    }
}

impl DemoEvent {
    /// The event as JSON (`afs demo --json`, one object per line).
    pub fn to_json(&self) -> Value {
        json!({
            "at": time(self.at),
            "day": self.day,
            "hour": self.hour,
            "kind": self.kind.as_str(),
            "message": self.message,
        })
    }
}

/// A stretch of time during which one model was champion.
#[derive(Debug, Clone, PartialEq)]
pub struct ChampionSpan {
    /// The champion.
    pub name: String,
    /// Its hidden true quality.
    pub true_quality: f64,
    /// When it became champion.
    pub since: DateTime<Utc>,
    /// When it was replaced (`None`: still champion at the end).
    pub until: Option<DateTime<Utc>>,
}

/// One model of the demo and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoModel {
    /// Its name.
    pub name: String,
    /// Its hidden true quality.
    pub true_quality: f64,
    /// The champion's true quality when it was trained (`None` for the first model).
    pub champion_quality: Option<f64>,
    /// `champion` (still), `promoted` (then later replaced), `rolled_back`, `testing`
    /// (still a challenger at the end), `not_deployed`.
    pub outcome: String,
}

/// What the demo did, for the final table.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    /// The seed.
    pub seed: u64,
    /// Simulated days.
    pub days: u32,
    /// When the simulation started.
    pub start: DateTime<Utc>,
    /// The database left behind.
    pub db_path: PathBuf,
    /// The run directories left behind.
    pub output_dir: PathBuf,
    /// Requests simulated.
    pub requests: u64,
    /// Iterations of the loop.
    pub iterations: u64,
    /// Completed retrains.
    pub retrains: u64,
    /// Failed or refused retrains.
    pub failed_retrains: u64,
    /// Promotions.
    pub promotions: u64,
    /// Rollbacks.
    pub rollbacks: u64,
    /// Promotions of a truly better model plus rollbacks of a truly worse one.
    pub correct_decisions: u64,
    /// Promotions of a truly worse model plus rollbacks of a truly better one.
    pub wrong_decisions: u64,
    /// Champions over time, oldest first.
    pub champions: Vec<ChampionSpan>,
    /// Every model, oldest first.
    pub models: Vec<DemoModel>,
}

impl DemoSummary {
    /// The final table, as lines of text.
    pub fn lines(&self) -> Vec<String> {
        let start = self.start;
        let mut out = vec![
            format!(
                "{} simulated days, {} requests, {} loop iterations (seed {})",
                self.days, self.requests, self.iterations, self.seed
            ),
            format!(
                "retrains: {} completed, {} failed; promotions: {}; rollbacks: {}",
                self.retrains, self.failed_retrains, self.promotions, self.rollbacks
            ),
            format!(
                "decisions checked against the hidden truth: {} right, {} wrong",
                self.correct_decisions, self.wrong_decisions
            ),
            String::new(),
            format!(
                "{:<12} {:>12}  {:<12} {:<12}",
                "champion", "true quality", "from", "until"
            ),
        ];
        for span in &self.champions {
            out.push(format!(
                "{:<12} {:>12.3}  {:<12} {:<12}",
                span.name,
                span.true_quality,
                stamp(start, span.since),
                span.until.map_or("end".into(), |t| stamp(start, t))
            ));
        }
        out.push(String::new());
        out.push(format!(
            "{:<12} {:>12}  {:>16}  {}",
            "model", "true quality", "champion then", "outcome"
        ));
        for m in &self.models {
            out.push(format!(
                "{:<12} {:>12.3}  {:>16}  {}",
                m.name,
                m.true_quality,
                m.champion_quality.map_or("-".into(), |q| format!("{q:.3}")),
                m.outcome
            ));
        }
        out.push(String::new());
        out.push(format!("database: {}", self.db_path.display()));
        out.push(format!("run directories: {}", self.output_dir.display()));
        out
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "days": self.days,
            "start": time(self.start),
            "db_path": self.db_path.to_string_lossy(),
            "output_dir": self.output_dir.to_string_lossy(),
            "requests": self.requests,
            "iterations": self.iterations,
            "retrains": self.retrains,
            "failed_retrains": self.failed_retrains,
            "promotions": self.promotions,
            "rollbacks": self.rollbacks,
            "correct_decisions": self.correct_decisions,
            "wrong_decisions": self.wrong_decisions,
            "champions": self.champions.iter().map(|c| json!({
                "name": c.name,
                "true_quality": c.true_quality,
                "since": time(c.since),
                "until": c.until.map(time),
            })).collect::<Vec<_>>(),
            "models": self.models.iter().map(|m| json!({
                "name": m.name,
                "true_quality": m.true_quality,
                "champion_quality": m.champion_quality,
                "outcome": m.outcome,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A time as RFC 3339 text, to the second (as the loop's reports write times).
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `day 3 14:00` for a time of the simulation.
fn stamp(start: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let (day, hour) = day_hour(start, at);
    format!("day {day} {hour:02}:00")
}

fn day_hour(start: DateTime<Utc>, at: DateTime<Utc>) -> (u32, u32) {
    let hours = (at - start).num_hours().max(0) as u32;
    (hours / 24 + 1, hours % 24)
}

/// A small deterministic generator (SplitMix64), so a seed gives the same timeline on every
/// platform and with every version of the `rand` crate.
struct DemoRng(afs_store::rng::SplitMix64);

impl DemoRng {
    fn new(seed: u64) -> Self {
        DemoRng(afs_store::rng::SplitMix64::new(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform on [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang, boosted for shapes below 1.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.unit();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A quality score with mean `mean`: Beta(mean·k, (1 − mean)·k) with k = 12, a spread of
    /// about 0.13 at a mean of 0.7, always within [0, 1] without clipping the mean away.
    fn quality(&mut self, mean: f64) -> f64 {
        const CONCENTRATION: f64 = 12.0;
        let x = self.gamma(mean * CONCENTRATION);
        let y = self.gamma((1.0 - mean) * CONCENTRATION);
        if x + y > 0.0 {
            (x / (x + y)).clamp(0.0, 1.0)
        } else {
            mean
        }
    }
}

/// What the demo trainer shares with the simulation: the hidden true quality of every model
/// and the trainer's own random stream.
struct World {
    truth: BTreeMap<String, f64>,
    trainer_rng: DemoRng,
}

/// The simulated users: who sends the next request, and each user's persistent
/// differences, all drawn from the seed.
struct Users {
    /// Running sums of the users' activity weights (log-normal, σ = [`ACTIVITY_SIGMA`]): a
    /// request comes from user `i` with probability proportional to its weight.
    cumulative: Vec<f64>,
    /// Seed of the per-user offsets, which are drawn from the user's number when needed.
    offsets_seed: u64,
}

impl Users {
    fn new(n: u32, seed: u64) -> Self {
        let mut rng = DemoRng::new(seed);
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|_| {
                total += (ACTIVITY_SIGMA * rng.normal()).exp();
                total
            })
            .collect();
        Users {
            cumulative,
            offsets_seed: splitmix(seed ^ USERS_STREAM),
        }
    }

    /// A user, drawn in proportion to activity.
    fn draw(&self, rng: &mut DemoRng) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.unit() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.cumulative.len().saturating_sub(1)) as u32
    }

    /// User `user`'s persistent offsets: of the quality of the answers they get, and of the
    /// log-odds of their thumbs up.
    fn offsets(&self, user: u32) -> (f64, f64) {
        let mut rng = DemoRng::new(self.offsets_seed ^ splitmix(u64::from(user)));
        (
            USER_QUALITY_SD * rng.normal(),
            USER_THUMBS_SD * rng.normal(),
        )
    }
}

/// Feedback on a logged record that the user has not given yet.
struct PendingFeedback {
    id: String,
    value: FeedbackValue,
}

const TOPICS: [&str; 8] = [
    "the 65816 addressing modes",
    "SNES DMA transfers",
    "mode 7 rotation",
    "the SPC700 sound chip",
    "bank switching",
    "HDMA gradients",
    "sprite priorities",
    "the WRAM mirror",
];

/// Per model traffic counters of one day.
#[derive(Default, Clone, Copy)]
struct DayCount {
    requests: u64,
    sum_quality: f64,
    thumbs_up: u64,
    feedback: u64,
}

/// Runs the demo, calling `on_event` with each timeline event as it happens.
///
/// Checks the settings, then calls `open` with the demo's clock (a manual clock at
/// `config.start`, moved by the demo) for the store to run on, which must read its time
/// from that clock and hold no records
/// or models yet (`afs demo` opens the SQLite database at `config.db_path`). Returns the
/// summary for the final table. Runs in a few seconds in release builds for the default
/// four weeks.
///
/// ```no_run
/// use afs_demo::DemoConfig;
/// use afs_store_sqlite::{SqliteConfig, SqliteStore};
///
/// let config = DemoConfig::default();
/// let summary = afs_demo::run(
///     &config,
///     |clock| SqliteStore::open(SqliteConfig::new(&config.db_path), clock),
///     &mut |event| println!("{event}"),
/// )?;
/// println!("{}", summary.lines().join("\n"));
/// # Ok::<(), afs_loop::LoopError>(())
/// ```
pub fn run<S, E>(
    config: &DemoConfig,
    open: impl FnOnce(Arc<dyn Clock>) -> std::result::Result<S, E>,
    on_event: &mut dyn FnMut(&DemoEvent),
) -> Result<DemoSummary>
where
    S: LoopStore + 'static,
    LoopError: From<E>,
{
    config.validate()?;
    let clock = Arc::new(ManualClock::new(config.start));
    let store = Arc::new(open(clock.clone())?);
    if store.stats(&StatsWindow::default())?.total > 0 || !store.model_versions()?.is_empty() {
        return Err(LoopError::Conflict(format!(
            "the demo needs a new database, and {} already holds data",
            config.db_path.display()
        )));
    }
    let loop_config = config.loop_config();
    write_model_file(
        Path::new(
            &loop_config
                .initial_champion
                .as_ref()
                .expect("the demo sets a first champion")
                .model_path,
        ),
        config.initial_quality,
    )?;

    let world = Arc::new(Mutex::new(World {
        truth: BTreeMap::from([(FIRST_MODEL.to_string(), config.initial_quality)]),
        trainer_rng: DemoRng::new(splitmix(config.seed ^ TRAINER_STREAM)),
    }));
    let trainer = demo_trainer(world.clone(), store.clone(), config.clone());
    let learning = ContinuousLearningLoop::new(store.clone(), loop_config, Box::new(trainer))?
        .with_routing_seed(splitmix(config.seed ^ ROUTING_STREAM));

    let mut sim = Simulation {
        config,
        start: config.start,
        clock: &clock,
        learning: &learning,
        world: &world,
        rng: DemoRng::new(splitmix(config.seed ^ TRAFFIC_STREAM)),
        users: Users::new(config.users, splitmix(config.seed ^ USERS_STREAM)),
        pending: BTreeMap::new(),
        feedback_drawn: 0,
        truth: BTreeMap::new(),
        parents: BTreeMap::new(),
        outcomes: BTreeMap::from([(FIRST_MODEL.to_string(), "champion".to_string())]),
        order: vec![FIRST_MODEL.to_string()],
        day_counts: BTreeMap::new(),
        champions: vec![ChampionSpan {
            name: FIRST_MODEL.into(),
            true_quality: config.initial_quality,
            since: config.start,
            until: None,
        }],
        summary_counts: Counts::default(),
        held: Vec::new(),
        request_counter: 0,
        on_event,
    };
    sim.run()
}

#[derive(Default)]
struct Counts {
    requests: u64,
    iterations: u64,
    retrains: u64,
    failed_retrains: u64,
    promotions: u64,
    rollbacks: u64,
    correct: u64,
    wrong: u64,
}

struct Simulation<'a, S: LoopStore> {
    config: &'a DemoConfig,
    start: DateTime<Utc>,
    clock: &'a Arc<ManualClock>,
    learning: &'a ContinuousLearningLoop<S>,
    world: &'a Arc<Mutex<World>>,
    rng: DemoRng,
    users: Users,
    /// Feedback not given yet, by when it arrives (and the order it was drawn in).
    pending: BTreeMap<(DateTime<Utc>, u64), PendingFeedback>,
    /// Feedback events drawn so far.
    feedback_drawn: u64,
    /// A copy of the world's hidden truth, refreshed every hour.
    truth: BTreeMap<String, f64>,
    parents: BTreeMap<String, f64>,
    outcomes: BTreeMap<String, String>,
    order: Vec<String>,
    day_counts: BTreeMap<String, DayCount>,
    champions: Vec<ChampionSpan>,
    summary_counts: Counts,
    /// Experiments already reported as held (one hold event per experiment).
    held: Vec<i64>,
    request_counter: u64,
    on_event: &'a mut dyn FnMut(&DemoEvent),
}

impl<S: LoopStore> Simulation<'_, S> {
    fn emit(&mut self, kind: DemoEventKind, message: String) {
        let at = self.clock.now();
        let (day, hour) = day_hour(self.start, at);
        (self.on_event)(&DemoEvent {
            at,
            day,
            hour,
            kind,
            message,
        });
    }

    fn quality_of(&self, model: &str) -> f64 {
        self.truth
            .get(model)
            .copied()
            .unwrap_or(self.config.initial_quality)
    }

    fn run(&mut self) -> Result<DemoSummary> {
        let c = self.config;
        let settings = c.loop_config();
        self.emit(
            DemoEventKind::Start,
            format!(
                "{FIRST_MODEL} serves all traffic (hidden true quality {:.2}); about {} requests an hour \
                 from {} users (a few send most of them; feedback comes hours later); the loop \
                 checks every hour, retrains after {} new scored requests ({} h cooldown), and \
                 tests each new model on {:.0}% of traffic",
                c.initial_quality,
                c.requests_per_hour,
                c.users,
                settings.trigger.min_new_samples,
                settings.trigger.cooldown_hours,
                settings.abtest.initial_challenger_traffic * 100.0
            ),
        );
        let total_hours = c.days * 24;
        for hour in 1..=total_hours {
            let hour_end = self.start + chrono::Duration::hours(i64::from(hour));
            // Feedback on earlier hours' records, each recorded when it arrives.
            self.deliver_feedback(hour_end)?;
            self.clock.set(hour_end);
            self.truth = self
                .world
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .truth
                .clone();
            self.traffic(hour_end, hour - 1)?;
            // Feedback that came within the hour on this hour's records.
            self.deliver_feedback(hour_end)?;
            if hour % 24 == 0 {
                self.day_summary(hour / 24);
            }
            let result = self.learning.run_iteration();
            self.truth = self
                .world
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .truth
                .clone();
            self.summary_counts.iterations += 1;
            match result {
                Ok(report) => self.report_events(&report)?,
                Err(e) => self.emit(
                    DemoEventKind::Error,
                    format!("the iteration failed: {e}; the loop recorded it and goes on"),
                ),
            }
        }
        self.finish()
    }

    /// Simulates the hour that ends at `hour_end` and logs it in one batch. The feedback its
    /// users will give is queued for when it arrives.
    fn traffic(&mut self, hour_end: DateTime<Utc>, hour_index: u32) -> Result<()> {
        let c = self.config;
        // A daily cycle: quiet at 04:00, busiest at 16:00, averaging requests_per_hour.
        let phase = f64::from(hour_index % 24) - 4.0;
        let shape = (1.0 - (std::f64::consts::TAU * phase / 24.0).cos()) / 2.0;
        let n = (f64::from(c.requests_per_hour) * (0.4 + 1.2 * shape))
            .round()
            .max(1.0) as u32;
        let hour_start = hour_end - chrono::Duration::hours(1);
        let mut records = Vec::with_capacity(n as usize);
        let mut feedbacks = Vec::new();
        for i in 0..n {
            let user = self.users.draw(&mut self.rng);
            let (quality_offset, thumbs_offset) = self.users.offsets(user);
            let unit = format!("user-{user:06}");
            let route = self.learning.route(Some(&unit))?;
            // What this user gets from this model: some users ask harder questions.
            let true_quality = (self.quality_of(&route.model) + quality_offset).clamp(0.01, 0.99);
            let quality = self.rng.quality(true_quality);
            let timestamp = hour_start
                + chrono::Duration::milliseconds(i64::from(i) * 3_600_000 / i64::from(n));
            if self.rng.unit() < c.feedback_rate {
                // Some users like everything more than others.
                let logit = (true_quality / (1.0 - true_quality)).ln() + thumbs_offset;
                let value = if self.rng.unit() < 1.0 / (1.0 + (-logit).exp()) {
                    FeedbackValue::Positive
                } else {
                    FeedbackValue::Negative
                };
                let delay_hours = (FEEDBACK_DELAY_MEDIAN_HOURS.ln()
                    + FEEDBACK_DELAY_SIGMA * self.rng.normal())
                .exp()
                .min(FEEDBACK_DELAY_MAX_HOURS);
                let arrives =
                    timestamp + chrono::Duration::milliseconds((delay_hours * 3.6e6) as i64);
                feedbacks.push((records.len(), value, arrives));
                let count = self.day_counts.entry(route.model.clone()).or_default();
                count.feedback += 1;
                if value == FeedbackValue::Positive {
                    count.thumbs_up += 1;
                }
            }
            let latency = 600.0 + 400.0 * self.rng.unit();
            let tokens = 50 + i64::from(self.rng.below(350));
            self.request_counter += 1;
            let topic = TOPICS[self.rng.below(TOPICS.len() as u32) as usize];
            let count = self.day_counts.entry(route.model.clone()).or_default();
            count.requests += 1;
            count.sum_quality += quality;
            records.push(NewUsage {
                query: format!("Question {}: how does {topic} work?", self.request_counter),
                response: format!(
                    "{} explains {topic} (answer {})",
                    route.model, self.request_counter
                ),
                latency_ms: Some(latency),
                token_count: Some(tokens),
                quality_score: Some(quality),
                unit_id: Some(unit),
                timestamp: Some(timestamp),
                ..NewUsage::new("", "", route.model)
            });
        }
        self.summary_counts.requests += u64::from(n);
        let ids = self.learning.log_batch(records)?;
        for (index, value, arrives) in feedbacks {
            if let Some(id) = ids.get(index) {
                self.feedback_drawn += 1;
                self.pending.insert(
                    (arrives, self.feedback_drawn),
                    PendingFeedback {
                        id: id.clone(),
                        value,
                    },
                );
            }
        }
        Ok(())
    }

    /// Records the feedback that has arrived by `until`, oldest first, each with the clock at
    /// its arrival (or at the clock's time, if that is later).
    fn deliver_feedback(&mut self, until: DateTime<Utc>) -> Result<()> {
        while let Some(entry) = self.pending.first_entry() {
            let arrives = entry.key().0;
            if arrives > until {
                break;
            }
            let feedback = entry.remove();
            if arrives > self.clock.now() {
                self.clock.set(arrives);
            }
            self.learning
                .record_feedback(&feedback.id, feedback.value, None)?;
        }
        Ok(())
    }

    fn verdict(&self, challenger: &str, champion: &str, promoted: bool) -> (String, bool) {
        let qc = self.quality_of(challenger);
        let qh = self.quality_of(champion);
        let better = qc > qh;
        let text = format!(
            "hidden truth: {challenger} {qc:.3} vs {champion} {qh:.3}, so {challenger} is {} — {}",
            if better { "better" } else { "worse" },
            if better == promoted {
                "the right call"
            } else {
                "a wrong call"
            }
        );
        (text, better == promoted)
    }

    fn report_events(&mut self, report: &IterationReport) -> Result<()> {
        if let Some(e) = &report.experiment {
            self.report_experiment(e);
        }
        self.report_retrain(report);
        self.report_deploy(report.deploy.as_ref());
        Ok(())
    }

    /// A promotion, a rollback or a first hold of the running experiment.
    fn report_experiment(&mut self, e: &ExperimentStep) {
        match e.applied {
            Some(Decision::Promote) => {
                self.summary_counts.promotions += 1;
                let (truth, right) = self.verdict(&e.challenger, &e.champion, true);
                self.count_decision(right);
                let now = self.clock.now();
                if let Some(last) = self.champions.last_mut() {
                    last.until = Some(now);
                }
                let q = self.quality_of(&e.challenger);
                self.champions.push(ChampionSpan {
                    name: e.challenger.clone(),
                    true_quality: q,
                    since: now,
                    until: None,
                });
                self.outcomes
                    .insert(e.champion.clone(), "promoted, later replaced".into());
                self.outcomes
                    .insert(e.challenger.clone(), "champion".into());
                self.emit(
                    DemoEventKind::Promote,
                    format!(
                        "promoted {} over {} after {:.0} h: {}; {truth}",
                        e.challenger, e.champion, e.elapsed_hours, e.reason
                    ),
                );
            }
            Some(Decision::Rollback) => {
                self.summary_counts.rollbacks += 1;
                let (truth, right) = self.verdict(&e.challenger, &e.champion, false);
                self.count_decision(right);
                self.outcomes
                    .insert(e.challenger.clone(), "rolled_back".into());
                self.emit(
                    DemoEventKind::Rollback,
                    format!(
                        "rolled back {} after {:.0} h, {} stays champion: {}; {truth}",
                        e.challenger, e.elapsed_hours, e.champion, e.reason
                    ),
                );
            }
            _ if e.decision == Decision::Hold && !self.held.contains(&e.experiment_id) => {
                self.held.push(e.experiment_id);
                self.emit(
                    DemoEventKind::Hold,
                    format!(
                        "experiment {} ({} vs {}) held: {}",
                        e.experiment_id, e.champion, e.challenger, e.reason
                    ),
                );
            }
            _ => {}
        }
    }

    /// A retrain: the demo trainer's model gets its hidden truth under the name the loop
    /// gives it.
    fn report_retrain(&mut self, report: &IterationReport) {
        match &report.retrain {
            RetrainStep::Completed {
                trigger_type,
                trigger_reason,
                n_samples,
                metrics,
                ..
            } => {
                self.summary_counts.retrains += 1;
                let number = |key: &str| metrics.get(key).and_then(Value::as_f64).unwrap_or(0.0);
                let q = number("hidden_true_quality");
                let champion_quality = number("champion_true_quality");
                let name = match &report.deploy {
                    Some(
                        DeployStep::Challenger { name, .. } | DeployStep::Champion { name, .. },
                    ) => name.clone(),
                    Some(DeployStep::NotDeployed { name, .. }) => {
                        name.clone().unwrap_or_else(|| "an undeployed model".into())
                    }
                    None => "a model".into(),
                };
                // The trainer cannot know the name the loop gives its model; file the model's
                // truth under that name now, before any traffic reaches it.
                self.world
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .truth
                    .insert(name.clone(), q);
                self.truth.insert(name.clone(), q);
                self.parents.insert(name.clone(), champion_quality);
                self.order.push(name.clone());
                self.outcomes.insert(name.clone(), "not_deployed".into());
                let champion = metrics
                    .get("champion")
                    .and_then(Value::as_str)
                    .unwrap_or("-");
                let comparison = if q > champion_quality {
                    "better than"
                } else {
                    "worse than"
                };
                self.emit(
                    DemoEventKind::Retrain,
                    format!(
                        "{trigger_type} trigger: {trigger_reason}; trained on {n_samples} samples; \
                         demo trainer made {name} (hidden true quality {q:.3}, {comparison} \
                         champion {champion} at {champion_quality:.3})"
                    ),
                );
            }
            RetrainStep::Failed { error, .. } => {
                self.summary_counts.failed_retrains += 1;
                self.emit(
                    DemoEventKind::RetrainFailed,
                    format!("retrain failed: {error}; the run is recorded as failed and the loop carries on"),
                );
            }
            RetrainStep::Refused { reason, .. } => {
                self.summary_counts.failed_retrains += 1;
                self.emit(
                    DemoEventKind::RetrainFailed,
                    format!("retrain refused: {reason}"),
                );
            }
            _ => {}
        }
    }

    /// Where the new model went.
    fn report_deploy(&mut self, deploy: Option<&DeployStep>) {
        match deploy {
            Some(DeployStep::Challenger { name, weight, .. }) => {
                self.outcomes.insert(name.clone(), "testing".into());
                self.emit(
                    DemoEventKind::Deploy,
                    format!(
                        "{name} deployed as challenger with {:.0}% of traffic; the judge does not know its true quality",
                        weight * 100.0
                    ),
                );
            }
            Some(DeployStep::Champion { name, reason, .. }) => {
                self.outcomes.insert(name.clone(), "champion".into());
                self.emit(
                    DemoEventKind::Deploy,
                    format!("{name} made champion: {reason}"),
                );
            }
            Some(DeployStep::NotDeployed { reason, .. }) => {
                self.emit(DemoEventKind::Deploy, format!("not deployed: {reason}"));
            }
            None => {}
        }
    }

    fn count_decision(&mut self, right: bool) {
        if right {
            self.summary_counts.correct += 1;
        } else {
            self.summary_counts.wrong += 1;
        }
    }

    fn day_summary(&mut self, day: u32) {
        let counts = std::mem::take(&mut self.day_counts);
        let total: u64 = counts.values().map(|c| c.requests).sum();
        let mut counts: Vec<(String, DayCount)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
        let parts: Vec<String> = counts
            .iter()
            .map(|(model, c)| {
                format!(
                    "{model} {} requests, observed quality {:.3} (true {:.3}), {:.0}% thumbs up",
                    c.requests,
                    c.sum_quality / c.requests.max(1) as f64,
                    self.quality_of(model),
                    100.0 * c.thumbs_up as f64 / c.feedback.max(1) as f64
                )
            })
            .collect();
        self.emit(
            DemoEventKind::Day,
            format!("day {day} done: {total} requests; {}", parts.join("; ")),
        );
    }

    fn finish(&mut self) -> Result<DemoSummary> {
        let c = self.config;
        let counts = &self.summary_counts;
        let champion = self.champions.last().cloned().expect("a first champion");
        let testing: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(_, o)| o.as_str() == "testing")
            .map(|(n, _)| n.clone())
            .collect();
        let mut message = format!(
            "after {} days: {} retrains ({} failed), {} promotions, {} rollbacks ({} right, {} wrong \
             by the hidden truth); champion {} with true quality {:.3} (the first model had {:.3})",
            c.days,
            counts.retrains,
            counts.failed_retrains,
            counts.promotions,
            counts.rollbacks,
            counts.correct,
            counts.wrong,
            champion.name,
            champion.true_quality,
            c.initial_quality
        );
        if !testing.is_empty() {
            message.push_str(&format!("; still under test: {}", testing.join(", ")));
        }
        self.emit(DemoEventKind::Finish, message);
        let models = self
            .order
            .iter()
            .map(|name| DemoModel {
                name: name.clone(),
                true_quality: self.quality_of(name),
                champion_quality: self.parents.get(name).copied(),
                outcome: self.outcomes.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        let counts = &self.summary_counts;
        Ok(DemoSummary {
            seed: c.seed,
            days: c.days,
            start: c.start,
            db_path: c.db_path.clone(),
            output_dir: c.output_dir.clone(),
            requests: counts.requests,
            iterations: counts.iterations,
            retrains: counts.retrains,
            failed_retrains: counts.failed_retrains,
            promotions: counts.promotions,
            rollbacks: counts.rollbacks,
            correct_decisions: counts.correct,
            wrong_decisions: counts.wrong,
            champions: self.champions.clone(),
            models,
        })
    }
}

fn write_model_file(path: &Path, true_quality: f64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LoopError::Io {
            context: format!("create {}", dir.display()),
            source: e,
        })?;
    }
    let text = json!({ "demo_model": true, "hidden_true_quality": true_quality }).to_string();
    // A new file in the run's output directory: never replaces one already there.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .map_err(|e| LoopError::Io {
            context: format!("write {}", path.display()),
            source: e,
        })
}

/// The built-in demo trainer: ignores the data's content (it only counts it) and makes a
/// model whose hidden true quality is the current champion's plus or minus a random step.
fn demo_trainer<S: LoopStore + 'static>(
    world: Arc<Mutex<World>>,
    store: Arc<S>,
    config: DemoConfig,
) -> FnTrainer<impl Fn(&TrainJob) -> std::result::Result<TrainOutput, String> + Send + Sync> {
    FnTrainer(move |job: &TrainJob| {
        // The champion now: a promotion earlier in the same iteration counts.
        let champion = store
            .champion()
            .map_err(|e| e.to_string())?
            .map(|c| c.name)
            .unwrap_or_default();
        let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
        let champion_quality = world
            .truth
            .get(&champion)
            .copied()
            .unwrap_or(config.initial_quality);
        let rng = &mut world.trainer_rng;
        if rng.unit() < config.trainer_failure_rate {
            return Err("the demo trainer crashed (simulated: CUDA out of memory)".into());
        }
        let (lo, hi) = config.quality_step;
        let step = lo + (hi - lo) * rng.unit();
        let sign = if rng.unit() < config.better_share {
            1.0
        } else {
            -1.0
        };
        let logit = (champion_quality / (1.0 - champion_quality)).ln() + sign * step;
        let q = (1.0 / (1.0 + (-logit).exp())).clamp(0.001, 0.999);
        let path = job.output_dir.join("model.json");
        write_model_file(&path, q).map_err(|e| e.to_string())?;
        let mut metrics = Map::new();
        metrics.insert("hidden_true_quality".into(), json!(q));
        metrics.insert("champion".into(), json!(champion));
        metrics.insert("champion_true_quality".into(), json!(champion_quality));
        metrics.insert("n_samples".into(), json!(job.n_samples));
        Ok(TrainOutput {
            model_path: path.to_string_lossy().into_owned(),
            metrics,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_uniform_enough_and_repeats() {
        let mut a = DemoRng::new(7);
        let mut b = DemoRng::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| a.unit()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.unit()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let normals: Vec<f64> = (0..10_000).map(|_| a.normal()).collect();
        let m = normals.iter().sum::<f64>() / 10_000.0;
        let v = normals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 10_000.0;
        assert!(m.abs() < 0.05 && (v - 1.0).abs() < 0.1, "{m} {v}");
        for mean in [0.05, 0.3, 0.7, 0.95] {
            let qs: Vec<f64> = (0..20_000).map(|_| a.quality(mean)).collect();
            let m = qs.iter().sum::<f64>() / qs.len() as f64;
            assert!((m - mean).abs() < 0.01, "mean {m} for {mean}");
            assert!(qs.iter().all(|q| (0.0..=1.0).contains(q)));
        }
        assert!((0..1000).all(|_| a.below(10) < 10));
    }

    #[test]
    fn settings_are_validated() {
        let ok = DemoConfig::default();
        assert!(ok.validate().is_ok());
        assert!(ok.loop_config().validate().is_ok());
        let bad = |c: DemoConfig, key: &str| match c.validate() {
            Err(LoopError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected {key}, got {other:?}"),
        };
        bad(
            DemoConfig {
                days: 0,
                ..ok.clone()
            },
            "demo.days",
        );
        bad(
            DemoConfig {
                requests_per_hour: 0,
                ..ok.clone()
            },
            "demo.requests_per_hour",
        );
        bad(
            DemoConfig {
                initial_quality: 1.0,
                ..ok.clone()
            },
            "demo.initial_quality",
        );
        bad(
            DemoConfig {
                quality_step: (0.1, 0.05),
                ..ok.clone()
            },
            "demo.quality_step",
        );
        bad(
            DemoConfig {
                trainer_failure_rate: 1.0,
                ..ok
            },
            "demo.trainer_failure_rate",
        );
    }
}
