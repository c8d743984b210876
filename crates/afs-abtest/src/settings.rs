//! [`AbTestSettings`]: the written form of [`AbTestConfig`] (a config file's `[abtest]`
//! section, environment variables, `--set` flags, `afs config show`), declared once here
//! with its keys, defaults and checks.
//!
//! It differs from [`AbTestConfig`] in two places, both for the person writing it: the
//! guardrails are a table with one key per metric (a margin, or `false` for none) instead of
//! a list, and the bandit is switched by `enable_bandit` while `[abtest.bandit]` keeps its
//! settings whether it is on or not, so they are checked either way.

use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::{AbTestConfig, BanditConfig, Guardrail, PrimaryMetric};
use crate::error::AbTestError;
use crate::metric::Metric;

/// `[abtest]` as written: the fields of [`AbTestConfig`] by their names, every key optional
/// (an absent key keeps [`AbTestConfig::default`]'s value). [`AbTestSettings::into_config`]
/// checks it; `From<&AbTestConfig>` writes a config back out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // Each field is the `AbTestConfig` field of the same name.
pub struct AbTestSettings {
    pub initial_challenger_traffic: f64,
    pub min_samples_per_version: u64,
    pub min_improvement_threshold: f64,
    pub enable_auto_promotion: bool,
    pub promotion_threshold: f64,
    pub min_duration_hours: f64,
    #[serde(deserialize_with = "primary_metric_by_name")]
    pub primary_metric: PrimaryMetric,
    pub alpha: f64,
    pub min_lift: f64,
    pub expected_effect: f64,
    pub min_feedback_per_version: u64,
    pub enable_auto_rollback: bool,
    pub srm_p_threshold: f64,
    pub srm_min_deviation: f64,
    pub check_interval_hours: f64,
    /// Whether the bandit (`[abtest.bandit]`) sets the weights.
    pub enable_bandit: bool,
    pub min_units_per_arm: u64,
    pub ratio_metrics: MetricList,
    pub cuped: bool,
    pub cuped_lookback_days: f64,
    pub feedback_maturity_hours: f64,
    pub guardrails: GuardrailSettings,
    /// The bandit's settings, kept (and checked) while it is off.
    pub bandit: BanditConfig,
}

/// `[abtest.guardrails]`: one key per metric, by its report key ([`Metric::key`]). A metric
/// left out keeps its default (latency at 10%, the negative-feedback rate at 15%, the
/// others off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // Each field is the guardrail on the metric of that key.
pub struct GuardrailSettings {
    pub latency_ms: Margin,
    pub negative_rate: Margin,
    pub positive_rate: Margin,
    pub quality: Margin,
}

/// A guardrail's setting: the tolerated relative harm (`0.1` = 10% worse), or `None`,
/// written `false`, for no guardrail on that metric. Text (an environment variable, `--set`)
/// may give either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin(pub Option<f64>);

/// `abtest.ratio_metrics`: metric keys, as an array in a file or a comma-separated list as
/// text (empty text for none). An unknown key is refused with the allowed ones named.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct MetricList(pub Vec<Metric>);

impl Default for AbTestSettings {
    fn default() -> Self {
        AbTestSettings::from(&AbTestConfig::default())
    }
}

impl Default for GuardrailSettings {
    fn default() -> Self {
        AbTestSettings::default().guardrails
    }
}

impl From<&AbTestConfig> for AbTestSettings {
    fn from(c: &AbTestConfig) -> Self {
        let margin = |metric: Metric| {
            Margin(
                c.guardrails
                    .iter()
                    .find(|g| g.metric == metric)
                    .map(|g| g.margin),
            )
        };
        AbTestSettings {
            initial_challenger_traffic: c.initial_challenger_traffic,
            min_samples_per_version: c.min_samples_per_version,
            min_improvement_threshold: c.min_improvement_threshold,
            enable_auto_promotion: c.enable_auto_promotion,
            promotion_threshold: c.promotion_threshold,
            min_duration_hours: c.min_duration_hours,
            primary_metric: c.primary_metric,
            alpha: c.alpha,
            min_lift: c.min_lift,
            expected_effect: c.expected_effect,
            min_feedback_per_version: c.min_feedback_per_version,
            enable_auto_rollback: c.enable_auto_rollback,
            srm_p_threshold: c.srm_p_threshold,
            srm_min_deviation: c.srm_min_deviation,
            check_interval_hours: c.check_interval_hours,
            enable_bandit: c.bandit.is_some(),
            min_units_per_arm: c.min_units_per_arm,
            ratio_metrics: MetricList(c.ratio_metrics.clone()),
            cuped: c.cuped,
            cuped_lookback_days: c.cuped_lookback_days,
            feedback_maturity_hours: c.feedback_maturity_hours,
            guardrails: GuardrailSettings {
                latency_ms: margin(Metric::Latency),
                negative_rate: margin(Metric::NegativeRate),
                positive_rate: margin(Metric::PositiveRate),
                quality: margin(Metric::Quality),
            },
            bandit: c.bandit.unwrap_or_default(),
        }
    }
}

impl AbTestSettings {
    /// The config these settings describe, checked: the first problem names its key as
    /// written (`alpha`, `guardrails.latency_ms`, `bandit.draws`). The bandit's settings are
    /// checked even while `enable_bandit` is off.
    pub fn into_config(self) -> Result<AbTestConfig, AbTestError> {
        let guardrails = self.guardrails.list(self.primary_metric.metric())?;
        let config = AbTestConfig {
            initial_challenger_traffic: self.initial_challenger_traffic,
            min_samples_per_version: self.min_samples_per_version,
            min_improvement_threshold: self.min_improvement_threshold,
            enable_auto_promotion: self.enable_auto_promotion,
            promotion_threshold: self.promotion_threshold,
            min_duration_hours: self.min_duration_hours,
            primary_metric: self.primary_metric,
            alpha: self.alpha,
            min_lift: self.min_lift,
            expected_effect: self.expected_effect,
            min_feedback_per_version: self.min_feedback_per_version,
            guardrails,
            enable_auto_rollback: self.enable_auto_rollback,
            srm_p_threshold: self.srm_p_threshold,
            srm_min_deviation: self.srm_min_deviation,
            check_interval_hours: self.check_interval_hours,
            bandit: Some(self.bandit),
            min_units_per_arm: self.min_units_per_arm,
            ratio_metrics: self.ratio_metrics.0,
            cuped: self.cuped,
            cuped_lookback_days: self.cuped_lookback_days,
            feedback_maturity_hours: self.feedback_maturity_hours,
        };
        config.validate()?;
        Ok(AbTestConfig {
            bandit: self.enable_bandit.then_some(self.bandit),
            ..config
        })
    }
}

impl GuardrailSettings {
    /// The guardrails in a fixed order (latency, negative rate, positive rate, quality),
    /// refusing a margin that is not > 0 and a guardrail on the primary metric.
    fn list(&self, primary: Metric) -> Result<Vec<Guardrail>, AbTestError> {
        let settings = [
            (Metric::Latency, "guardrails.latency_ms", self.latency_ms),
            (
                Metric::NegativeRate,
                "guardrails.negative_rate",
                self.negative_rate,
            ),
            (
                Metric::PositiveRate,
                "guardrails.positive_rate",
                self.positive_rate,
            ),
            (Metric::Quality, "guardrails.quality", self.quality),
        ];
        let mut out = Vec::new();
        for (metric, key, Margin(margin)) in settings {
            let Some(margin) = margin else { continue };
            if !(margin.is_finite() && margin > 0.0) {
                return Err(AbTestError::invalid_config(
                    key,
                    format!("{margin} is not a margin > 0 (write false for no guardrail)"),
                ));
            }
            if metric == primary {
                return Err(AbTestError::invalid_config(
                    key,
                    format!(
                        "{} is the primary metric (primary_metric) and cannot also be a \
                         guardrail",
                        metric.key()
                    ),
                ));
            }
            out.push(Guardrail { metric, margin });
        }
        Ok(out)
    }
}

/// `primary_metric` by its name, from any text (an environment variable's too): an unknown
/// name is refused with the known ones named.
fn primary_metric_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<PrimaryMetric, D::Error> {
    let name = String::deserialize(d)?;
    PrimaryMetric::deserialize(de::value::StrDeserializer::<D::Error>::new(name.trim()))
}

impl Serialize for Margin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(margin) => serializer.serialize_f64(margin),
            None => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Margin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MarginVisitor;

        impl Visitor<'_> for MarginVisitor {
            type Value = Margin;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a margin > 0 (0.1 = 10% worse) or false")
            }

            // The range is checked by `into_config`, which names the key.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Margin, E> {
                Ok(Margin(Some(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Margin, E> {
                Ok(Margin(Some(v as f64)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Margin, E> {
                Ok(Margin(Some(v as f64)))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Margin, E> {
                if v {
                    Err(E::invalid_value(Unexpected::Bool(v), &self))
                } else {
                    Ok(Margin(None))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Margin, E> {
                match v.trim() {
                    "false" => Ok(Margin(None)),
                    text => text
                        .parse::<f64>()
                        .map(|m| Margin(Some(m)))
                        .map_err(|_| E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }

        deserializer.deserialize_any(MarginVisitor)
    }
}

impl<'de> Deserialize<'de> for MetricList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetricsVisitor;

        impl<'de> Visitor<'de> for MetricsVisitor {
            type Value = MetricList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an array of metric keys (quality, positive_rate, negative_rate, \
                     latency_ms; or, as text, a comma-separated list)",
                )
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<MetricList, A::Error> {
                let mut metrics = Vec::new();
                while let Some(metric) = seq.next_element::<Metric>()? {
                    metrics.push(metric);
                }
                Ok(MetricList(metrics))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<MetricList, E> {
                if v.trim().is_empty() {
                    return Ok(MetricList(Vec::new()));
                }
                v.split(',')
                    .map(|part| {
                        Metric::deserialize(de::value::StrDeserializer::<E>::new(part.trim()))
                    })
                    .collect::<Result<_, _>>()
                    .map(MetricList)
            }
        }

        deserializer.deserialize_any(MetricsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_round_trip_and_every_guardrail_key_is_its_metric_key() {
        let settings = AbTestSettings::default();
        assert_eq!(
            settings.clone().into_config().unwrap(),
            AbTestConfig::default()
        );
        let json = serde_json::to_value(&settings).unwrap();
        let keys: Vec<&str> = json["guardrails"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["guardrails"]["quality"], false);
        assert_eq!(json["primary_metric"], "quality");
        let back: AbTestSettings = serde_json::from_value(json).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn a_config_written_out_reads_back_as_itself() {
        let config = AbTestConfig {
            primary_metric: PrimaryMetric::PositiveRate,
            guardrails: vec![Guardrail {
                metric: Metric::Quality,
                margin: 0.2,
            }],
            bandit: Some(BanditConfig {
                draws: 7,
                ..BanditConfig::default()
            }),
            ratio_metrics: vec![Metric::Latency, Metric::NegativeRate],
            ..AbTestConfig::default()
        };
        let text = serde_json::to_string(&AbTestSettings::from(&config)).unwrap();
        let read: AbTestSettings = serde_json::from_str(&text).unwrap();
        assert_eq!(read.into_config().unwrap(), config);
    }

    #[test]
    fn an_unknown_primary_metric_names_the_known_ones() {
        let err = serde_json::from_str::<AbTestSettings>(r#"{"primary_metric": "latency"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("latency") && err.contains("quality") && err.contains("positive_rate"),
            "{err}"
        );
    }

    #[test]
    fn metrics_are_written_by_their_report_keys() {
        for metric in Metric::ALL {
            let json = serde_json::to_value(metric).unwrap();
            assert_eq!(json, metric.key());
            assert_eq!(serde_json::from_value::<Metric>(json).unwrap(), metric);
        }
    }

    #[test]
    fn text_gives_lists_and_margins() {
        let list: MetricList = serde_json::from_str("\"quality, latency_ms\"").unwrap();
        assert_eq!(list.0, vec![Metric::Quality, Metric::Latency]);
        let none: MetricList = serde_json::from_str("\" \"").unwrap();
        assert!(none.0.is_empty());
        assert!(serde_json::from_str::<MetricList>("\"quality,latency\"").is_err());
        let off: Margin = serde_json::from_str("\"false\"").unwrap();
        assert_eq!(off, Margin(None));
        let on: Margin = serde_json::from_str("\"0.25\"").unwrap();
        assert_eq!(on, Margin(Some(0.25)));
        assert!(serde_json::from_str::<Margin>("true").is_err());
    }
}
