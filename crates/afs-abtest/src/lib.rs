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
//!
//! The simulator that measures false promotions and rollbacks, power and harm detection
//! under production-like traffic is the crate `afs-sim`.
//!
//! # The statistics of the default judge
//!
//! **Units of analysis.** Routing is sticky by unit, so each arm is a fixed group of units
//! and requests are not independent draws. The judge reads the store's per-unit sums
//! ([`afs_store::ExperimentStore::unit_stats`]: per arm and *cohort*, the period in which a
//! unit was first seen) and aggregates every metric per unit first. Per metric
//! ([`AbTestConfig::ratio_metrics`]):
//! * **per-unit mean** (default): ȳ_u = y_u/n_u, arm value m = Σȳ_u/K, variance of one unit
//!   s² = (Σȳ_u² − (Σȳ_u)²/K)/(K − 1), so Var(m) = s²/K;
//! * **ratio**: m = Σy_u/Σn_u with the delta-method variance over units
//!   Var(m) ≈ (s²_y − 2m·s_yn + m²·s²_n)/(K·n̄²).
//!
//! Shares (thumbs up or down among a unit's feedback) floor the per-unit variance at the
//! binomial p̃(1 − p̃)/n̄. **CUPED**: with covariates x_u (each unit's pre-experiment value),
//! θ = Σ S_xy / Σ S_xx pooled within arms and cohorts, and each unit's mean is replaced by
//! ȳ_u − θ(x_u − x̄) (units without history unchanged), all from the sums Σx, Σx², Σxȳ.
//! Records without a unit id are units of their own; with no unit ids at all the analysis is
//! per request and says so ([`Analysis::NoUnitIds`]). Without unit statistics (a store that
//! gives none) the judge falls back to the per-model rollups ([`PeriodStats`]).
//!
//! //! **Always-valid tests.** Each metric gets a mixture sequential probability ratio test
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
//! cohorts (weight changes) d is the average of per-cohort differences weighted by their
//! effective sizes `K_A·K_B/(K_A+K_B)`, with per-unit variances pooled over each arm.
//!
//! **Choice of τ.** The mixture is most powerful for effects near τ, so τ is set near the
//! smallest effect worth acting on: for the primary metric `τ = expected_effect × baseline`
//! (default 5% of the champion's value when the test starts: 0.035 for a quality of 0.70 or
//! a thumbs-up rate of 70%), for a guardrail `τ = margin × baseline`. The baseline is frozen
//! at the first look so the test does not drift with the data.
//!
//! **Decision.** Promote only when, after `min_duration_hours` (48) with at least
//! `min_samples_per_version` (100) requests, `min_units_per_arm` (50) units and
//! `min_feedback_per_version` (25) feedback events per arm: the primary metric is significantly better (always-valid p < α = 0.05)
//! with a point-estimate lift of at least `min_lift` (1%), and every guardrail is shown to
//! be no worse than its margin (default 10% for latency and negative-feedback rate). Roll
//! back when the primary metric is significantly worse or a guardrail significantly worse
//! than its margin (Holm-corrected; no minimum duration), even during a hold. Hold when the
//! units first assigned to each arm do not match the weights: per period, a Beta(k·w,
//! k·(1 − w)) mixture (k = 1000) against the weight w gives a Bayes factor; the product over
//! periods is a martingale under correct routing, so p = 1/BF is always valid (alarm at
//! p < 0.001 with a deviation above 0.1 pp; requests and chi-square without unit
//! statistics). Otherwise keep testing. An arm without data never passes.
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
mod settings;
mod units;

pub use bandit::{bandit_update, BanditUpdate};
pub use comparison::{
    Analysis, Comparison, MetricResult, MetricRole, MetricVerdict, SeedComparison, SrmCheck,
};
pub use config::{AbTestConfig, BanditConfig, Guardrail, PrimaryMetric};
pub use error::{AbTestError, Result};
pub use judge::{Judge, JudgeInput, PeriodStats, SequentialJudge};
pub use manager::{AbStatus, AbTest, CheckOutcome, Route};
pub use metric::Metric;
pub use router::{unit_position, Arm, HashRouter, Router, RoutingTable};
pub use settings::{AbTestSettings, GuardrailSettings, Margin, MetricList};
pub use units::Aggregation;
