//! Unit-level estimates: each metric aggregated per unit first, compared across units, with
//! variances over units; the request-weighted ratio with its delta-method variance; CUPED;
//! and the sequential sample-ratio test on assigned units.
//!
//! Inputs are the store's [`UnitCohort`] sums (one per period of first exposure and arm), so
//! nothing here reads a unit.

use afs_store::{Experiment, UnitCohort, UnitMetric, UnitMoments};

use crate::metric::Metric;

/// How a metric's per-unit values are combined into an arm's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Aggregation {
    /// The mean of per-unit means: every unit weighs the same (the default). Estimates the
    /// effect on the typical unit; a few very active units cannot dominate it.
    #[default]
    UnitMean,
    /// Σ over units of the metric's sum / Σ of its observations: every request weighs the
    /// same, with the delta-method variance over units. Estimates the effect per request,
    /// which heavy units dominate.
    Ratio,
}

impl Aggregation {
    /// The name used in config and reports: `unit_mean` or `ratio`.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::UnitMean => "unit_mean",
            Aggregation::Ratio => "ratio",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "unit_mean" => Some(Aggregation::UnitMean),
            "ratio" => Some(Aggregation::Ratio),
            _ => None,
        }
    }
}

/// The store's per-unit metric behind an experiment metric.
pub(crate) fn unit_metric(metric: Metric) -> UnitMetric {
    match metric {
        Metric::Quality => UnitMetric::Quality,
        Metric::Latency => UnitMetric::Latency,
        Metric::PositiveRate => UnitMetric::Positive,
        Metric::NegativeRate => UnitMetric::Negative,
    }
}

/// Both arms' value of one metric, and the difference with its variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UnitEstimate {
    /// Units with an observation of the metric, champion and challenger.
    pub(crate) units: (u64, u64),
    /// Observations (records, or records with feedback), champion and challenger.
    pub(crate) observations: (u64, u64),
    /// Each arm's value over the whole experiment (unadjusted), if it has units.
    pub(crate) values: (Option<f64>, Option<f64>),
    /// Challenger − champion (CUPED-adjusted when `cuped`), combined over cohorts, and its
    /// variance; `None` until some cohort has units in both arms.
    pub(crate) difference: Option<(f64, f64)>,
    /// The share of variance CUPED removed (1 − Var adjusted / Var raw of the pooled
    /// per-unit values), when it was applied.
    pub(crate) cuped_reduction: Option<f64>,
}

/// A cohort's (or a pooled arm's) value and per-unit variance.
struct ArmSample {
    units: f64,
    mean: f64,
    /// Variance of one unit's contribution: the estimate's variance is this / units.
    unit_variance: f64,
}

/// The CUPED slope and centre, pooled over arms and cohorts.
#[derive(Clone, Copy)]
struct Cuped {
    theta: f64,
    x_bar: f64,
}

fn cuped_fit(moments: &[&UnitMoments]) -> Option<Cuped> {
    let (mut sxy, mut sxx, mut sum_x, mut k) = (0.0, 0.0, 0.0, 0u64);
    for m in moments {
        if m.cov_units < 2 {
            sum_x += m.sum_x;
            k += m.cov_units;
            continue;
        }
        let kh = m.cov_units as f64;
        sxy += m.sum_x_mean - m.sum_x * m.sum_mean_cov / kh;
        sxx += m.sum_x_sq - m.sum_x * m.sum_x / kh;
        sum_x += m.sum_x;
        k += m.cov_units;
    }
    // Too few units with history to estimate a slope worth having.
    if k < 20 || sxx <= 0.0 || !sxy.is_finite() {
        return None;
    }
    Some(Cuped {
        theta: sxy / sxx,
        x_bar: sum_x / k as f64,
    })
}

/// `(Σ y', Σ y'²)` of per-unit means after the CUPED adjustment y' = ȳ − θ(x − x̄) (units
/// without history keep ȳ).
fn adjusted_sums(m: &UnitMoments, cuped: Option<Cuped>) -> (f64, f64) {
    match cuped {
        None => (m.sum_mean, m.sum_mean_sq),
        Some(Cuped { theta, x_bar }) => {
            let kh = m.cov_units as f64;
            let s1 = m.sum_mean - theta * (m.sum_x - kh * x_bar);
            let centred_xy = m.sum_x_mean - x_bar * m.sum_mean_cov;
            let centred_xx = m.sum_x_sq - 2.0 * x_bar * m.sum_x + kh * x_bar * x_bar;
            let s2 = m.sum_mean_sq - 2.0 * theta * centred_xy + theta * theta * centred_xx;
            (s1, s2.max(0.0))
        }
    }
}

fn sample(
    m: &UnitMoments,
    aggregation: Aggregation,
    cuped: Option<Cuped>,
    is_rate: bool,
) -> Option<ArmSample> {
    if m.units == 0 {
        return None;
    }
    let k = m.units as f64;
    let (mean, mut unit_variance) = match aggregation {
        Aggregation::UnitMean => {
            let (s1, s2) = adjusted_sums(m, cuped);
            let mean = s1 / k;
            let var = if m.units >= 2 {
                ((s2 - s1 * s1 / k) / (k - 1.0)).max(0.0)
            } else {
                0.0
            };
            (mean, var)
        }
        Aggregation::Ratio => {
            if m.sum_n <= 0.0 {
                return None;
            }
            let mean = m.sum_y / m.sum_n;
            let var = if m.units >= 2 {
                let n_bar = m.sum_n / k;
                let s_yy = (m.sum_y_sq - m.sum_y * m.sum_y / k) / (k - 1.0);
                let s_nn = (m.sum_n_sq - m.sum_n * m.sum_n / k) / (k - 1.0);
                let s_yn = (m.sum_yn - m.sum_y * m.sum_n / k) / (k - 1.0);
                ((s_yy - 2.0 * mean * s_yn + mean * mean * s_nn) / (n_bar * n_bar)).max(0.0)
            } else {
                0.0
            };
            (mean, var)
        }
    };
    if is_rate {
        // A share cannot vary less across units than binomial noise within them: floor the
        // per-unit variance at p̃(1 − p̃)/n̄, with p̃ shrunk towards ½ by one pseudo-count
        // each way, so a small arm with all thumbs up does not claim zero variance.
        let p = (m.sum_y + 1.0) / (m.sum_n + 2.0);
        let n_bar = (m.sum_n / k).max(1.0);
        unit_variance = unit_variance.max(p * (1.0 - p) / n_bar);
    }
    Some(ArmSample {
        units: k,
        mean,
        unit_variance,
    })
}

/// Estimates `metric` from `cohorts` with `aggregation`, CUPED when `cuped` (unit means
/// only) and covariates exist.
///
/// Each cohort (units first seen in one period) compares its own champion and challenger
/// units; the cohorts' differences are averaged with effective-size weights
/// `K_A·K_B/(K_A + K_B)`, so a change in the traffic mix between periods cannot pass for an
/// effect. Per-unit variances are pooled over each arm's lifetime.
pub(crate) fn estimate(
    metric: Metric,
    cohorts: &[UnitCohort],
    periods: usize,
    aggregation: Aggregation,
    cuped: bool,
) -> UnitEstimate {
    let um = unit_metric(metric);
    let is_rate = metric.is_feedback();
    let mut pooled = (UnitMoments::default(), UnitMoments::default());
    for c in cohorts {
        let side = if c.challenger {
            &mut pooled.1
        } else {
            &mut pooled.0
        };
        side.add(c.metric(um));
    }
    let fit = if cuped && aggregation == Aggregation::UnitMean {
        let all: Vec<&UnitMoments> = cohorts.iter().map(|c| c.metric(um)).collect();
        cuped_fit(&all)
    } else {
        None
    };
    let raw = (
        sample(&pooled.0, aggregation, None, is_rate),
        sample(&pooled.1, aggregation, None, is_rate),
    );
    let adjusted = (
        sample(&pooled.0, aggregation, fit, is_rate),
        sample(&pooled.1, aggregation, fit, is_rate),
    );
    let cuped_reduction = fit.and_then(|_| {
        let raw_var: f64 = [&raw.0, &raw.1]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| s.unit_variance))
            .sum();
        let adj_var: f64 = [&adjusted.0, &adjusted.1]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| s.unit_variance))
            .sum();
        (raw_var > 0.0).then(|| 1.0 - adj_var / raw_var)
    });
    let difference = match &adjusted {
        (Some(pa), Some(pb)) => {
            let (mut sum_h, mut sum_hd, mut sum_h2v) = (0.0, 0.0, 0.0);
            for period in 0..periods.max(1) as u32 {
                let side = |challenger: bool| {
                    cohorts
                        .iter()
                        .find(|c| c.period == period && c.challenger == challenger)
                        .and_then(|c| sample(c.metric(um), aggregation, fit, is_rate))
                };
                let (Some(a), Some(b)) = (side(false), side(true)) else {
                    continue;
                };
                let h = a.units * b.units / (a.units + b.units);
                sum_h += h;
                sum_hd += h * (b.mean - a.mean);
                sum_h2v += h * h * (pa.unit_variance / a.units + pb.unit_variance / b.units);
            }
            (sum_h > 0.0).then(|| (sum_hd / sum_h, sum_h2v / (sum_h * sum_h)))
        }
        _ => None,
    };
    UnitEstimate {
        units: (pooled.0.units, pooled.1.units),
        observations: (pooled.0.sum_n as u64, pooled.1.sum_n as u64),
        values: (
            raw.0.as_ref().map(|s| s.mean),
            raw.1.as_ref().map(|s| s.mean),
        ),
        difference,
        cuped_reduction,
    }
}

/// Prior strength of the sequential sample-ratio test: the challenger's assignment
/// probability gets a Beta(k·w, k·(1 − w)) mixture around its weight w, whose spread
/// (about 1 percentage point at w = 0.1) is the size of deviation it is most sensitive to.
const SRM_PRIOR_STRENGTH: f64 = 1000.0;

/// The sequential sample-ratio test on units: per period, the units first assigned to each
/// arm are Bernoulli draws with the period's weight under correct routing; the Bayes
/// factor of a Beta mixture around the weight against the weight itself is a martingale
/// under that null, and so is the product over periods. Returns `(log Bayes factor,
/// champion units, challenger units, expected challenger units)`; the always-valid p-value
/// is `min(1, 1/BF)` (Ville's inequality), valid however often it is checked.
pub(crate) fn srm_log_bayes_factor(
    experiment: &Experiment,
    cohorts: &[UnitCohort],
) -> (f64, u64, u64, f64) {
    let (mut log_bf, mut total_a, mut total_b, mut expected_b) = (0.0, 0u64, 0u64, 0.0);
    for period in &experiment.periods {
        let count = |challenger: bool| {
            cohorts
                .iter()
                .filter(|c| c.period == period.index && c.challenger == challenger)
                .map(|c| c.assigned)
                .sum::<u64>()
        };
        let (na, nb) = (count(false), count(true));
        total_a += na;
        total_b += nb;
        let w = period.challenger_weight;
        expected_b += (na + nb) as f64 * w;
        if na + nb == 0 {
            continue;
        }
        if w <= 0.0 || w >= 1.0 {
            // A weight of 0 (1) admits no challenger (champion) unit at all.
            let impossible = (w <= 0.0 && nb > 0) || (w >= 1.0 && na > 0);
            if impossible {
                log_bf = f64::INFINITY;
            }
            continue;
        }
        let (a0, b0) = (SRM_PRIOR_STRENGTH * w, SRM_PRIOR_STRENGTH * (1.0 - w));
        let (na, nb) = (na as f64, nb as f64);
        log_bf += ln_beta(a0 + nb, b0 + na) - ln_beta(a0, b0) - nb * w.ln() - na * (1.0 - w).ln();
    }
    (log_bf, total_a, total_b, expected_b)
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-13).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use afs_store::{ExperimentPeriod, ExperimentStatus, UnitTally, WeightSource};
    use chrono::{TimeZone, Utc};

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0f64;
        for n in 1..30u32 {
            assert!((ln_gamma(f64::from(n)) - fact.ln()).abs() < 1e-10, "{n}");
            fact *= f64::from(n);
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    fn cohort(challenger: bool, units: &[(f64, u64, Option<f64>)]) -> UnitCohort {
        let mut c = UnitCohort {
            challenger,
            ..UnitCohort::default()
        };
        for &(y, n, x) in units {
            let tally = UnitTally {
                n,
                n_quality: n,
                sum_quality: y,
                ..UnitTally::default()
            };
            let cov = x.map(|x| UnitTally {
                n: 1,
                n_quality: 1,
                sum_quality: x,
                ..UnitTally::default()
            });
            c.add_unit(&tally, true, false, cov.as_ref());
        }
        c
    }

    #[test]
    fn unit_mean_weighs_units_equally_and_ratio_weighs_requests() {
        // Champion: one heavy unit at 0.9 (100 requests), one light at 0.1 (1 request).
        let a = cohort(false, &[(90.0, 100, None), (0.1, 1, None)]);
        let b = cohort(true, &[(0.5, 1, None), (0.5, 1, None)]);
        let unit = estimate(Metric::Quality, &[a, b], 1, Aggregation::UnitMean, false);
        assert!((unit.values.0.unwrap() - 0.5).abs() < 1e-12);
        let ratio = estimate(Metric::Quality, &[a, b], 1, Aggregation::Ratio, false);
        assert!((ratio.values.0.unwrap() - 90.1 / 101.0).abs() < 1e-12);
        assert_eq!(unit.units, (2, 2));
        assert_eq!(unit.observations, (101, 2));
    }

    #[test]
    fn cuped_removes_the_variance_the_covariate_explains() {
        // Each unit's mean is its history plus a small wobble: CUPED should remove most of
        // the spread across units and leave the difference (0.05) in place.
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..200 {
            let x = (i % 20) as f64 / 20.0;
            let wobble = if i % 2 == 0 { 0.01 } else { -0.01 };
            a.push((x + wobble, 1, Some(x)));
            b.push((x + 0.05 - wobble, 1, Some(x)));
        }
        let cohorts = [cohort(false, &a), cohort(true, &b)];
        let plain = estimate(Metric::Quality, &cohorts, 1, Aggregation::UnitMean, false);
        let cuped = estimate(Metric::Quality, &cohorts, 1, Aggregation::UnitMean, true);
        let (d0, v0) = plain.difference.unwrap();
        let (d1, v1) = cuped.difference.unwrap();
        assert!((d0 - 0.05).abs() < 1e-9 && (d1 - 0.05).abs() < 1e-9);
        assert!(v1 < v0 / 100.0, "{v1} vs {v0}");
        assert!(cuped.cuped_reduction.unwrap() > 0.99);
    }

    fn experiment(weight: f64) -> Experiment {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Experiment {
            id: 1,
            champion: "a".into(),
            challenger: "b".into(),
            status: ExperimentStatus::Running,
            seed: 1,
            challenger_weight: weight,
            started_at: t0,
            ended_at: None,
            periods: vec![ExperimentPeriod {
                index: 0,
                started_at: t0,
                ended_at: None,
                challenger_weight: weight,
                source: WeightSource::Initial,
            }],
        }
    }

    fn assigned(challenger: bool, n: u64) -> UnitCohort {
        UnitCohort {
            challenger,
            units: n,
            assigned: n,
            ..UnitCohort::default()
        }
    }

    #[test]
    fn srm_bayes_factor_stays_small_on_the_weight_and_grows_off_it() {
        let e = experiment(0.1);
        let (on, _, _, expected) =
            srm_log_bayes_factor(&e, &[assigned(false, 1800), assigned(true, 200)]);
        assert!(on < 0.0, "{on}");
        assert!((expected - 200.0).abs() < 1e-9);
        let (off, ..) = srm_log_bayes_factor(&e, &[assigned(false, 1850), assigned(true, 150)]);
        let (far, ..) = srm_log_bayes_factor(&e, &[assigned(false, 9200), assigned(true, 800)]);
        assert!(far > (1000.0f64).ln(), "{far}");
        assert!(off < far);
    }
}
