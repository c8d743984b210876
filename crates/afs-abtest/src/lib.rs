//! Champion/challenger experiments: model versions, sticky routing, sequential statistics
//! that survive hourly peeking, and promotion or rollback on evidence.
//!
//! # Pieces
//!
//! * [`AbTest`] runs the operations (set champion, deploy a challenger, set its weight,
//!   promote, roll back) and the periodic [`AbTest::check`], over any store implementing
//!   both [`afs_store::UsageStore`] and [`afs_store::ExperimentStore`] (the SQLite store
//!   keeps the usage log, versions, experiments, decisions and their statistics in one file).
//! * A [`Router`] picks the arm of each request: [`HashRouter`] hashes
//!   BLAKE3(seed ‖ unit) to [0, 1) and gives the challenger [0, w) — sticky, and monotone
//!   in w — or draws at random when a request has no unit id.
//! * A [`Judge`] decides at each look; [`SequentialJudge`] is the default.
//! * [`sim`] drives the real store and judge with synthetic traffic and a manual clock, and
//!   measures false-promotion rate, power and harm detection.
//!
//! # The statistics of the default judge
//!
//! Per arm the judge reads the store's per-model sufficient statistics (n, Σx, Σx², feedback
//! counts) for each period of the experiment (a period is a stretch with one weight).
//! Metrics: mean quality (with its variance), positive-feedback rate among feedback events,
//! negative-feedback rate, mean latency. The aggregates count *requests*, not distinct users,
//! so requests are the units of analysis and of the minimum-sample rule; when one user sends
//! many correlated requests the variance is understated (the notes' per-unit ratio estimator
//! would need per-unit sums the rollups do not keep).
//!
//! **Always-valid tests.** Each metric gets a mixture sequential probability ratio test
//! (mSPRT) over the difference d (challenger − champion, sign-flipped for lower-is-better
//! metrics so that positive is always good), with variance V = s²_A/n_A + s²_B/n_B. The
//! primary metric uses the normal mixture N(0, τ²):
//! `Λ = sqrt(V/(V+τ²)) · exp(τ²d²/(2V(V+τ²)))`, its p-value `min(1, 1/Λ)` credited to the
//! side the estimate is on. Guardrails ask one-sided questions about their margin M
//! (no worse than M? worse than M?), so each direction gets a half-normal mixture on its
//! side of θ₀ = −M: `Λ⁺ = 2Λ·Φ((d−θ₀)τ/sqrt(V(V+τ²)))`. The p-values are kept as running
//! minima and the confidence sequence `d ± sqrt(V(V+τ²)/τ² · (2 ln(1/α) + ln((V+τ²)/V)))`
//! as a running intersection, stored in the experiment's [`afs_store::SequentialState`],
//! so the error rates stay below α however often the experiment is checked. With several
//! periods (weight changes) d is the average of per-period differences weighted by their
//! effective sample sizes `n_A·n_B/(n_A+n_B)`.
//!
//! **Choice of τ.** The mixture is most powerful for effects near τ, so τ is set near the
//! smallest effect worth acting on: for the primary metric `τ = expected_effect × baseline`
//! (default 5% of the champion's value when the test starts: 0.035 for a quality of 0.70 or
//! a thumbs-up rate of 70%), for a guardrail `τ = margin × baseline`. The baseline is frozen
//! at the first look so the test does not drift with the data.
//!
//! **Decision.** Promote only when, after `min_duration_hours` (48) with at least
//! `min_samples_per_version` (100) requests and `min_feedback_per_version` (25) feedback
//! events per arm: the primary metric is significantly better (always-valid p < α = 0.05)
//! with a point-estimate lift of at least `min_lift` (1%), and every guardrail is shown to
//! be no worse than its margin (default 10% for latency and negative-feedback rate). Roll
//! back when the primary metric is significantly worse or a guardrail significantly worse
//! than its margin (Holm-corrected; no minimum duration). Hold when the arms' request counts
//! do not match the weights (chi-square against per-period expected counts, p < 0.001 and a
//! deviation above 0.1 pp). Otherwise keep testing. An arm without data never passes.
//!
//! The seed's weighted-improvement score and its fixed rule ("≥ 5% better or p < 0.05") are
//! reported beside each decision ([`SeedComparison`]) to show what the old rule would do.

mod bandit;
mod comparison;
mod config;
mod error;
mod judge;
mod manager;
mod maths;
mod metric;
mod router;
pub mod sim;
mod units;

pub use comparison::{
    Analysis, Comparison, MetricResult, MetricRole, MetricVerdict, SeedComparison, SrmCheck,
};
pub use config::{AbTestConfig, BanditConfig, Guardrail, PrimaryMetric};
pub use error::{AbTestError, Result};
pub use judge::{Judge, JudgeInput, PeriodStats, SequentialJudge};
pub use manager::{AbStatus, AbTest, CheckOutcome, Route};
pub use metric::Metric;
pub use router::{unit_position, Arm, HashRouter, Router, RoutingTable};
pub use units::Aggregation;
