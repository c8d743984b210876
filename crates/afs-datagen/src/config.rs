//! What a generation run does: the [`GeneratorConfig`], the output [`Format`] and the
//! near-duplicate settings, with their defaults and validation.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::DatagenError;

/// The training-file format. Every format writes one JSON object per line.
///
/// | name | one line |
/// | --- | --- |
/// | `chatml` | `{"messages":[{"role":"system",..}?,{"role":"user",..},{"role":"assistant",..}],"metadata":{..}}` |
/// | `alpaca` | `{"instruction":..,"input":"","output":..,"system":..?}` |
/// | `completion` | `{"prompt":..,"completion":..}` |
/// | `text` | `{"text":..}` |
/// | `sharegpt` | `{"conversations":[{"from":"human",..},{"from":"gpt",..}],"system":..?}` |
/// | `dpo` | `{"prompt":..,"chosen":..,"rejected":..}` |
/// | `kto` | `{"prompt":..,"completion":..,"label":true}` |
///
/// `dpo` and `kto` are preference formats: the user's feedback is their label, so the
/// feedback filter does not apply to them (see [`GeneratorConfig::min_user_feedback`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Chat messages (OpenAI fine-tuning, TRL SFT conversational, axolotl `chat_template`).
    #[default]
    ChatMl,
    /// Alpaca instruction/input/output.
    Alpaca,
    /// TRL prompt–completion.
    Completion,
    /// Plain language-modelling text.
    Text,
    /// ShareGPT conversations (LLaMA-Factory).
    ShareGpt,
    /// Preference pairs for DPO-style trainers (TRL).
    Dpo,
    /// Unpaired labelled examples for KTO (TRL).
    Kto,
}

impl Format {
    /// Every format, in the order of the table above.
    pub const ALL: [Format; 7] = [
        Format::ChatMl,
        Format::Alpaca,
        Format::Completion,
        Format::Text,
        Format::ShareGpt,
        Format::Dpo,
        Format::Kto,
    ];

    /// The format's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ChatMl => "chatml",
            Format::Alpaca => "alpaca",
            Format::Completion => "completion",
            Format::Text => "text",
            Format::ShareGpt => "sharegpt",
            Format::Dpo => "dpo",
            Format::Kto => "kto",
        }
    }

    /// The kind of example the format holds: `dpo` preference pairs, `kto` labelled
    /// responses, every other format supervised examples.
    pub fn example_kind(self) -> crate::ExampleKind {
        match self {
            Format::Dpo => crate::ExampleKind::Preference,
            Format::Kto => crate::ExampleKind::Labeled,
            _ => crate::ExampleKind::Sft,
        }
    }

    /// True for `dpo` and `kto`, whose label is the user's feedback.
    pub fn is_preference(self) -> bool {
        matches!(self, Format::Dpo | Format::Kto)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {name:?} (expected one of chatml, alpaca, completion, text, sharegpt, dpo, kto)")]
pub struct ParseFormatError {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Format {
    type Err = ParseFormatError;

    /// Parses a format name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseFormatError {
                name: s.to_string(),
            })
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Near-duplicate removal with MinHash and LSH banding.
///
/// Each sample's text (query and response, normalised) is cut into shingles: word
/// `word_shingle`-grams when it has at least `min_words` words, otherwise character
/// `char_shingle`-grams (short texts have too few word shingles for one edited word to
/// leave the Jaccard similarity high), and a text shorter than one shingle is one shingle.
/// A MinHash signature of `num_permutations` values estimates the Jaccard similarity of
/// two shingle sets. LSH splits the signature into `b` bands of `r` rows, chosen with
/// `b × r <= num_permutations` so that the band threshold `(1/b)^(1/r)` is as close as
/// possible to `threshold` (11 × 11 for 0.8 and 128 permutations). A sample sharing a band
/// with an earlier kept sample is removed when the estimated Jaccard similarity of their
/// signatures is at least `threshold`. The earliest sample in log order is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct NearDedupeConfig {
    /// Jaccard similarity at or above which two samples are near-duplicates, in (0, 1].
    pub threshold: f64,
    /// MinHash signature length, 16..=1024.
    pub num_permutations: usize,
    /// Words per shingle for texts of at least `min_words` words (>= 1).
    pub word_shingle: usize,
    /// Characters per shingle for shorter texts (>= 1).
    pub char_shingle: usize,
    /// Texts with fewer words use character shingles.
    pub min_words: usize,
}

impl Default for NearDedupeConfig {
    /// Threshold 0.8, 128 permutations, word 5-grams from 50 words up, else character 5-grams.
    fn default() -> Self {
        NearDedupeConfig {
            threshold: 0.8,
            num_permutations: 128,
            word_shingle: 5,
            char_shingle: 5,
            min_words: 50,
        }
    }
}

/// Settings of one generation run. `Default` gives the seed's defaults: minimum quality
/// 0.7, thumbs-up feedback required, exact dedupe on, `chatml`, no cap; plus redaction on,
/// no near-dedupe, no existing file and no rehearsal.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Records whose quality score is below this are dropped; in [0, 1]. In `dpo` and
    /// `kto`, only positive (thumbs-up) records must reach it: a rejected or `label: false`
    /// example is expected to be poor.
    pub min_quality_score: f64,
    /// The feedback filter. `Some(n)`: a record passes iff it has feedback and its value
    /// (-1, 0 or 1) is `>= n`; so `Some(1)` keeps thumbs-up only, `Some(0)` neutral or
    /// thumbs-up, `Some(-1)` any record that has feedback. `None`: no condition; records
    /// without feedback pass. `n` must be -1, 0 or 1. Ignored by `dpo` and `kto`, which
    /// take exactly the records with feedback -1 or 1 and use it as the label.
    pub min_user_feedback: Option<i64>,
    /// Remove exact duplicates (same query and response after lowercasing and collapsing
    /// whitespace), within the log and against the existing file.
    pub deduplicate: bool,
    /// Remove near-duplicates too; `None` = off. Not applied to `dpo`, whose pairs are two
    /// responses to one query and often near each other on purpose.
    pub near_dedupe: Option<NearDedupeConfig>,
    /// Output format.
    pub format: Format,
    /// At most this many lines in the output (new and rehearsal samples together); the
    /// new samples kept are those of highest quality, ties going to the earlier record.
    pub max_samples: Option<u64>,
    /// Replace personal data and secrets in the output with typed placeholders.
    pub redact: bool,
    /// An existing training file (any supported format, detected per line): new samples
    /// duplicating one of its samples are dropped, and `rehearsal_ratio` of the output is
    /// drawn from it. May be the output path itself.
    pub existing: Option<PathBuf>,
    /// Share of the output made of existing samples, in [0, 1). With `n` new samples and
    /// `m` usable existing lines, `min(m, round(n × ratio / (1 − ratio)))` existing lines
    /// are mixed in, so they make up `ratio` of the output when the file has enough of
    /// them. Needs `existing`.
    pub rehearsal_ratio: f64,
    /// Seed of the rehearsal choice: the same seed, log and config give the same file.
    pub seed: u64,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records strictly before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only records of this model.
    pub model: Option<String>,
    /// A system prompt added to every sample (in the way each format carries one).
    pub system_prompt: Option<String>,
    /// Write the scores the scorer gives to unscored records back to the store.
    pub write_back_scores: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            min_quality_score: 0.7,
            min_user_feedback: Some(1),
            deduplicate: true,
            near_dedupe: None,
            format: Format::ChatMl,
            max_samples: None,
            redact: true,
            existing: None,
            rehearsal_ratio: 0.0,
            seed: 0,
            since: None,
            until: None,
            model: None,
            system_prompt: None,
            write_back_scores: true,
        }
    }
}

impl GeneratorConfig {
    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), DatagenError> {
        let q = self.min_quality_score;
        if !q.is_finite() || !(0.0..=1.0).contains(&q) {
            return Err(DatagenError::config(
                "min_quality_score",
                format!("{q} is not a number within [0, 1]"),
            ));
        }
        if let Some(n) = self.min_user_feedback {
            if !(-1..=1).contains(&n) {
                return Err(DatagenError::config(
                    "min_user_feedback",
                    format!("{n} is not one of -1, 0, 1"),
                ));
            }
        }
        if self.max_samples == Some(0) {
            return Err(DatagenError::config("max_samples", "must be at least 1"));
        }
        let r = self.rehearsal_ratio;
        if !r.is_finite() || !(0.0..1.0).contains(&r) {
            return Err(DatagenError::config(
                "rehearsal_ratio",
                format!("{r} is not a number within [0, 1)"),
            ));
        }
        if r > 0.0 && self.existing.is_none() {
            return Err(DatagenError::config(
                "rehearsal_ratio",
                "needs an existing file to draw from",
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(DatagenError::config(
                    "since",
                    format!("{since} is not before until {until}"),
                ));
            }
        }
        if let Some(model) = &self.model {
            if model.trim().is_empty() {
                return Err(DatagenError::config(
                    "model",
                    "must not be empty when given",
                ));
            }
        }
        if let Some(near) = &self.near_dedupe {
            let t = near.threshold;
            if !t.is_finite() || t <= 0.0 || t > 1.0 {
                return Err(DatagenError::config(
                    "near_dedupe.threshold",
                    format!("{t} is not a number within (0, 1]"),
                ));
            }
            if !(16..=1024).contains(&near.num_permutations) {
                return Err(DatagenError::config(
                    "near_dedupe.num_permutations",
                    format!("{} is not within 16..=1024", near.num_permutations),
                ));
            }
            if near.word_shingle == 0 {
                return Err(DatagenError::config(
                    "near_dedupe.word_shingle",
                    "must be at least 1",
                ));
            }
            if near.char_shingle == 0 {
                return Err(DatagenError::config(
                    "near_dedupe.char_shingle",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!("ChatML".parse::<Format>().unwrap(), Format::ChatMl);
        assert_eq!(" ShareGPT ".parse::<Format>().unwrap(), Format::ShareGpt);
        let err = "jsonl".parse::<Format>().unwrap_err();
        assert!(err.to_string().contains("\"jsonl\""), "{err}");
    }

    fn field_of(config: GeneratorConfig) -> Option<&'static str> {
        match config.validate() {
            Ok(()) => None,
            Err(DatagenError::InvalidConfig { field, .. }) => Some(field),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = GeneratorConfig::default();
        assert_eq!(field_of(ok.clone()), None);
        let check =
            |config: GeneratorConfig, field: Option<&str>| assert_eq!(field_of(config), field);
        check(
            GeneratorConfig {
                min_quality_score: f64::NAN,
                ..ok.clone()
            },
            Some("min_quality_score"),
        );
        check(
            GeneratorConfig {
                min_quality_score: 1.5,
                ..ok.clone()
            },
            Some("min_quality_score"),
        );
        check(
            GeneratorConfig {
                min_quality_score: 0.0,
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                min_user_feedback: Some(2),
                ..ok.clone()
            },
            Some("min_user_feedback"),
        );
        check(
            GeneratorConfig {
                min_user_feedback: Some(-1),
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                min_user_feedback: None,
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                max_samples: Some(0),
                ..ok.clone()
            },
            Some("max_samples"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 1.0,
                ..ok.clone()
            },
            Some("rehearsal_ratio"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 0.2,
                ..ok.clone()
            },
            Some("rehearsal_ratio"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 0.2,
                existing: Some("old.jsonl".into()),
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                model: Some(" ".into()),
                ..ok.clone()
            },
            Some("model"),
        );
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        check(
            GeneratorConfig {
                since: Some(t),
                until: Some(t),
                ..ok.clone()
            },
            Some("since"),
        );
        let near = |n: NearDedupeConfig| GeneratorConfig {
            near_dedupe: Some(n),
            ..ok.clone()
        };
        check(near(NearDedupeConfig::default()), None);
        check(
            near(NearDedupeConfig {
                threshold: 0.0,
                ..Default::default()
            }),
            Some("near_dedupe.threshold"),
        );
        check(
            near(NearDedupeConfig {
                num_permutations: 8,
                ..Default::default()
            }),
            Some("near_dedupe.num_permutations"),
        );
        check(
            near(NearDedupeConfig {
                word_shingle: 0,
                ..Default::default()
            }),
            Some("near_dedupe.word_shingle"),
        );
        check(
            near(NearDedupeConfig {
                char_shingle: 0,
                ..Default::default()
            }),
            Some("near_dedupe.char_shingle"),
        );
    }
}
