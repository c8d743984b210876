//! The statistical primitives: normal tail, mSPRT mixture likelihood ratio, confidence
//! sequence width, chi-square tail, Holm's step-down and the samplers Thompson sampling needs.
//!
//! Formulas follow the project's statistics notes; see the crate documentation for how the
//! judge combines them.

use rand::Rng;

/// The complementary error function, with fractional error below 1.2e-7 everywhere
/// (Chebyshev fit, Numerical Recipes `erfcc`).
pub(crate) fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ans = t * poly.exp();
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// P(Z > z) for a standard normal Z.
pub(crate) fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Upper tail of the chi-square distribution with one degree of freedom.
pub(crate) fn chi_square_1_sf(chi2: f64) -> f64 {
    if chi2 <= 0.0 {
        return 1.0;
    }
    erfc((chi2 / 2.0).sqrt())
}

/// Natural log of the mSPRT normal-mixture likelihood ratio for an estimate `estimate` with
/// variance `variance`, null value `theta0` and mixture scale `tau`:
/// `ln Λ = ½ ln(V/(V+τ²)) + τ²(d−θ₀)² / (2V(V+τ²))`.
pub(crate) fn msprt_log_lambda(estimate: f64, variance: f64, tau: f64, theta0: f64) -> f64 {
    let tau2 = tau * tau;
    let v = variance;
    let diff = estimate - theta0;
    0.5 * (v / (v + tau2)).ln() + tau2 * diff * diff / (2.0 * v * (v + tau2))
}

/// The two-sided mSPRT p-value of one look: `min(1, 1/Λ)`.
pub(crate) fn msprt_p(estimate: f64, variance: f64, tau: f64, theta0: f64) -> f64 {
    (-msprt_log_lambda(estimate, variance, tau, theta0))
        .exp()
        .min(1.0)
}

/// P(Z <= z) for a standard normal Z.
pub(crate) fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The one-sided mSPRT p-value of one look for "the difference exceeds `theta0`": the
/// mixture is a half-normal N⁺(θ₀, τ²) over effects above the null, which has the closed form
/// `Λ⁺ = 2 Λ Φ((d−θ₀)τ / sqrt(V(V+τ²)))`; the p-value is `min(1, 1/Λ⁺)`. For the other
/// direction pass the negated estimate and null.
pub(crate) fn msprt_p_greater(estimate: f64, variance: f64, tau: f64, theta0: f64) -> f64 {
    let z = (estimate - theta0) * tau / (variance * (variance + tau * tau)).sqrt();
    let log_lambda = std::f64::consts::LN_2
        + msprt_log_lambda(estimate, variance, tau, theta0)
        + normal_cdf(z).ln();
    (-log_lambda).exp().min(1.0)
}

/// Half-width of the always-valid confidence sequence at level `alpha`:
/// `sqrt( V(V+τ²)/τ² · (2 ln(1/α) + ln((V+τ²)/V)) )`.
pub(crate) fn cs_half_width(variance: f64, tau: f64, alpha: f64) -> f64 {
    let tau2 = tau * tau;
    let v = variance;
    (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt()
}

/// Holm's step-down procedure: which of `p_values` are rejected at family-wise level `alpha`.
pub(crate) fn holm(p_values: &[f64], alpha: f64) -> Vec<bool> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut rejected = vec![false; m];
    for (rank, &i) in order.iter().enumerate() {
        if p_values[i] <= alpha / (m - rank) as f64 {
            rejected[i] = true;
        } else {
            break;
        }
    }
    rejected
}

/// A standard normal draw (Box–Muller).
pub(crate) fn sample_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // in (0, 1]
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia–Tsang; shapes below 1 boosted by `U^(1/shape)`).
pub(crate) fn sample_gamma(rng: &mut impl Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>();
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = sample_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(a, b) draw.
pub(crate) fn sample_beta(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    let x = sample_gamma(rng, a);
    let y = sample_gamma(rng, b);
    x / (x + y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn normal_and_chi_square_tails() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (1.959_964, 0.025),
            (3.090_232, 0.001),
            (-1.0, 0.841_344_75),
        ] {
            assert!(
                close(normal_sf(z), p, 1e-7),
                "sf({z}) = {} != {p}",
                normal_sf(z)
            );
        }
        // chi-square(1) at 3.841 is p = 0.05; at 10.828 p = 0.001.
        assert!(close(chi_square_1_sf(3.841_459), 0.05, 1e-6));
        assert!(close(chi_square_1_sf(10.827_566), 0.001, 1e-7));
        assert_eq!(chi_square_1_sf(0.0), 1.0);
    }

    #[test]
    fn msprt_matches_the_formula_and_rejects_exactly_at_the_boundary() {
        let (v, tau) = (1e-4, 0.03);
        // No difference: Λ = sqrt(V/(V+τ²)) < 1, p = 1.
        assert_eq!(msprt_p(0.0, v, tau, 0.0), 1.0);
        // The confidence sequence boundary is where Λ = 1/α.
        let h = cs_half_width(v, tau, 0.05);
        assert!(close(msprt_p(h, v, tau, 0.0), 0.05, 1e-12));
        assert!(close(msprt_p(-h, v, tau, 0.0), 0.05, 1e-12));
        assert!(msprt_p(1.01 * h, v, tau, 0.0) < 0.05);
        // The null value shifts the test, not the interval.
        assert!(close(msprt_p(0.01 + h, v, tau, 0.01), 0.05, 1e-12));
    }

    #[test]
    fn one_sided_mixture_matches_numerical_integration() {
        // Λ⁺ = ∫ L(θ)/L(θ₀) · 2 N(θ; θ₀, τ²) dθ over θ > θ₀, by the trapezoid rule.
        let (v, tau, theta0) = (4e-4, 0.03, -0.01);
        for d in [-0.05, -0.01, 0.0, 0.02, 0.05, 0.08] {
            let (steps, top) = (200_000, theta0 + 12.0 * tau);
            let h = (top - theta0) / steps as f64;
            let f = |theta: f64| {
                let x = theta - theta0;
                let ratio = ((d - theta0) * x / v - x * x / (2.0 * v)).exp();
                ratio * 2.0 * (-x * x / (2.0 * tau * tau)).exp()
                    / (tau * (std::f64::consts::TAU).sqrt())
            };
            let integral: f64 = (0..=steps)
                .map(|i| {
                    let w = if i == 0 || i == steps { 0.5 } else { 1.0 };
                    w * f(theta0 + i as f64 * h)
                })
                .sum::<f64>()
                * h;
            let expected = (1.0 / integral).min(1.0);
            let got = msprt_p_greater(d, v, tau, theta0);
            assert!(
                (got - expected).abs() <= 1e-6 * expected.max(1e-12) + 1e-12,
                "d = {d}: {got} vs {expected}"
            );
        }
        // Far on the wrong side the evidence is nil.
        assert_eq!(msprt_p_greater(-1.0, v, tau, 0.0), 1.0);
        // On the right side it is about twice the two-sided evidence.
        let (two, one) = (
            msprt_p(0.08, v, tau, 0.0),
            msprt_p_greater(0.08, v, tau, 0.0),
        );
        assert!((one / two - 0.5).abs() < 1e-3, "{one} vs {two}");
    }

    #[test]
    fn holm_steps_down() {
        assert_eq!(holm(&[0.01, 0.04, 0.03], 0.05), [true, false, false]);
        assert_eq!(holm(&[0.01, 0.02, 0.03], 0.05), [true, true, true]);
        assert_eq!(holm(&[0.2, 0.001], 0.05), [false, true]);
        assert_eq!(holm(&[], 0.05), Vec::<bool>::new());
    }

    #[test]
    fn samplers_have_the_right_moments() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| sample_beta(&mut rng, 8.0, 4.0)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Beta(8, 4): mean 2/3, variance ab/((a+b)²(a+b+1)) = 32/1872.
        assert!(close(mean, 8.0 / 12.0, 0.002), "{mean}");
        assert!(close(var, 32.0 / 1872.0, 0.0005), "{var}");
        let small: f64 = (0..n).map(|_| sample_gamma(&mut rng, 0.5)).sum::<f64>() / n as f64;
        assert!(close(small, 0.5, 0.01), "{small}");
    }
}
