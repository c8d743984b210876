//! `AbTestConfig`: the seed's A/B settings with their names and defaults, plus the settings
//! of the sequential judge, the guardrails, the sample-ratio check and the bandit.

use crate::error::AbTestError;
use crate::metric::Metric;
use crate::units::Aggregation;

/// The metric a challenger must improve to be promoted; written `quality` or
/// `positive_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryMetric {
    /// Mean quality score (every scored request counts).
    Quality,
    /// Share of thumbs-up among requests with feedback.
    PositiveRate,
}

impl PrimaryMetric {
    /// The metric measured.
    pub fn metric(self) -> Metric {
        match self {
            PrimaryMetric::Quality => Metric::Quality,
            PrimaryMetric::PositiveRate => Metric::PositiveRate,
        }
    }
}

/// A metric the challenger must not make worse by more than `margin`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guardrail {
    /// The metric watched.
    pub metric: Metric,
    /// The tolerated harm, relative to the champion's value (0.1 = 10% worse), > 0.
    pub margin: f64,
}

/// Thompson-sampling traffic weights (off unless configured). Written as `[abtest.bandit]`
/// (see [`AbTestSettings`](crate::AbTestSettings)); an absent key keeps its default.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanditConfig {
    /// Least share of traffic either arm keeps (GrowthBook's default: 1%).
    pub arm_floor: f64,
    /// Least share of traffic the champion keeps, so a lucky challenger never takes over
    /// before the sequential test has decided.
    pub champion_floor: f64,
    /// Posterior draws per reweighting when the primary metric is a rate (means use the
    /// closed form).
    pub draws: u32,
}

impl Default for BanditConfig {
    fn default() -> Self {
        BanditConfig {
            arm_floor: 0.01,
            champion_floor: 0.5,
            draws: 1000,
        }
    }
}

/// Settings of champion/challenger experiments.
///
/// The first six fields keep the names and defaults of the Python module's `ABTestConfig`.
/// Two of them keep their old meaning only for the *seed comparison* reported beside every
/// decision (the seed's weighted-improvement score and its fixed-threshold rule):
/// `min_improvement_threshold` and `promotion_threshold`. Decisions themselves are taken by
/// the sequential judge with `alpha`, `min_lift` and `expected_effect`.
#[derive(Debug, Clone, PartialEq)]
pub struct AbTestConfig {
    /// Share of traffic a new challenger gets (seed default 0.1).
    pub initial_challenger_traffic: f64,
    /// Requests each arm needs before any promotion or rollback (seed default 100).
    pub min_samples_per_version: u64,
    /// The seed's threshold on its weighted-improvement score and the "5% better" half of
    /// its fixed rule (default 0.05). Reported for comparison only.
    pub min_improvement_threshold: f64,
    /// Whether a `promote` decision is applied automatically (default true).
    pub enable_auto_promotion: bool,
    /// The p-value cutoff of the seed's fixed rule (default 0.05). Reported for comparison
    /// only; the sequential test uses `alpha`.
    pub promotion_threshold: f64,
    /// Hours an experiment must run before a promotion (default 48). Rollbacks need no
    /// minimum duration.
    pub min_duration_hours: f64,

    /// The metric to improve (default quality).
    pub primary_metric: PrimaryMetric,
    /// Level of the always-valid tests and confidence sequences (default 0.05).
    pub alpha: f64,
    /// Least relative improvement of the primary metric's point estimate for a promotion
    /// (default 0.01): a significant but negligible win is not worth a deployment.
    pub min_lift: f64,
    /// The relative effect the primary test is tuned to detect fastest (default 0.05): the
    /// mixture scale is `τ = expected_effect × champion baseline`, frozen at the first look.
    pub expected_effect: f64,
    /// Feedback events each arm needs before a promotion when a feedback metric is primary
    /// or a guardrail (default 25).
    pub min_feedback_per_version: u64,
    /// Metrics that must not get worse (default: latency by 10%, negative-feedback rate by
    /// 15%).
    pub guardrails: Vec<Guardrail>,
    /// Whether a `rollback` decision is applied automatically (default true).
    pub enable_auto_rollback: bool,
    /// Sample-ratio-mismatch alarm level of the chi-square test (default 0.001).
    pub srm_p_threshold: f64,
    /// Least absolute deviation of the challenger's traffic share that counts as a
    /// mismatch (default 0.001, i.e. 0.1 percentage points).
    pub srm_min_deviation: f64,
    /// How often the experiment is checked, in hours (default 1); the bandit reweights at
    /// most this often.
    pub check_interval_hours: f64,
    /// Thompson-sampling weights; `None` (default) keeps weights where operators set them.
    pub bandit: Option<BanditConfig>,
    /// Units (user or session ids) each arm needs before any promotion or rollback, and
    /// before a metric's test starts (default 50): a few heavy users can send 100 requests
    /// in an hour. Records without a unit id count as units of their own.
    pub min_units_per_arm: u64,
    /// Metrics analysed as a request-weighted ratio (Σ metric / Σ observations over units,
    /// delta-method variance over units) instead of the default mean of per-unit means.
    /// Empty by default.
    pub ratio_metrics: Vec<Metric>,
    /// Variance reduction with each unit's pre-experiment value of the metric as covariate
    /// (CUPED; per-unit means only; units without history are not adjusted). Default true.
    pub cuped: bool,
    /// Days of history before an experiment starts that give the CUPED covariates (default
    /// 14; 0 records none).
    pub cuped_lookback_days: f64,
    /// Hours after a record is logged before its feedback counts in feedback metrics
    /// (default 0: feedback counts as it arrives). A missing thumb never counts as a
    /// negative either way; a window makes every look compare records that have all had
    /// the same time to collect feedback.
    pub feedback_maturity_hours: f64,
}

impl Default for AbTestConfig {
    fn default() -> Self {
        AbTestConfig {
            initial_challenger_traffic: 0.1,
            min_samples_per_version: 100,
            min_improvement_threshold: 0.05,
            enable_auto_promotion: true,
            promotion_threshold: 0.05,
            min_duration_hours: 48.0,
            primary_metric: PrimaryMetric::Quality,
            alpha: 0.05,
            min_lift: 0.01,
            expected_effect: 0.05,
            min_feedback_per_version: 25,
            guardrails: vec![
                Guardrail {
                    metric: Metric::Latency,
                    margin: 0.10,
                },
                // 15%, not 10%: with the share measured per unit, a 10% margin (3 pp of
                // a 30% share) cannot be established within two weeks at a 10% weight
                // for a small team's traffic, even by a challenger that improves it.
                Guardrail {
                    metric: Metric::NegativeRate,
                    margin: 0.15,
                },
            ],
            enable_auto_rollback: true,
            srm_p_threshold: 0.001,
            srm_min_deviation: 0.001,
            check_interval_hours: 1.0,
            bandit: None,
            min_units_per_arm: 50,
            ratio_metrics: Vec::new(),
            cuped: true,
            cuped_lookback_days: 14.0,
            feedback_maturity_hours: 0.0,
        }
    }
}

fn check_unit(
    field: &'static str,
    value: f64,
    lo_open: bool,
    hi_open: bool,
) -> Result<(), AbTestError> {
    let ok = value.is_finite()
        && if lo_open { value > 0.0 } else { value >= 0.0 }
        && if hi_open { value < 1.0 } else { value <= 1.0 };
    if ok {
        Ok(())
    } else {
        let (l, h) = (
            if lo_open { "(0" } else { "[0" },
            if hi_open { "1)" } else { "1]" },
        );
        Err(AbTestError::invalid_config(
            field,
            format!("{value} is not within {l}, {h}"),
        ))
    }
}

fn check_non_negative(field: &'static str, value: f64) -> Result<(), AbTestError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(AbTestError::invalid_config(
            field,
            format!("{value} is not a finite number >= 0"),
        ))
    }
}

impl AbTestConfig {
    /// Checks every setting; the first problem found names its field.
    pub fn validate(&self) -> Result<(), AbTestError> {
        check_unit(
            "initial_challenger_traffic",
            self.initial_challenger_traffic,
            false,
            false,
        )?;
        check_non_negative("min_improvement_threshold", self.min_improvement_threshold)?;
        check_unit("promotion_threshold", self.promotion_threshold, true, true)?;
        check_non_negative("min_duration_hours", self.min_duration_hours)?;
        check_unit("alpha", self.alpha, true, true)?;
        check_non_negative("min_lift", self.min_lift)?;
        if !(self.expected_effect.is_finite() && self.expected_effect > 0.0) {
            return Err(AbTestError::invalid_config(
                "expected_effect",
                format!("{} is not a finite number > 0", self.expected_effect),
            ));
        }
        for (i, guardrail) in self.guardrails.iter().enumerate() {
            if !(guardrail.margin.is_finite() && guardrail.margin > 0.0) {
                return Err(AbTestError::invalid_config(
                    "guardrails",
                    format!(
                        "guardrail {i} ({}): margin {} is not a finite number > 0",
                        guardrail.metric.key(),
                        guardrail.margin
                    ),
                ));
            }
            let primary = self.primary_metric.metric();
            if guardrail.metric == primary {
                return Err(AbTestError::invalid_config(
                    "guardrails",
                    format!(
                        "guardrail {i}: {} is already the primary metric",
                        primary.key()
                    ),
                ));
            }
            if self.guardrails[..i]
                .iter()
                .any(|g| g.metric == guardrail.metric)
            {
                return Err(AbTestError::invalid_config(
                    "guardrails",
                    format!("guardrail {i}: {} is listed twice", guardrail.metric.key()),
                ));
            }
        }
        check_unit("srm_p_threshold", self.srm_p_threshold, true, true)?;
        check_unit("srm_min_deviation", self.srm_min_deviation, false, true)?;
        if !(self.check_interval_hours.is_finite() && self.check_interval_hours > 0.0) {
            return Err(AbTestError::invalid_config(
                "check_interval_hours",
                format!("{} is not a finite number > 0", self.check_interval_hours),
            ));
        }
        check_non_negative("cuped_lookback_days", self.cuped_lookback_days)?;
        check_non_negative("feedback_maturity_hours", self.feedback_maturity_hours)?;
        for (i, metric) in self.ratio_metrics.iter().enumerate() {
            if self.ratio_metrics[..i].contains(metric) {
                return Err(AbTestError::invalid_config(
                    "ratio_metrics",
                    format!("{} is listed twice", metric.key()),
                ));
            }
        }
        if let Some(bandit) = &self.bandit {
            check_unit("bandit.arm_floor", bandit.arm_floor, false, false)?;
            if bandit.arm_floor > 0.5 {
                return Err(AbTestError::invalid_config(
                    "bandit.arm_floor",
                    format!("{} leaves no room above 0.5", bandit.arm_floor),
                ));
            }
            check_unit("bandit.champion_floor", bandit.champion_floor, false, true)?;
            if bandit.draws == 0 {
                return Err(AbTestError::invalid_config(
                    "bandit.draws",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// How `metric`'s per-unit values are combined.
    pub fn aggregation_of(&self, metric: Metric) -> Aggregation {
        if self.ratio_metrics.contains(&metric) {
            Aggregation::Ratio
        } else {
            Aggregation::UnitMean
        }
    }

    /// Whether promotions need feedback events (a feedback metric is primary or guarded).
    pub(crate) fn needs_feedback(&self) -> bool {
        self.primary_metric.metric().is_feedback()
            || self.guardrails.iter().any(|g| g.metric.is_feedback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: AbTestConfig) -> Option<&'static str> {
        match config.validate() {
            Ok(()) => None,
            Err(AbTestError::InvalidConfig { field, .. }) => Some(field),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = AbTestConfig::default();
        assert_eq!(field_of(ok.clone()), None);
        let cases: Vec<(AbTestConfig, &str)> = vec![
            (
                AbTestConfig {
                    initial_challenger_traffic: 1.5,
                    ..ok.clone()
                },
                "initial_challenger_traffic",
            ),
            (
                AbTestConfig {
                    alpha: 0.0,
                    ..ok.clone()
                },
                "alpha",
            ),
            (
                AbTestConfig {
                    alpha: f64::NAN,
                    ..ok.clone()
                },
                "alpha",
            ),
            (
                AbTestConfig {
                    min_lift: -0.1,
                    ..ok.clone()
                },
                "min_lift",
            ),
            (
                AbTestConfig {
                    expected_effect: 0.0,
                    ..ok.clone()
                },
                "expected_effect",
            ),
            (
                AbTestConfig {
                    min_duration_hours: -1.0,
                    ..ok.clone()
                },
                "min_duration_hours",
            ),
            (
                AbTestConfig {
                    promotion_threshold: 1.0,
                    ..ok.clone()
                },
                "promotion_threshold",
            ),
            (
                AbTestConfig {
                    check_interval_hours: 0.0,
                    ..ok.clone()
                },
                "check_interval_hours",
            ),
            (
                AbTestConfig {
                    guardrails: vec![Guardrail {
                        metric: Metric::Latency,
                        margin: 0.0,
                    }],
                    ..ok.clone()
                },
                "guardrails",
            ),
            (
                AbTestConfig {
                    guardrails: vec![Guardrail {
                        metric: Metric::Quality,
                        margin: 0.1,
                    }],
                    ..ok.clone()
                },
                "guardrails",
            ),
            (
                AbTestConfig {
                    guardrails: vec![
                        Guardrail {
                            metric: Metric::Latency,
                            margin: 0.1,
                        },
                        Guardrail {
                            metric: Metric::Latency,
                            margin: 0.2,
                        },
                    ],
                    ..ok.clone()
                },
                "guardrails",
            ),
            (
                AbTestConfig {
                    bandit: Some(BanditConfig {
                        arm_floor: 0.6,
                        ..BanditConfig::default()
                    }),
                    ..ok.clone()
                },
                "bandit.arm_floor",
            ),
            (
                AbTestConfig {
                    bandit: Some(BanditConfig {
                        champion_floor: 1.0,
                        ..BanditConfig::default()
                    }),
                    ..ok.clone()
                },
                "bandit.champion_floor",
            ),
            (
                AbTestConfig {
                    bandit: Some(BanditConfig {
                        draws: 0,
                        ..BanditConfig::default()
                    }),
                    ..ok
                },
                "bandit.draws",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field_of(config), Some(field));
        }
    }

    #[test]
    fn feedback_minimum_applies_only_when_feedback_is_judged() {
        assert!(AbTestConfig::default().needs_feedback());
        let no_feedback = AbTestConfig {
            guardrails: vec![Guardrail {
                metric: Metric::Latency,
                margin: 0.1,
            }],
            ..AbTestConfig::default()
        };
        assert!(!no_feedback.needs_feedback());
        assert!(AbTestConfig {
            primary_metric: PrimaryMetric::PositiveRate,
            ..no_feedback
        }
        .needs_feedback());
    }
}
