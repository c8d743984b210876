//! [`GeneratorSettings`]: the written form of [`GeneratorConfig`] (a config file's
//! `[generator]` section, environment variables, `--set` flags, `afs config show`),
//! declared once here with its keys and defaults.
//!
//! It differs from [`GeneratorConfig`] where a person writes it differently: near-dedupe is
//! a switch (`near_dedupe`) beside its threshold, which is kept while the switch is off;
//! `min_user_feedback` is an integer or `"none"`; the per-run filters (`since`, `until`) are
//! not settings. The format stays unset unless written, so a shape can be checked against
//! a format given later (a flag).

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::{Format, GeneratorConfig, NearDedupeConfig, Shape};

/// `[generator]` as written; every key optional (an absent key keeps
/// [`GeneratorConfig::default`]'s value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // Each field is the `GeneratorConfig` field of the same name.
pub struct GeneratorSettings {
    pub min_quality_score: f64,
    /// An integer (-1, 0 or 1), or `"none"` (`None`): no feedback condition.
    #[serde(with = "feedback_setting")]
    pub min_user_feedback: Option<i64>,
    pub deduplicate: bool,
    /// Whether near-duplicates are removed too.
    pub near_dedupe: bool,
    /// The near-dedupe similarity threshold, kept while `near_dedupe` is off.
    pub near_dedupe_threshold: f64,
    /// The output format by name; unset: `chatml`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "format_by_name"
    )]
    pub format: Option<Format>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<u64>,
    pub redact: bool,
    /// As written: a relative path is the reader's to resolve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<PathBuf>,
    pub rehearsal_ratio: f64,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "shape_by_name"
    )]
    pub shape: Option<Shape>,
    pub metadata: bool,
    pub write_back_scores: bool,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        let mut settings =
            GeneratorSettings::from((&GeneratorConfig::default(), &NearDedupeConfig::default()));
        settings.format = None;
        settings
    }
}

impl From<(&GeneratorConfig, &NearDedupeConfig)> for GeneratorSettings {
    /// The settings of `config`, with `near_dedupe`'s settings when it has none of its own
    /// (near-dedupe off).
    fn from((config, near_dedupe): (&GeneratorConfig, &NearDedupeConfig)) -> Self {
        GeneratorSettings {
            min_quality_score: config.min_quality_score,
            min_user_feedback: config.min_user_feedback,
            deduplicate: config.deduplicate,
            near_dedupe: config.near_dedupe.is_some(),
            near_dedupe_threshold: config.near_dedupe.as_ref().unwrap_or(near_dedupe).threshold,
            format: Some(config.format),
            max_samples: config.max_samples,
            redact: config.redact,
            existing: config.existing.clone(),
            rehearsal_ratio: config.rehearsal_ratio,
            seed: config.seed,
            model: config.model.clone(),
            system_prompt: config.system_prompt.clone(),
            shape: config.shape,
            metadata: config.metadata,
            write_back_scores: config.write_back_scores,
        }
    }
}

impl GeneratorSettings {
    /// The config these settings describe (not checked: see
    /// [`GeneratorConfig::validate`]), and the near-dedupe settings, kept whether or not
    /// near-dedupe is on.
    pub fn into_config(self) -> (GeneratorConfig, NearDedupeConfig) {
        let near_dedupe = NearDedupeConfig {
            threshold: self.near_dedupe_threshold,
            ..NearDedupeConfig::default()
        };
        let config = GeneratorConfig {
            min_quality_score: self.min_quality_score,
            min_user_feedback: self.min_user_feedback,
            deduplicate: self.deduplicate,
            near_dedupe: self.near_dedupe.then(|| near_dedupe.clone()),
            format: self.format.unwrap_or(GeneratorConfig::default().format),
            max_samples: self.max_samples,
            redact: self.redact,
            existing: self.existing,
            rehearsal_ratio: self.rehearsal_ratio,
            seed: self.seed,
            since: None,
            until: None,
            model: self.model,
            system_prompt: self.system_prompt,
            shape: self.shape,
            metadata: self.metadata,
            write_back_scores: self.write_back_scores,
        };
        (config, near_dedupe)
    }
}

/// The format by any of its names, from any text: an unknown name is refused with the
/// format probably meant ([`Format`]'s `FromStr`).
fn format_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse::<Format>().map(Some).map_err(de::Error::custom)
}

/// The shape by name, from any text.
fn shape_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Shape>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse::<Shape>().map(Some).map_err(de::Error::custom)
}

/// `min_user_feedback`: an integer, or `"none"` for no condition (`None`).
mod feedback_setting {
    use super::*;

    pub(super) fn serialize<S: Serializer>(value: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(n) => s.serialize_i64(*n),
            None => s.serialize_str("none"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        struct FeedbackVisitor;

        impl Visitor<'_> for FeedbackVisitor {
            type Value = Option<i64>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("-1, 0, 1 or \"none\"")
            }

            // The range is checked by `GeneratorConfig::validate`, which names the key.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Some)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            // "none" in a file; an environment variable or `--set` also gives "-1" as text.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.trim() == "none" {
                    return Ok(None);
                }
                v.trim()
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }

        d.deserialize_any(FeedbackVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_configs_and_a_config_reads_back_as_itself() {
        let (config, near) = GeneratorSettings::default().into_config();
        assert_eq!(config, GeneratorConfig::default());
        assert_eq!(near, NearDedupeConfig::default());
        let changed = GeneratorConfig {
            min_user_feedback: None,
            near_dedupe: Some(NearDedupeConfig {
                threshold: 0.6,
                ..NearDedupeConfig::default()
            }),
            format: Format::Dpo,
            shape: Some(Shape::Conversational),
            system_prompt: Some("be brief".into()),
            ..GeneratorConfig::default()
        };
        let written = serde_json::to_string(&GeneratorSettings::from((&changed, &near))).unwrap();
        assert!(
            written.contains(r#""min_user_feedback":"none""#),
            "{written}"
        );
        assert!(written.contains(r#""format":"dpo""#), "{written}");
        let read: GeneratorSettings = serde_json::from_str(&written).unwrap();
        assert_eq!(read.into_config().0, changed);
    }

    #[test]
    fn names_and_text_are_read_with_their_errors() {
        let read = |json: &str| serde_json::from_str::<GeneratorSettings>(json);
        assert_eq!(
            read(r#"{"format": "KTO"}"#).unwrap().format,
            Some(Format::Kto)
        );
        assert_eq!(
            read(r#"{"shape": "plain"}"#).unwrap().shape,
            Some(Shape::Plain)
        );
        assert_eq!(
            read(r#"{"min_user_feedback": "-1"}"#)
                .unwrap()
                .min_user_feedback,
            Some(-1)
        );
        let err = read(r#"{"format": "openai_dpo"}"#).unwrap_err().to_string();
        assert!(err.contains("openai-dpo"), "{err}");
        assert!(read(r#"{"shape": "round"}"#).is_err());
        assert!(read(r#"{"min_user_feedback": "all"}"#).is_err());
    }
}
